"""Diverse beam search and several returned sequences, on the tiny SALMONN."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.helpers.noise_audio import noise_audio_tokens

from salmonn_pl.generation.decode import DecodeStep, GenerationSettings, generate
from salmonn_pl.generation.diverse_beam import (
    DiverseBeamSettings,
    SimilarityPenalty,
    distinct_n,
    diverse_beam_generate,
    similarity_penalty,
)
from salmonn_pl.model.tiny import ANIMALS, QUESTIONS

TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
PROMPTS = [
    TEMPLATE.format(f"{q} (a) {ANIMALS[i]} (b) {ANIMALS[i + 1]} (c) {ANIMALS[i + 2]}")
    for i, q in enumerate(QUESTIONS[:6])
]
BEAMS4 = GenerationSettings(max_new_tokens=12, num_beams=4, num_return_sequences=4)


@pytest.fixture(scope="module")
def audio(tiny_salmonn) -> torch.Tensor:
    return noise_audio_tokens(tiny_salmonn, len(PROMPTS), seed=0)


def _llm_inputs(salmonn, audio):
    inputs = salmonn.assemble(PROMPTS, audio)
    return inputs.inputs_embeds, inputs.attention_mask


def _mean_distinct(sequences: list[list[int]], per_item: int, n: int = 2) -> float:
    groups = [sequences[i : i + per_item] for i in range(0, len(sequences), per_item)]
    return float(np.mean([distinct_n(g, n) for g in groups]))


# ------------------------------------------------------------------------------ several returned beams


def test_num_return_sequences_returns_the_best_beams_in_order(tiny_salmonn, audio):
    embeds, mask = _llm_inputs(tiny_salmonn, audio)
    one = generate(tiny_salmonn.llm, embeds, mask, GenerationSettings(max_new_tokens=8, num_beams=4))
    three = generate(tiny_salmonn.llm, embeds, mask, GenerationSettings(max_new_tokens=8, num_beams=4,
                                                                         num_return_sequences=3))
    assert len(three.sequences) == 3 * len(PROMPTS)
    for i in range(len(PROMPTS)):
        group, scores = three.sequences[3 * i : 3 * i + 3], three.sequence_scores[3 * i : 3 * i + 3]
        assert group[0] == one.sequences[i] and scores[0] == one.sequence_scores[i]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(s) for s in group}) == 3


def test_num_return_sequences_with_sampling_and_bad_values(tiny_salmonn, audio):
    embeds, mask = _llm_inputs(tiny_salmonn, audio)
    settings = GenerationSettings(max_new_tokens=5, num_beams=1, do_sample=True, temperature=2.0,
                                  num_return_sequences=3)
    out = generate(tiny_salmonn.llm, embeds, mask, settings, generator=torch.Generator().manual_seed(0))
    assert len(out.sequences) == 3 * len(PROMPTS)
    with pytest.raises(ValueError, match="cannot exceed num_beams"):
        generate(tiny_salmonn.llm, embeds, mask, GenerationSettings(num_beams=2, num_return_sequences=3))
    with pytest.raises(ValueError, match="needs beam search"):
        generate(tiny_salmonn.llm, embeds, mask, GenerationSettings(num_beams=1, num_return_sequences=2))


# ---------------------------------------------------------------------------------- similarity penalty


def test_penalty_is_alpha_relu_cosine_on_each_beams_top_2k():
    torch.manual_seed(0)
    vocab, hidden, beams = 30, 8, 2
    vectors = torch.randn(vocab, hidden)
    step = DecodeStep(
        input_ids=torch.ones(beams, 1, dtype=torch.long),
        logits=torch.randn(beams, vocab),
        scores=torch.randn(beams, vocab).log_softmax(-1),
        hidden=torch.randn(beams, hidden),
        num_beams=beams,
    )
    out = SimilarityPenalty(alpha=0.7, token_vectors=vectors, query="hidden")(step)
    for row in range(beams):
        top = step.scores[row].topk(2 * beams).indices
        cosine = F.cosine_similarity(vectors[top], step.hidden[row][None], dim=-1)
        torch.testing.assert_close(out[row, top], step.scores[row, top] - 0.7 * cosine.clamp(min=0))
        others = torch.ones(vocab, dtype=torch.bool)
        others[top] = False
        assert torch.isinf(out[row, others]).all()


def test_generated_mean_query_starts_without_penalty():
    vectors = torch.randn(10, 4)
    hook = SimilarityPenalty(alpha=5.0, token_vectors=vectors, query="generated_mean", input_embeddings=vectors)
    scores = torch.randn(2, 10).log_softmax(-1)
    step = DecodeStep(torch.ones(2, 1, dtype=torch.long), scores, scores, None, num_beams=2)
    top = scores.topk(4).indices
    assert torch.equal(hook(step).gather(1, top), scores.gather(1, top))
    # After tokens 3 and 5, the query is their mean embedding.
    step = DecodeStep(torch.tensor([[1, 3, 5]] * 2), scores, scores, None, num_beams=2)
    query = vectors[[3, 5]].mean(0)
    cosine = F.cosine_similarity(vectors[top[0]], query[None], dim=-1)
    torch.testing.assert_close(hook(step)[0, top[0]], scores[0, top[0]] - 5.0 * cosine.clamp(min=0))


@pytest.mark.parametrize("query", ["hidden", "generated_mean"])
@pytest.mark.parametrize("token_vectors", ["input", "output"])
def test_alpha_zero_is_standard_beam_search(tiny_salmonn, audio, query: str, token_vectors: str):
    embeds, mask = _llm_inputs(tiny_salmonn, audio)
    plain = generate(tiny_salmonn.llm, embeds, mask, BEAMS4)
    # The hook itself, not the shortcut that skips it: restricting each beam to its top 2k changes nothing.
    settings = DiverseBeamSettings(alpha=0.0, query=query, token_vectors=token_vectors)
    hook = similarity_penalty(tiny_salmonn.llm, settings)
    hooked = generate(tiny_salmonn.llm, embeds, mask, BEAMS4, score_hook=hook)
    assert hooked.sequences == plain.sequences
    assert hooked.sequence_scores == plain.sequence_scores
    entry = diverse_beam_generate(tiny_salmonn, PROMPTS, audio, BEAMS4, DiverseBeamSettings(alpha=0.0))
    assert entry.sequences == plain.sequences


@pytest.mark.parametrize(
    ("settings", "min_gain"),
    [
        (DiverseBeamSettings(alpha=1.0, query="generated_mean", token_vectors="input"), 0.1),
        (DiverseBeamSettings(alpha=2.0, query="generated_mean", token_vectors="output"), 0.05),
    ],
)
def test_alpha_raises_distinct_ngrams_across_beams(tiny_salmonn, audio, settings: DiverseBeamSettings, min_gain: float):
    plain = diverse_beam_generate(tiny_salmonn, PROMPTS, audio, BEAMS4, DiverseBeamSettings(alpha=0.0))
    diverse = diverse_beam_generate(tiny_salmonn, PROMPTS, audio, BEAMS4, settings)
    assert len(diverse.sequences) == 4 * len(PROMPTS)
    before, after = _mean_distinct(plain.sequences, 4), _mean_distinct(diverse.sequences, 4)
    assert after >= before + min_gain, (before, after)


def test_distinct_n():
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(2 / 4)
    assert distinct_n([[1, 2, 3], [3, 2, 1]], 2) == 1.0
    assert distinct_n([[1, 1, 1, 1]], 1) == pytest.approx(1 / 4)
    assert distinct_n([[1]], 2) == 0.0


def test_needs_several_beams(tiny_salmonn, audio):
    with pytest.raises(ValueError, match="num_beams >= 2"):
        diverse_beam_generate(tiny_salmonn, PROMPTS, audio, GenerationSettings(num_beams=1), DiverseBeamSettings(1.0))
