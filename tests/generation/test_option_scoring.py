"""Option scoring on the tiny SALMONN: likelihoods, batching, calibration, permutation debiasing."""

import copy
import json

import numpy as np
import pytest
import torch
from tests.helpers.noise_audio import noise_audio_tokens

from salmonn_pl.generation.option_scoring import OptionScoringSettings, score_options

TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
QUESTIONS = [
    "What animal makes the sound in the audio? (a) dog (b) cat (c) cow (d) pig",
    "Which emotion does the speaker express? (a) happy (b) sad (c) angry",
    "Listen to the audio and choose the best answer. (a) male (b) female",
]


def _audio_tokens(salmonn, n: int) -> torch.Tensor:
    return noise_audio_tokens(salmonn, n, seed=1)


def _token(salmonn, piece: str) -> int:
    (token,) = salmonn.tokenizer.convert_tokens_to_ids([piece])
    assert token != salmonn.tokenizer.unk_token_id, piece
    return token


def _with_logit_bias(salmonn, bias: dict[str, float]):
    """A copy whose lm_head adds a constant to the logits of the given pieces, whatever the context."""
    model = copy.deepcopy(salmonn)
    head = model.llm.get_output_embeddings()
    values = torch.zeros(head.weight.shape[0])
    for piece, value in bias.items():
        values[_token(model, piece)] = value
    head.bias = torch.nn.Parameter(values, requires_grad=False)
    return model


def _full_forward_loglik(salmonn, prompt: str, audio: torch.Tensor, answer: str, drop_eos: bool) -> tuple[float, int]:
    inputs = salmonn.assemble([prompt], audio, [answer])
    labels = inputs.labels.clone()
    if drop_eos:
        labels[0, -1] = -100  # the answer's final </s>
    with torch.no_grad():
        logits = salmonn.llm_logits(inputs)
    logp, count = salmonn.target_logprobs(logits, labels)
    return logp.item(), count.item()


@pytest.mark.parametrize("drop_eos", [False, True])
def test_scores_are_the_option_loglikelihoods(tiny_salmonn, drop_eos: bool):
    audio = _audio_tokens(tiny_salmonn, 1)
    prompt = TEMPLATE.format(QUESTIONS[0])
    for answer_format in ("label_text", "text"):
        settings = OptionScoringSettings(answer_format=answer_format, score_end_of_answer=not drop_eos)
        (result,) = score_options(tiny_salmonn, [prompt], [QUESTIONS[0]], audio, settings)
        for position, text in enumerate(result.options):
            answer = f"({'abcd'[position]}) {text}" if answer_format == "label_text" else text
            logp, count = _full_forward_loglik(tiny_salmonn, prompt, audio, answer, drop_eos)
            assert count == len(tiny_salmonn.tokenizer.encode(answer)) + (0 if drop_eos else 1)
            assert result.audio_loglik[position] == pytest.approx(logp / count, abs=1e-5)
        assert result.scores == result.audio_loglik
        assert result.ranking == sorted(range(4), key=lambda i: -result.scores[i])
        best = result.ranking[0]
        assert result.choice == f"({'abcd'[best]}) {result.options[best]}"


@pytest.mark.parametrize("calibration", ["none", "pmi", "divide"])
def test_batched_equals_one_at_a_time(tiny_salmonn, calibration: str):
    audio = _audio_tokens(tiny_salmonn, len(QUESTIONS))
    prompts = [TEMPLATE.format(q) for q in QUESTIONS]
    # Small forward batches, so rows of different questions share a padded forward.
    settings = OptionScoringSettings(calibration=calibration, permutations="cyclic", max_rows_per_forward=5)
    batched = score_options(tiny_salmonn, prompts, QUESTIONS, audio, settings)
    for i, question in enumerate(QUESTIONS):
        single = OptionScoringSettings(calibration=calibration, permutations="cyclic", max_rows_per_forward=64)
        (alone,) = score_options(tiny_salmonn, [prompts[i]], [question], audio[i : i + 1], single)
        assert len(batched[i].scores) == len(alone.scores) == question.count("(")
        assert np.abs(np.subtract(batched[i].scores, alone.scores)).max() <= 1e-5
        assert np.abs(np.subtract(batched[i].audio_loglik, alone.audio_loglik)).max() <= 1e-5
        assert batched[i].ranking == alone.ranking and batched[i].choice == alone.choice
        if calibration != "none":
            assert np.abs(np.subtract(batched[i].text_loglik, alone.text_loglik)).max() <= 1e-5


OPTION_SETS = (["dog", "cat", "cow", "pig"], ["cow", "dog", "pig"], ["cat", "pig", "dog", "cow"])
SETTINGS = (OptionScoringSettings(), OptionScoringSettings(answer_format="text"), OptionScoringSettings(permutations="cyclic"))


def _question(options) -> str:
    return "What animal makes the sound in the audio? " + " ".join(f"({'abcd'[i]}) {o}" for i, o in enumerate(options))


