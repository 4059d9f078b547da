"""A model whose output is NaN answers nothing: option scoring and decoding report the question as an
error instead of picking "(a)" (the first of equal NaN scores) or token 0 (argmax over NaN)."""

import json

import pytest
import torch
from tests.helpers.noise_audio import noise_audio_tokens

from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.nonfinite import NonFiniteLogits
from salmonn_pl.generation.option_scoring import OptionScoringSettings, score_options
from salmonn_pl.generation.generate import generate

TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
QUESTIONS = [
    "What animal makes the sound in the audio? (a) dog (b) cat (c) cow (d) pig",
    "Which emotion does the speaker express? (a) happy (b) sad (c) angry",
    "Listen to the audio and choose the best answer. (a) male (b) female",
]


def _audio_with_nan_row(salmonn, row: int) -> torch.Tensor:
    audio = noise_audio_tokens(salmonn, len(QUESTIONS), seed=1)
    audio[row] = float("nan")
    return audio


@pytest.mark.parametrize("calibration", ["none", "pmi"])
def test_nan_option_scores_are_an_error_not_a_choice(tiny_salmonn, calibration):
    prompts = [TEMPLATE.format(q) for q in QUESTIONS]
    settings = OptionScoringSettings(calibration=calibration)
    clean = score_options(tiny_salmonn, prompts, QUESTIONS, noise_audio_tokens(tiny_salmonn, 3, seed=1), settings)
    scored = score_options(tiny_salmonn, prompts, QUESTIONS, _audio_with_nan_row(tiny_salmonn, 1), settings)

    broken = scored[1]
    assert broken.error is not None and "non-finite" in broken.error
    assert broken.choice == "" and broken.ranking == []  # before: "(a) happy", judged correct if golden
    record = broken.to_record()
    assert record["error"] == broken.error
    assert all(v is None for v in record["option_scores"].values())
    json.dumps(record, allow_nan=False)  # strict JSON: no bare NaN
    # The other questions of the batch are answered as without the broken row.
    for i in (0, 2):
        assert scored[i].error is None
        assert scored[i].choice == clean[i].choice
        assert scored[i].scores == pytest.approx(clean[i].scores, abs=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_nan_logits_while_decoding_name_the_question(tiny_salmonn, num_beams):
    prompts = [TEMPLATE.format(q) for q in QUESTIONS]
    settings = GenerationSettings(num_beams=num_beams, max_new_tokens=5)
    clean = generate(tiny_salmonn, prompts, noise_audio_tokens(tiny_salmonn, 3, seed=1), settings)
    detector = NonFiniteLogits(len(prompts))
    result = generate(tiny_salmonn, prompts, _audio_with_nan_row(tiny_salmonn, 2), settings, logits_processors=[detector])

    assert detector.items == [2]
    # Zeroing the broken row keeps the other rows' decoding untouched.
    assert result.sequences[:2] == clean.sequences[:2]


def test_finite_logits_are_left_alone(tiny_salmonn):
    prompts = [TEMPLATE.format(q) for q in QUESTIONS]
    settings = GenerationSettings(num_beams=2, max_new_tokens=5)
    audio = noise_audio_tokens(tiny_salmonn, 3, seed=1)
    detector = NonFiniteLogits(len(prompts))
    assert generate(tiny_salmonn, prompts, audio, settings, logits_processors=[detector]).sequences == \
        generate(tiny_salmonn, prompts, audio, settings).sequences
    assert detector.items == []


def test_minus_infinity_is_a_forbidden_token_not_an_error():
    detector = NonFiniteLogits(2)
    scores = torch.tensor([[0.0, -float("inf"), 1.0], [float("inf"), 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    out = detector(torch.zeros(4, 1, dtype=torch.long), scores)  # 2 items x 2 beams
    assert detector.items == [0]  # row 1 (+inf) belongs to item 0
    assert torch.isfinite(out[1]).all() and out[0, 1] == -float("inf")
