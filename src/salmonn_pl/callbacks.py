"""Progress display for long evaluations: Lightning's rich bar with questions/s and an ETA.

Lightning's rich bar prints the ``prog_bar`` metrics only while fitting. During ``salmonn-pl test``
a researcher watching a 4000-question sweep wants to see how fast questions are answered and when
the run will end, so this bar shows, for every stage::

    Testing ━━━━━━━━━━━━━━━━━━━━━━━━━  3/9  elapsed 0:00:41 • ETA 0:01:22  0.07 batches/s  questions_per_s: 0.58

``questions_per_s`` is logged by :class:`~salmonn_pl.lit_module.SalmonnModule` (answers generated
per second since the run started; questions a resumed run skips are not counted).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import (
    BatchesProcessedColumn,
    CustomBarColumn,
    RichProgressBarTheme,
)
from rich.progress import ProgressColumn, Task, TextColumn
from rich.text import Text


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ElapsedAndEtaColumn(ProgressColumn):
    """``elapsed H:MM:SS • ETA H:MM:SS`` (rich's estimate from the recent batch rate)."""

    def __init__(self, style: str = "") -> None:
        super().__init__()
        self.style = style

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        remaining = 0.0 if task.finished else task.time_remaining
        return Text(f"elapsed {_clock(elapsed)} • ETA {_clock(remaining)}", style=self.style)


class BatchRateColumn(ProgressColumn):
    def __init__(self, style: str = "") -> None:
        super().__init__()
        self.style = style

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed or 0.0:.2f} batches/s", style=self.style)


class StageMetricsColumn(ProgressColumn):
    """The ``prog_bar`` metrics next to test / validate / predict bars (Lightning's own metrics
    column covers fitting and stays empty otherwise)."""

    def __init__(self, trainer: pl.Trainer, style: str = "", metrics_format: str = ".3f") -> None:
        super().__init__()
        self.trainer = trainer
        self.style = style
        self.metrics_format = metrics_format
        self.metrics: dict[str, Any] = {}

    def render(self, task: Task) -> Text:
        if self.trainer.state.fn == "fit":
            return Text()
        texts = []
        for name, value in self.metrics.items():
            try:
                texts.append(f"{name}: {value:{self.metrics_format}}")
            except (TypeError, ValueError):
                texts.append(f"{name}: {value}")
        return Text("  ".join(texts), style=self.style)


class QuestionProgressBar(RichProgressBar):
    """Rich progress bar showing elapsed time, ETA, batches/s and the logged ``questions_per_s``.

    Args:
        refresh_rate: redraws per second (once a second is plenty for runs of hours and keeps logs short).
        leave: keep the finished bar on screen.
        console_kwargs: arguments of the ``rich.console.Console`` the bar draws on (e.g.
            ``{force_terminal: true}`` to keep the bar under a pipe such as ``tee``).
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = True, console_kwargs: dict[str, Any] | None = None):
        super().__init__(refresh_rate=refresh_rate, leave=leave, console_kwargs=console_kwargs)
        self.stage_metrics: StageMetricsColumn | None = None

    def configure_columns(self, trainer: pl.Trainer) -> list:
        theme: RichProgressBarTheme = self.theme
        self.stage_metrics = StageMetricsColumn(trainer, theme.metrics, theme.metrics_format)
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                complete_style=theme.progress_bar,
                finished_style=theme.progress_bar_finished,
                pulse_style=theme.progress_bar_pulse,
            ),
            BatchesProcessedColumn(style=theme.batch_progress),
            ElapsedAndEtaColumn(style=theme.time),
            BatchRateColumn(style=theme.processing_speed),
            self.stage_metrics,
        ]

    def _show_stage_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_enabled and self.stage_metrics is not None:
            self.stage_metrics.metrics = self.get_metrics(trainer, pl_module)
            self.refresh()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # Metrics first: the parent's update redraws the bar with them.
        self._show_stage_metrics(trainer, pl_module)
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.state.fn != "fit":
            self._show_stage_metrics(trainer, pl_module)
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
