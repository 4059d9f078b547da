"""Logits processors from YAML act on a model family's decoding as on SALMONN's: phrases tokenised as
the start of an answer, lengths counted from the answer's first token."""

from __future__ import annotations

import pytest

from salmonn_pl.generation.decoder import Generate
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.processors import LogitsProcessorSettings, make_logits_processors
from tests.helpers.qwen2_audio import QUESTIONS, noise_questions


@pytest.fixture(scope="module")
def asked():
    return noise_questions(seed=0)


def _answers(qwen, asked, settings: LogitsProcessorSettings, num_beams: int = 1) -> list[str]:
    generation = GenerationSettings(num_beams=num_beams, max_new_tokens=8)
    processors = make_logits_processors(settings, qwen.answer_token_ids, lambda: qwen.prompt_token_ids(asked),
                                        qwen.end_of_answer_id, num_beams)
    return [a["response"] for a in Generate().answer_family(qwen, asked, ["q0", "q1"], generation, processors)]


def _token_ids(qwen, asked, settings: LogitsProcessorSettings, num_beams: int = 1) -> list[list[int]]:
    processors = make_logits_processors(settings, qwen.answer_token_ids, lambda: qwen.prompt_token_ids(asked),
                                        qwen.end_of_answer_id, num_beams)
    result = qwen.generate([q.text for q in asked], [q.clip for q in asked], max_new_tokens=8, num_beams=num_beams,
                           logits_processors=processors)
    return result.token_ids


@pytest.mark.parametrize("num_beams", [1, 4])
def test_a_banned_first_token_is_not_written_and_rows_stay_independent(qwen, asked, num_beams):
    plain = _token_ids(qwen, asked, LogitsProcessorSettings(), num_beams)
    ban = LogitsProcessorSettings(sequence_bias={qwen.tokenizer.decode(plain[0][:1]): -100.0})
    banned = _token_ids(qwen, asked, ban, num_beams)
    assert banned[0][:1] != plain[0][:1]
    for i, question in enumerate(asked):  # each row answers as alone, under the same processors
        assert _token_ids(qwen, [question], ban, num_beams)[0] == banned[i]
    # Through the decoder the module uses: the same answers.
    generation = GenerationSettings(num_beams=num_beams, max_new_tokens=8)
    processors = make_logits_processors(ban, qwen.answer_token_ids, lambda: qwen.prompt_token_ids(asked),
                                        qwen.end_of_answer_id, num_beams)
    texts = [a["response"] for a in Generate().answer_family(qwen, asked, ["q0", "q1"], generation, processors)]
    assert texts == [qwen.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in banned]


def test_exponential_decay_counts_answer_tokens_not_the_prompt(qwen, asked):
    assert min(len(ids) for ids in _token_ids(qwen, asked, LogitsProcessorSettings())) > 1
    # From the answer's first token on, the end-of-turn score grows a thousandfold per token: every
    # answer ends after exactly one token. Counted from the prompt (hundreds of tokens) it would end
    # before the first.
    decayed = _token_ids(qwen, asked, LogitsProcessorSettings(exponential_decay_length_penalty=(0, 1000.0)))
    assert [len(ids) for ids in decayed] == [1, 1]


def test_the_repetition_penalty_favours_the_prompts_own_words_without_audio(qwen, asked):
    prompts = qwen.prompt_token_ids(asked)
    assert all(qwen.audio_token_id not in row for row in prompts)
    assert qwen.tokenizer.decode(prompts[0]).endswith(QUESTIONS[0] + "<|im_end|>\n<|im_start|>assistant\n")

    def from_prompt(settings):
        answers = _token_ids(qwen, asked, settings)
        return sum(token in set(prompt) for ids, prompt in zip(answers, prompts) for token in ids)

    assert from_prompt(LogitsProcessorSettings(encoder_repetition_penalty=50.0)) > from_prompt(LogitsProcessorSettings())
