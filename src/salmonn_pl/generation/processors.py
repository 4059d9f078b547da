"""transformers logits processors configured from YAML.

``sequence_bias`` takes phrases, not token ids, e.g. ``{"I cannot": -20, "I'm sorry": -20}``: each
phrase is tokenized as the start of an answer (with SentencePiece's leading ``▁``), which is how
the model would write it right after ``ASSISTANT:``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (
    EncoderRepetitionPenaltyLogitsProcessor,
    ExponentialDecayLengthPenalty,
    LogitsProcessor,
    SequenceBiasLogitsProcessor,
)

from salmonn_pl.data.collate import SPEECH_PLACEHOLDER
from salmonn_pl.model.tokenizer import SalmonnTokenizer
from salmonn_pl.settings_check import above, at_least, finite, require


@dataclass
class LogitsProcessorSettings:
    sequence_bias: dict[str, float] | None = None
    # > 1 favours tokens that appear in the prompt (e.g. the option words); < 1 discourages them.
    encoder_repetition_penalty: float | None = None
    # (start_index, decay_factor): after start_index new tokens, favour </s> exponentially.
    exponential_decay_length_penalty: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        for phrase, value in (self.sequence_bias or {}).items():
            require(finite(value), f"logits_processors.sequence_bias[{phrase!r}]", value, "a finite number")
        penalty = self.encoder_repetition_penalty
        require(penalty is None or above(penalty, 0), "logits_processors.encoder_repetition_penalty", penalty, "> 0")
        decay = self.exponential_decay_length_penalty
        if decay is not None:
            name = "logits_processors.exponential_decay_length_penalty"
            require(len(decay) == 2, name, decay, "[start_index, decay_factor]")
            require(at_least(decay[0], 0) and above(decay[1], 0), name, decay, "[start_index >= 0, decay_factor > 0]")


def build_logits_processors(
    settings: LogitsProcessorSettings,
    tokenizer: SalmonnTokenizer,
    prompts: list[str],
    num_beams: int = 1,
    device: torch.device | str = "cpu",
) -> list[LogitsProcessor]:
    """The processors for SALMONN prompts (``<SpeechHere>`` stands for the audio tokens)."""
    return make_logits_processors(
        settings,
        encode_answer=tokenizer.encode,
        prompt_ids=lambda: [tokenizer.encode(p.replace(SPEECH_PLACEHOLDER, " ")) for p in prompts],
        eos_token_id=tokenizer.eos_token_id,
        num_beams=num_beams,
        device=device,
    )


def make_logits_processors(
    settings: LogitsProcessorSettings,
    encode_answer: Callable[[str], list[int]],
    prompt_ids: Callable[[], list[list[int]]],
    eos_token_id: int,
    num_beams: int = 1,
    device: torch.device | str = "cpu",
) -> list[LogitsProcessor]:
    """The configured processors, for any model family: ``encode_answer`` tokenises a phrase as the
    start of an answer, ``prompt_ids()`` gives each row's prompt tokens without the audio, and
    ``eos_token_id`` ends an answer. The processors see ``input_ids`` as one token before the answer
    followed by the answer's tokens so far."""
    processors: list[LogitsProcessor] = []
    if settings.sequence_bias:
        bias = []
        for phrase, value in settings.sequence_bias.items():
            ids = encode_answer(phrase)
            if not ids:
                raise ValueError(f"logits_processors.sequence_bias: phrase {phrase!r} has no tokens")
            bias.append([ids, float(value)])
        processors.append(SequenceBiasLogitsProcessor(sequence_bias=bias))
    if settings.encoder_repetition_penalty is not None:
        rows = prompt_ids()
        width = max(len(r) for r in rows)
        # Pad with each row's own first token, so no token outside the prompt is touched.
        ids = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows])
        processors.append(
            EncoderRepetitionPenaltyLogitsProcessor(settings.encoder_repetition_penalty, ids.repeat_interleave(num_beams, 0).to(device))
        )
    if settings.exponential_decay_length_penalty is not None:
        start, factor = settings.exponential_decay_length_penalty
        processors.append(ExponentialDecayLengthPenalty((int(start), float(factor)), eos_token_id, input_ids_seq_length=1))
    return processors
