"""Finding the questions whose decoding met non-finite logits (a model that outputs NaN or inf).

``argmax`` over a NaN row picks token 0 and ``topk`` treats NaN as the largest value, so a broken
model still "answers", and its answers can even be judged correct. :class:`NonFiniteLogits` is a
logits processor that notes, at every step, which batch items had a NaN or +inf among their
next-token scores, and replaces those rows by zeros so that decoding (beam bookkeeping, sampling)
goes on without errors; the items it noted are then reported as errors, not answers. ``-inf`` is
left alone: processors use it to forbid tokens.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class NonFiniteLogits(LogitsProcessor):
    """Records the batch items (of ``batch_size``) whose rows held NaN or +inf scores.

    Decoding runs ``rows = batch_size x k`` rows (``k`` beams or samples per item, consecutive), so
    row ``r`` belongs to item ``r * batch_size // rows``.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.bad = torch.zeros(batch_size, dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        bad_rows = torch.isnan(scores).any(dim=-1) | torch.isposinf(scores).any(dim=-1)
        if not bad_rows.any():  # one reduction per step; the common case stops here
            return scores
        rows = scores.shape[0]
        items = torch.arange(rows, device=scores.device)[bad_rows] * self.batch_size // rows
        self.bad[items.cpu()] = True
        return torch.where(bad_rows[:, None], torch.zeros_like(scores), scores)

    @property
    def items(self) -> list[int]:
        """Batch items that met non-finite logits."""
        return self.bad.nonzero().flatten().tolist()
