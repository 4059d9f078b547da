"""Audio-contrastive decoding on the tiny SALMONN, checked against full forwards of both prompts."""

import math

import pytest
import torch
import torch.nn.functional as F
from tests.helpers.noise_audio import noise_audio_tokens

from salmonn_pl.generation.contrastive import ContrastiveSettings, contrastive_generate
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.model.llm import embed_tokens
from salmonn_pl.generation.generate import generate

TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
QUESTIONS = [
    "What animal makes the sound in the audio? (a) dog (b) cat (c) cow (d) pig",
    "Which emotion does the speaker express? (a) happy (b) sad (c) angry",
    "Is it a man?",
]
PROMPTS = [TEMPLATE.format(q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def audio(tiny_salmonn) -> torch.Tensor:
    return noise_audio_tokens(tiny_salmonn, len(PROMPTS), seed=3)


def _teacher_forced_logits(salmonn, prompt: str, audio: torch.Tensor | None, tokens: list[int]) -> torch.Tensor:
    """Next-token logits ``[len(tokens), V]`` at the positions that predict each of ``tokens``."""
    inputs = salmonn.assemble([prompt], audio)
    with torch.no_grad():
        answer = embed_tokens(salmonn.llm)(torch.tensor([tokens[:-1]], dtype=torch.long))
        embeds = torch.cat([inputs.inputs_embeds, answer], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return salmonn.llm(inputs_embeds=embeds, attention_mask=mask).logits[0, -len(tokens):].float()


def _contrastive_logits(salmonn, prompt, audio, tokens, beta: float, plausibility: float) -> torch.Tensor:
    with_audio = _teacher_forced_logits(salmonn, prompt, audio, tokens)
    without = _teacher_forced_logits(salmonn, prompt, None, tokens)
    contrast = (1 + beta) * with_audio - beta * without
    cut = with_audio.log_softmax(-1) < with_audio.log_softmax(-1).max(-1, keepdim=True).values + math.log(plausibility)
    return contrast.masked_fill(cut, float("-inf"))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_beta_zero_is_plain_decoding(tiny_salmonn, audio, num_beams: int):
    settings = GenerationSettings(max_new_tokens=8, num_beams=num_beams)
    plain = generate(tiny_salmonn, PROMPTS, audio, settings)
    # Greedy keeps its argmax under any plausibility cut-off; beam search compares every candidate.
    plausibility = 0.1 if num_beams == 1 else 0.0
    contrastive = contrastive_generate(tiny_salmonn, PROMPTS, audio, settings, ContrastiveSettings(0.0, plausibility))
    assert contrastive.sequences == plain.sequences
    assert contrastive.sequence_scores == plain.sequence_scores


def test_greedy_picks_the_best_plausible_contrastive_token(tiny_salmonn, audio):
    settings = GenerationSettings(max_new_tokens=8, num_beams=1)
    cd = ContrastiveSettings(beta=1.0, plausibility=0.1)
    out = contrastive_generate(tiny_salmonn, PROMPTS, audio, settings, cd)
    plain = generate(tiny_salmonn, PROMPTS, audio, settings)
    assert out.sequences != plain.sequences  # the contrast changes the answers
    for i, tokens in enumerate(out.sequences):
        expected = _contrastive_logits(tiny_salmonn, PROMPTS[i], audio[i : i + 1], tokens, cd.beta, cd.plausibility)
        chosen = expected.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)
        assert (chosen >= expected.max(-1).values - 1e-4).all(), f"row {i}"


@pytest.mark.parametrize("length_penalty", [1.0, 2.0])
def test_beam_score_is_the_contrastive_log_likelihood(tiny_salmonn, audio, length_penalty: float):
    """The audio-free stream follows the beams: the best beam's score is its teacher-forced
    contrastive log-probability, renormalised over the plausible tokens."""
    settings = GenerationSettings(max_new_tokens=6, num_beams=3, length_penalty=length_penalty)
    cd = ContrastiveSettings(beta=0.5, plausibility=0.05)
    out = contrastive_generate(tiny_salmonn, PROMPTS, audio, settings, cd)
    for i, tokens in enumerate(out.sequences):
        logits = _contrastive_logits(tiny_salmonn, PROMPTS[i], audio[i : i + 1], tokens, cd.beta, cd.plausibility)
        logp = F.log_softmax(logits, dim=-1).gather(1, torch.tensor(tokens)[:, None]).sum().item()
        ended = tokens[-1] == tiny_salmonn.tokenizer.eos_token_id
        length = 1 + len(tokens) - ended  # dummy <s> counted, final </s> not
        assert out.sequence_scores[i] == pytest.approx(logp / length**length_penalty, abs=1e-4), f"row {i}"


@pytest.mark.parametrize("num_beams", [1, 3])
def test_left_padded_batch_equals_one_at_a_time(tiny_salmonn, audio, num_beams: int):
    settings = GenerationSettings(max_new_tokens=8, num_beams=num_beams)
    cd = ContrastiveSettings(beta=1.0, plausibility=0.1)
    batched = contrastive_generate(tiny_salmonn, PROMPTS, audio, settings, cd)
    for i, prompt in enumerate(PROMPTS):
        alone = contrastive_generate(tiny_salmonn, [prompt], audio[i : i + 1], settings, cd)
        assert alone.sequences == [batched.sequences[i]]
        if num_beams > 1:
            assert alone.sequence_scores[0] == pytest.approx(batched.sequence_scores[i], abs=1e-5)


def test_negative_audio_tokens_replace_the_audio_free_prompt(tiny_salmonn, audio):
    settings = GenerationSettings(max_new_tokens=6, num_beams=1)
    cd = ContrastiveSettings(beta=1.0, plausibility=0.1)
    # Contrasting the audio with itself removes nothing: plain greedy decoding.
    same = contrastive_generate(tiny_salmonn, PROMPTS, audio, settings, cd, negative_audio_tokens=audio)
    assert same.sequences == generate(tiny_salmonn, PROMPTS, audio, settings).sequences


def test_bad_settings(tiny_salmonn, audio):
    settings = GenerationSettings(max_new_tokens=2, num_beams=1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        contrastive_generate(tiny_salmonn, PROMPTS, audio, settings, ContrastiveSettings(beta=-1.0))
    with pytest.raises(ValueError, match="plausibility must be in"):
        contrastive_generate(tiny_salmonn, PROMPTS, audio, settings, ContrastiveSettings(plausibility=2.0))
