"""Format forcing: answers of the tiny SALMONN start with one of their question's option labels."""

import re

import pytest
import torch
from tests.helpers.noise_audio import noise_audio_tokens

from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.generation.format_forcing import (
    FormatForcingSettings,
    OptionPrefixProcessor,
    format_forcing_processor,
    option_prefixes,
)
from salmonn_pl.generation.generate import generate

TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
QUESTIONS = [
    "What animal makes the sound in the audio? (a) dog (b) cat (c) cow (d) pig",
    "Which emotion does the speaker express? (a) happy (b) sad (c) angry",
    "What is the gender of the speaker? (a) male (b) female",
]


def _audio_tokens(salmonn, n: int) -> torch.Tensor:
    return noise_audio_tokens(salmonn, n, seed=2)


def _label(text: str) -> str | None:
    match = re.match(r"\(([a-z])\)", text)
    return match.group(1) if match else None


def test_prefixes_are_the_labels_as_written_at_answer_start(tiny_salmonn):
    tokenizer = tiny_salmonn.tokenizer
    prefixes = option_prefixes(tokenizer, QUESTIONS[1])
    assert [tokenizer.convert_ids_to_tokens(p) for p in prefixes] == [["▁(", letter, ")"] for letter in "abc"]
    full = option_prefixes(tokenizer, QUESTIONS[2], force="label_text")
    assert [tokenizer.decode(p) for p in full] == ["(a) male", "(b) female"]
    assert option_prefixes(tokenizer, "Describe the sound.") == []


def test_processor_allows_only_label_continuations_then_nothing_is_forced(tiny_salmonn):
    tokenizer = tiny_salmonn.tokenizer
    processor = format_forcing_processor(tokenizer, QUESTIONS[1:])  # 3 and 2 options
    open_paren, close_paren = tokenizer.convert_tokens_to_ids(["▁(", ")"])
    letters = tokenizer.convert_tokens_to_ids(list("abc"))
    scores = torch.randn(4, len(tokenizer))  # 2 items x 2 beams

    def allowed(generated: list[list[int]]) -> list[set[int]]:
        ids = torch.tensor([[1] + g for g in generated])
        out = processor(ids, scores.clone())
        return [set(torch.nonzero(row > float("-inf")).flatten().tolist()) for row in out]

    assert allowed([[]] * 4) == [{open_paren}] * 4
    assert allowed([[open_paren]] * 4) == [set(letters)] * 2 + [set(letters[:2])] * 2
    assert allowed([[open_paren, letters[1]]] * 4) == [{close_paren}] * 4
    done = torch.tensor([[1, open_paren, letters[0], close_paren]] * 4)
    assert torch.equal(processor(done, scores.clone()), scores)  # label complete: free generation


@pytest.mark.parametrize("num_beams", [1, 3])
def test_forced_answers_start_with_a_valid_label(tiny_salmonn, num_beams: int):
    tokenizer = tiny_salmonn.tokenizer
    questions = QUESTIONS + [QUESTIONS[2].replace("(a) male (b) female", "(a) female (b) male")]
    prompts = [TEMPLATE.format(q) for q in questions]
    audio = _audio_tokens(tiny_salmonn, len(prompts))
    settings = GenerationSettings(max_new_tokens=6, num_beams=num_beams)

    free = generate(tiny_salmonn, prompts, audio, settings)
    free_answers = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in free.sequences]
    assert any(_label(a) is None for a in free_answers)  # the tiny model does not answer with labels by itself

    for force in ("label", "label_text"):
        processor = format_forcing_processor(tokenizer, questions, FormatForcingSettings(force=force))
        forced = generate(tiny_salmonn, prompts, audio, settings, logits_processors=[processor])
        for question, sequence in zip(questions, forced.sequences):
            starts = option_prefixes(tokenizer, question, force)
            assert any(sequence[: len(p)] == p for p in starts), tokenizer.decode(sequence)
            answer = tokenizer.decode(sequence, skip_special_tokens=True).strip()
            letter = _label(answer)
            assert letter is not None and f"({letter})" in question
            if force == "label_text":
                option = re.search(rf"\({letter}\) (.*?)(?= \([a-z]\)|$)", question).group(1)
                assert answer.startswith(f"({letter}) {option}")


def test_questions_without_options_are_left_free(tiny_salmonn):
    tokenizer = tiny_salmonn.tokenizer
    questions = ["Describe the sound.", QUESTIONS[0]]
    prompts = [TEMPLATE.format(q) for q in questions]
    audio = _audio_tokens(tiny_salmonn, 2)
    settings = GenerationSettings(max_new_tokens=5, num_beams=1)
    free = generate(tiny_salmonn, prompts, audio, settings)
    forced = generate(tiny_salmonn, prompts, audio, settings,
                                   logits_processors=[format_forcing_processor(tokenizer, questions)])
    assert forced.sequences[0] == free.sequences[0]
    assert _label(tokenizer.decode(forced.sequences[1], skip_special_tokens=True).strip()) is not None


def test_processor_rejects_rows_that_do_not_match_its_items():
    processor = OptionPrefixProcessor([[[5, 6]], [[7]]])
    with pytest.raises(ValueError, match="3 rows cannot be split among 2 items"):
        processor(torch.ones(3, 1, dtype=torch.long), torch.zeros(3, 10))
