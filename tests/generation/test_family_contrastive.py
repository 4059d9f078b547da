"""Audio-contrastive decoding on Qwen2-Audio: plain decoding at beta 0, the contrast of two full
forwards step by step in greedy decoding, and every row as alone in beam search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.decoder import Contrastive, Generate
from salmonn_pl.model.family import FamilyQuestion
from tests.helpers.qwen2_audio import noise_questions

MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def asked():
    return noise_questions(seed=1)


def _answers(decoder, qwen, asked, num_beams):
    generation = GenerationSettings(num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS, min_length=0)
    return [a["response"] for a in decoder.answer_family(qwen, asked, [f"q{i}" for i in range(len(asked))], generation)]


@pytest.mark.parametrize("num_beams", [1, 4])
def test_beta_zero_without_plausibility_cut_is_plain_decoding(qwen, asked, num_beams):
    assert _answers(Contrastive(beta=0.0, plausibility=0.0), qwen, asked, num_beams) == \
        _answers(Generate(), qwen, asked, num_beams)


def test_greedy_contrast_is_the_contrast_of_two_full_forwards(qwen, asked):
    beta, plausibility = 1.0, 0.1
    answers = _answers(Contrastive(beta=beta, plausibility=plausibility), qwen, asked, 1)
    assert answers != _answers(Generate(), qwen, asked, 1)  # the contrast changes what is said
    for question, answer in zip(asked, answers):
        tokens: list[int] = []
        for _ in range(MAX_NEW_TOKENS):
            audio = F.log_softmax(qwen.next_token_logits([question], [tokens])[0].double(), -1)
            text = F.log_softmax(qwen.next_token_logits([FamilyQuestion(question.text, None)], [tokens])[0].double(), -1)
            plausible = audio >= audio.max() + np.log(plausibility)
            token = int(torch.where(plausible, (1 + beta) * audio - beta * text, -torch.inf).argmax())
            if token in qwen.eos_token_ids:
                break
            tokens.append(token)
        assert answer == qwen.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_beam_contrast_answers_each_row_as_alone(qwen, asked):
    decoder = Contrastive(beta=2.0, plausibility=0.05)
    batched = _answers(decoder, qwen, asked, 4)
    assert [_answers(decoder, qwen, [q], 4)[0] for q in asked] == batched


def test_diverse_beams_without_penalty_are_beam_search_and_rows_stay_independent(qwen, asked):
    from salmonn_pl.generation.decoder import DiverseBeam

    assert _answers(DiverseBeam(alpha=0.0), qwen, asked, 4) == _answers(Generate(), qwen, asked, 4)
    diverse = DiverseBeam(alpha=5.0)
    batched = _answers(diverse, qwen, asked, 4)
    assert batched != _answers(Generate(), qwen, asked, 4)  # the penalty moves the search
    assert [_answers(diverse, qwen, [q], 4)[0] for q in asked] == batched
    with pytest.raises(ValueError, match="num_beams must be >= 2"):
        _answers(diverse, qwen, asked, 1)
