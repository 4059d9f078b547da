"""Progress display for long evaluations: Lightning's rich bar, in 80 columns, counting questions.

During ``salmonn-pl test`` a researcher watching a 4000-question sweep wants to see how many
questions are answered, how fast, and when the run will end::

    Testing ━━━━━━━━━━━━━━━━━━━━ 1210/4000 questions  3.42 q/s  ETA 0:13:36

``q/s`` is ``questions_per_s`` logged by :class:`~salmonn_pl.lit_module.SalmonnModule` (answers
generated per second since the run started; questions a resumed run skips are not counted). A fit
shows its optimizer steps out of ``max_steps`` (``Step 120/400``) rather than an epoch count. At the
end of a test the bar prints the accuracy per variant with one column per track and hop, instead of
Lightning's list of metric names, which a terminal of 80 columns cuts short.
"""

from __future__ import annotations

import re
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import (
    CustomBarColumn,
    RichProgressBarTheme,
)
from rich import box
from rich.progress import ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 20
RATE_METRIC = "questions_per_s"
ACCURACY_KEY = re.compile(r"^(?P<stage>test|val|validate)/acc/(?P<variant>.+)/(?P<column>[^/]+)$")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class QuestionCountColumn(ProgressColumn):
    """``done/total questions`` of an evaluation (batches while fitting)."""

    def __init__(self, bar: QuestionProgressBar, style: str = "") -> None:
        super().__init__()
        self.bar = bar
        self.style = style

    def render(self, task: Task) -> Text:
        counts = self.bar.question_counts.get(task.id)
        if counts is None:
            total = "?" if task.total is None or task.total == float("inf") else int(task.total)
            return Text(f"{int(task.completed)}/{total}", style=self.style)
        done, total = counts
        return Text(f"{done}/{total if total is not None else '?'} questions", style=self.style)


class QuestionRateColumn(ProgressColumn):
    """Questions answered per second (``q/s``), as logged by the module; empty while fitting."""

    def __init__(self, bar: QuestionProgressBar, style: str = "") -> None:
        super().__init__()
        self.bar = bar
        self.style = style

    def render(self, task: Task) -> Text:
        if task.id not in self.bar.question_counts:
            return Text()
        rate = self.bar.rate
        return Text(f"{rate:.2f} q/s" if rate is not None else "-.-- q/s", style=self.style)


class EtaColumn(ProgressColumn):
    """``ETA H:MM:SS`` (rich's estimate from the recent batch rate)."""

    def __init__(self, style: str = "") -> None:
        super().__init__()
        self.style = style

    def render(self, task: Task) -> Text:
        remaining = 0.0 if task.finished else task.time_remaining
        return Text(f"ETA {_clock(remaining)}", style=self.style)


def _questions_total(dataloaders: Any) -> int | None:
    """Questions this process will see: its sampler's share (DDP), else the dataset's length."""
    loader = dataloaders[0] if isinstance(dataloaders, (list, tuple)) and dataloaders else dataloaders
    for source in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        try:
            return len(source)
        except TypeError:
            continue
    return None


def accuracy_table(metrics: dict[str, Any], title: str = "Accuracy (%)") -> Table | None:
    """Rows = variants, columns = track-hop (two-line headers) and the average, from the logged
    ``<stage>/acc/<variant>/<column>`` metrics; None when there are none."""
    cells: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for key, value in metrics.items():
        match = ACCURACY_KEY.match(key)
        if not match:
            continue
        variant, column = match["variant"], match["column"]
        cells.setdefault(variant, {})[column] = float(value)
        if column not in columns:
            columns.append(column)
    if not cells:
        return None
    columns = [c for c in columns if c != "average"] + (["average"] if "average" in columns else [])
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), title_justify="left")
    table.add_column("variant", overflow="fold")
    for column in columns:
        track, _, hop = column.rpartition("-")
        table.add_column(f"{track}\n{hop}" if track else column, justify="right")
    for variant, row in cells.items():
        table.add_row(variant, *(f"{row[c]:.1f}" if c in row else "–" for c in columns))
    return table


class QuestionProgressBar(RichProgressBar):
    """Rich progress bar of 80 columns: questions done/total, questions/s and ETA while evaluating;
    optimizer steps out of ``max_steps`` while fitting; an accuracy table per variant at the end.

    Args:
        refresh_rate: redraws per second (once a second is plenty for runs of hours and keeps logs short).
        leave: keep the finished bar on screen.
        console_kwargs: arguments of the ``rich.console.Console`` the bar draws on (e.g.
            ``{force_terminal: true}`` to keep the bar under a pipe such as ``tee``).
        print_accuracy: print the accuracy table at the end of a test.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = True, console_kwargs: dict[str, Any] | None = None,
                 print_accuracy: bool = True):
        super().__init__(refresh_rate=refresh_rate, leave=leave, console_kwargs=console_kwargs)
        self.print_accuracy = print_accuracy
        self.question_counts: dict[Any, tuple[int, int | None]] = {}  # task id -> (done, total)
        self.rate: float | None = None

    def configure_columns(self, trainer: pl.Trainer) -> list:
        theme: RichProgressBarTheme = self.theme
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                bar_width=BAR_WIDTH,
                complete_style=theme.progress_bar,
                finished_style=theme.progress_bar_finished,
                pulse_style=theme.progress_bar_pulse,
            ),
            QuestionCountColumn(self, style=theme.batch_progress),
            QuestionRateColumn(self, style=theme.processing_speed),
            EtaColumn(style=theme.time),
        ]

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version id tells a researcher nothing here
        return metrics

    # -- fitting: steps out of max_steps ---------------------------------------------------------
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return f"Step {trainer.global_step}/{trainer.max_steps}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return f"Epoch {current_epoch + 1}/{trainer.max_epochs}"
        return f"Epoch {current_epoch + 1}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_enabled and self.train_progress_bar_id is not None and self.progress is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch))

    # -- evaluating: questions -------------------------------------------------------------------
    def _count_questions(self, task_id: Any, dataloaders: Any, batch: Any, trainer, pl_module) -> None:
        if task_id is None:
            return
        done, total = self.question_counts.get(task_id, (0, None))
        if total is None:
            total = _questions_total(dataloaders)
        rows = len(batch["prompt"]) if isinstance(batch, dict) and "prompt" in batch else 1
        self.question_counts[task_id] = (done + rows, total)
        rate = self.get_metrics(trainer, pl_module).get(RATE_METRIC)
        self.rate = float(rate) if rate is not None else self.rate

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # Counts first: the parent's update redraws the bar with them.
        self._count_questions(self.test_progress_bar_id, trainer.test_dataloaders, batch, trainer, pl_module)
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.state.fn != "fit":
            self._count_questions(self.val_progress_bar_id, trainer.val_dataloaders, batch, trainer, pl_module)
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_end(self, trainer, pl_module) -> None:
        super().on_test_end(trainer, pl_module)
        if self.print_accuracy and trainer.is_global_zero:
            table = accuracy_table(dict(trainer.callback_metrics))
            if table is not None and self._console is not None:
                self._console.print(table)
