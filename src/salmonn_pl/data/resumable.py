"""A DataLoader that resumes mid-epoch: Lightning saves its position and skips what was already served.

Lightning restores a stateful loader (one with ``state_dict`` / ``load_state_dict``) when fit resumes
from a checkpoint; a plain DataLoader restarts its epoch from the first batch, so a run resumed after
N steps would see batches 1..N of the epoch twice. The skip happens on the batch *indices*, so the
skipped examples are never loaded, and it applies to the first epoch after loading only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


class _SkipFirst:
    """An index sampler whose first pass leaves out its first ``n`` entries; its length stays the full
    epoch's (Lightning counts batch indices from the restored position)."""

    def __init__(self, sampler: Any, n: int) -> None:
        self.sampler, self.n = sampler, n

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.sampler)
        # Once only: a persistent-workers iterator keeps this object and re-iterates it every epoch.
        skip, self.n = self.n, 0
        for _ in range(skip):
            next(iterator, None)
        return iterator

    def __len__(self) -> int:
        return len(self.sampler)


class ResumableDataLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` (same arguments) whose within-epoch position is checkpointed.

    ``state_dict()`` is ``{"batches_served": n}``, the batches handed out in the current epoch; after
    ``load_state_dict`` the next epoch starts at batch ``n`` (or at 0 if the saved epoch was complete).
    The order within the epoch must be reproducible (a seeded sampler with ``set_epoch``, e.g.
    :class:`salmonn_pl.data.annotations.EpochSampler`), as it is for any resumable run.
    """

    _batches_served: int = 0
    _batches_to_skip: int = 0

    @property
    def _index_sampler(self) -> Any:
        sampler = super()._index_sampler
        return _SkipFirst(sampler, self._batches_to_skip) if self._batches_to_skip else sampler

    def __iter__(self) -> Iterator[Any]:
        # A generator: the skip is taken when iteration really starts, then forgotten.
        iterator = super().__iter__()
        self._batches_served, self._batches_to_skip = self._batches_to_skip, 0
        for batch in iterator:
            self._batches_served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_served": self._batches_served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "batches_served" not in state:
            raise KeyError(f"ResumableDataLoader.load_state_dict: no 'batches_served' in the saved state {sorted(state)}")
        served = int(state["batches_served"])
        self._batches_to_skip = served if 0 < served < len(self) else 0
