"""Format forcing: the answer must start with one of the question's option labels.

For a question with options (a)..(d), the first generated tokens are constrained to spell ``(a)``,
``(b)``, ``(c)`` or ``(d)`` as the tokenizer writes them at the start of an answer (``▁(``, ``a``,
``)``), or, with ``force="label_text"``, a whole option such as ``(b) cat``; after that the model
writes freely. A row whose question lists no options is not constrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from transformers import LogitsProcessor

from salmonn_pl.data.multiple_choice import option_letter, parse_question
from salmonn_pl.model.tokenizer import SalmonnTokenizer
from salmonn_pl.settings_check import require

Force = Literal["label", "label_text"]


@dataclass
class FormatForcingSettings:
    force: Force = "label"

    def __post_init__(self) -> None:
        require(self.force in get_args(Force), "format_forcing.force", self.force, f"one of {get_args(Force)}")


class OptionPrefixProcessor(LogitsProcessor):
    """Allows, per batch item, only continuations of one of its token sequences until one is complete.

    ``prefixes[i]`` are the allowed starts of item ``i``'s answer (empty: no constraint). Rows are
    ``items x beams`` (or x returned samples), consecutive per item; the dummy ``<s>`` that starts
    ``input_ids`` is not part of the answer.
    """

    def __init__(self, prefixes: list[list[list[int]]]):
        self.prefixes = [[tuple(p) for p in item] for item in prefixes]
        for i, item in enumerate(self.prefixes):
            if any(len(p) == 0 for p in item):
                raise ValueError(f"answer prefix of item {i} has no tokens")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids.shape[0]
        if rows % len(self.prefixes):
            raise ValueError(f"{rows} rows cannot be split among {len(self.prefixes)} items")
        per_item = rows // len(self.prefixes)
        generated = input_ids[:, 1:].tolist()
        mask = torch.zeros_like(scores, dtype=torch.bool)  # True = forbidden
        for row, tokens in enumerate(generated):
            allowed = self._allowed(self.prefixes[row // per_item], tokens)
            if allowed is not None:
                mask[row] = True
                mask[row, allowed] = False
        return scores.masked_fill(mask, float("-inf"))

    @staticmethod
    def _allowed(prefixes: list[tuple[int, ...]], tokens: list[int]) -> list[int] | None:
        """Next tokens that keep ``tokens`` on one of ``prefixes``; ``None`` when free."""
        if not prefixes:
            return None
        t = len(tokens)
        if any(len(p) <= t and tuple(tokens[: len(p)]) == p for p in prefixes):
            return None  # a prefix is complete
        allowed = sorted({p[t] for p in prefixes if len(p) > t and tuple(tokens) == p[:t]})
        return allowed or None  # off every prefix (cannot happen while forcing): leave it free


def option_prefixes(tokenizer: SalmonnTokenizer, question: str, force: str = "label") -> list[list[int]]:
    """Token ids of each allowed answer start of ``question``: ``(a)``, ``(b)``, ... or ``(a) text``, ...

    Empty when the question lists no options.
    """
    parsed = parse_question(question)
    if parsed is None:
        return []
    if force not in ("label", "label_text"):
        raise ValueError(f"FormatForcingSettings.force must be 'label' or 'label_text', got {force!r}")
    starts = []
    for position, text in enumerate(parsed.options):
        label = f"({option_letter(position)})"
        starts.append(tokenizer.encode(label if force == "label" else f"{label} {text}"))
    return starts


def format_forcing_processor(
    tokenizer: SalmonnTokenizer, questions: list[str], settings: FormatForcingSettings | None = None
) -> OptionPrefixProcessor:
    """The logits processor that makes each answer start with one of its question's option labels."""
    settings = settings or FormatForcingSettings()
    return OptionPrefixProcessor([option_prefixes(tokenizer, q, settings.force) for q in questions])