def _first_choices(model, audio, settings_list=SETTINGS) -> list[str]:
    firsts = []
    for options in OPTION_SETS:
        question = _question(options)
        for settings in settings_list:
            (result,) = score_options(model, [TEMPLATE.format(question)], [question], audio, settings)
            firsts.append(result.options[result.ranking[0]])
    return firsts


def test_picks_the_option_a_hand_built_model_prefers(tiny_salmonn):
    audio = _audio_tokens(tiny_salmonn, 1)
    word = "pig"
    model = _with_logit_bias(tiny_salmonn, {f"▁{word}": 8.0})
    # Not vacuous: the untouched model does not already pick it everywhere.
    assert _first_choices(tiny_salmonn, audio).count(word) < len(OPTION_SETS) * len(SETTINGS)
    for options in OPTION_SETS:
        question = _question(options)
        for settings in SETTINGS:
            (result,) = score_options(model, [TEMPLATE.format(question)], [question], audio, settings)
            assert result.choice == f"({'abcd'[options.index(word)]}) {word}"
            assert result.options[result.ranking[0]] == word


def test_cyclic_permutations_cancel_a_letter_preference(tiny_salmonn):
    """A model that loves the letter "a" answers (a) whatever it is; averaged over option orders, the
    letter bonus goes to every option once and the preferred word wins."""
    audio = _audio_tokens(tiny_salmonn, 1)
    model = _with_logit_bias(tiny_salmonn, {"a": 12.0, "▁pig": 6.0})
    question = _question(["dog", "cat", "cow", "pig"])
    prompt = TEMPLATE.format(question)
    plain = OptionScoringSettings(length_normalization="none")
    debiased = OptionScoringSettings(length_normalization="none", permutations="cyclic")
    (biased,) = score_options(model, [prompt], [question], audio, plain)
    (fair,) = score_options(model, [prompt], [question], audio, debiased)
    letter_only = _with_logit_bias(tiny_salmonn, {"a": 12.0})
    (letter_plain,) = score_options(letter_only, [prompt], [question], audio, plain)
    assert biased.choice == "(a) dog" and letter_plain.choice == "(a) dog"
    assert fair.choice == "(d) pig"


def test_calibration_by_the_text_only_likelihood(tiny_salmonn):
    audio = _audio_tokens(tiny_salmonn, 2)
    prompts = [TEMPLATE.format(q) for q in QUESTIONS[:2]]
    pmi = score_options(tiny_salmonn, prompts, QUESTIONS[:2], audio, OptionScoringSettings(calibration="pmi"))
    divide = score_options(tiny_salmonn, prompts, QUESTIONS[:2], audio, OptionScoringSettings(calibration="divide"))
    text_only = score_options(tiny_salmonn, prompts, QUESTIONS[:2], None, OptionScoringSettings())
    for p, d, t in zip(pmi, divide, text_only):
        assert p.text_loglik == pytest.approx(t.audio_loglik, abs=1e-6)
        assert p.scores == pytest.approx(np.subtract(p.audio_loglik, p.text_loglik).tolist(), abs=1e-6)
        with_audio, text = np.exp(p.audio_loglik), np.exp(t.audio_loglik)
        ratio = (with_audio / with_audio.sum()) / (text / text.sum())
        assert d.scores == pytest.approx((ratio / ratio.sum()).tolist(), abs=1e-6)
        assert d.ranking == p.ranking  # without permutations the two calibrations rank alike
        assert p.scores != pytest.approx([0.0] * len(p.scores), abs=1e-3)  # the audio does move the scores
    # Without audio there is nothing to calibrate against: PMI is 0, the divided probabilities uniform.
    (none,) = score_options(tiny_salmonn, prompts[:1], QUESTIONS[:1], None, OptionScoringSettings(calibration="divide"))
    assert none.scores == pytest.approx([0.25] * 4, abs=1e-6)


def test_record_is_json(tiny_salmonn):
    audio = _audio_tokens(tiny_salmonn, 1)
    (result,) = score_options(tiny_salmonn, [TEMPLATE.format(QUESTIONS[1])], [QUESTIONS[1]], audio,
                              OptionScoringSettings(calibration="pmi"))
    record = json.loads(json.dumps(result.to_record()))
    assert record["choice"] == result.choice
    assert list(record["option_scores"]) == ["(a) happy", "(b) sad", "(c) angry"]
    assert set(record) == {"choice", "option_scores", "option_loglik_audio", "option_loglik_text"}


def test_bad_questions_are_named(tiny_salmonn):
    with pytest.raises(ValueError, match="Animal/single/cat2.wav.*no '\\(a\\)"):
        score_options(tiny_salmonn, [TEMPLATE.format("What is it?")], ["What is it?"], None,
                      ids=["Animal/single/cat2.wav"])
    with pytest.raises(ValueError, match="q7: the question must appear exactly once"):
        score_options(tiny_salmonn, [TEMPLATE.format("other")], [QUESTIONS[0]], None, ids=["q7"])
    with pytest.raises(ValueError, match="calibration"):
        score_options(tiny_salmonn, [TEMPLATE.format(QUESTIONS[0])], [QUESTIONS[0]], None,
                      OptionScoringSettings(calibration="bayes"))
