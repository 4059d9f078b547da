"""Progress display for long evaluations: Lightning's rich bar plus an ETA column.

The module logs ``questions_per_s`` to the progress bar; together with the ETA this is what a
researcher watching a 4000-question sweep wants to see.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import TimeRemainingColumn


class QuestionProgressBar(RichProgressBar):
    def __init__(self, refresh_rate: int = 1, leave: bool = True):
        super().__init__(refresh_rate=refresh_rate, leave=leave)

    def configure_columns(self, trainer) -> list:
        return [*super().configure_columns(trainer), TimeRemainingColumn(elapsed_when_finished=True)]
