"""Logits processors configured from YAML act on decoding."""

import numpy as np
import pytest
import torch
from transformers import (
    EncoderRepetitionPenaltyLogitsProcessor,
    ExponentialDecayLengthPenalty,
    SequenceBiasLogitsProcessor,
)

from salmonn_pl.data.collate import AudioBatch, SpeechCollator
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.processors import (
    LogitsProcessorSettings,
    build_logits_processors,
)
from salmonn_pl.generation.generate import generate

PROMPT = "USER: <Speech><SpeechHere></Speech> Which sound is it? (a) low tone (b) white noise\nASSISTANT:"


def _audio(model):
    rng = np.random.default_rng(0)
    batch = SpeechCollator()([{"id": "0", "audio": 0.1 * rng.standard_normal(32000), "prompt": PROMPT, "text": "", "meta": {}}])
    with torch.no_grad():
        return model.encode_audio(AudioBatch.of(batch))["audio_tokens"]


def test_every_configured_processor_is_built(tiny_salmonn):
    settings = LogitsProcessorSettings(
        sequence_bias={"I cannot": -20.0}, encoder_repetition_penalty=1.5, exponential_decay_length_penalty=(4, 1.2)
    )
    processors = build_logits_processors(settings, tiny_salmonn.tokenizer, [PROMPT, PROMPT + " more"], num_beams=3)
    kinds = [type(p) for p in processors]
    assert kinds == [SequenceBiasLogitsProcessor, EncoderRepetitionPenaltyLogitsProcessor, ExponentialDecayLengthPenalty]
    # One row of prompt ids per beam of every question.
    assert processors[1].encoder_input_ids.shape[0] == 6
    assert build_logits_processors(LogitsProcessorSettings(), tiny_salmonn.tokenizer, [PROMPT]) == []
    with pytest.raises(ValueError, match="sequence_bias: phrase ''"):
        build_logits_processors(LogitsProcessorSettings(sequence_bias={"": 1.0}), tiny_salmonn.tokenizer, [PROMPT])


def test_sequence_bias_steers_the_answer(tiny_salmonn):
    audio = _audio(tiny_salmonn)
    settings = GenerationSettings(max_new_tokens=6, num_beams=1)
    tok = tiny_salmonn.tokenizer

    def answer(bias: dict[str, float]) -> list[int]:
        processors = build_logits_processors(LogitsProcessorSettings(sequence_bias=bias), tok, [PROMPT])
        return generate(tiny_salmonn, [PROMPT], audio, settings, logits_processors=processors).sequences[0]

    i_cannot = tok.encode("I cannot")
    assert answer({"I": 100.0, "I cannot": 200.0})[: len(i_cannot)] == i_cannot  # a phrase pushed up
    banned = answer({"I": 100.0, "I cannot": -200.0})  # ... and the same phrase pushed down
    assert banned[: len(i_cannot) - 1] == i_cannot[:-1] and banned[len(i_cannot) - 1] != i_cannot[-1]
    assert answer({}) != banned
