"""The LLM's text prior over a question's options, with gradients: the input of ``kl_uniform``.

Every option of every multiple-choice question in the batch is scored as the answer ``"(x) text"``
(the SAKURA answer format, ``</s>`` included) after the row's own prompt with the audio tokens
removed. All (question x option) rows go through the LLM in one forward pass, keeping logits only
for the answer positions. Unlike :func:`salmonn_pl.generation.option_scoring.score_options` this
keeps the graph, so a loss on the scores trains the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from salmonn_pl.data.multiple_choice import answer_position, option_letter, parse_question
from salmonn_pl.model.salmonn import PaddingSide, Salmonn


@dataclass
class OptionLikelihoods:
    """Text-only answer log-likelihoods of the options of ``Q`` questions, padded to ``K`` options."""

    logps: torch.Tensor  # [Q, K] summed log p of "(x) text</s>" given the text-only prompt
    lengths: torch.Tensor  # [Q, K] answer tokens per option
    valid: torch.Tensor  # [Q, K] bool, False on padding
    answers: torch.Tensor  # [Q] position of the correct option, -1 when the target names none
    rows: list[int]  # the batch row of each question


def text_only_option_logprobs(
    salmonn: Salmonn,
    prompts: list[str],
    questions: list[str | None],
    targets: list[str],
    padding_side: PaddingSide = "left",
) -> OptionLikelihoods | None:
    """Score the options of each row's question with the audio removed; ``None`` if no row has options.

    Rows whose question has no ``"(a) ... (b) ..."`` options (e.g. open questions, or variants with
    the options stripped), or whose question does not appear in the prompt, are left out.
    """

    def score(rows: list[int], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return salmonn.answer_logprobs(salmonn.assemble([prompts[row] for row in rows], None, answers, padding_side))

    return option_logprobs(score, prompts, questions, targets)


def option_logprobs(
    score: Callable[[list[int], list[str]], tuple[torch.Tensor, torch.Tensor]],
    prompts: list[str],
    questions: list[str | None],
    targets: list[str],
) -> OptionLikelihoods | None:
    """:func:`text_only_option_logprobs` with the scoring given: ``score(rows, answers)`` returns the
    summed log-likelihood (with its graph) and the token count of ``answers[i]`` after the text-only
    prompt of batch row ``rows[i]`` (a model family scores its own prompt; see ``SalmonnModule``)."""
    rows, option_lists = [], []
    for row, (prompt, question) in enumerate(zip(prompts, questions)):
        parsed = parse_question(question) if question else None
        if parsed is not None and prompt.count(question) == 1:
            rows.append(row)
            option_lists.append(parsed.options)
    if not rows:
        return None

    flat_rows = [row for row, options in zip(rows, option_lists) for _ in options]
    flat_answers = [f"({option_letter(i)}) {text}" for options in option_lists for i, text in enumerate(options)]
    flat_logp, flat_count = score(flat_rows, flat_answers)

    n_questions, k = len(rows), max(len(options) for options in option_lists)
    device = flat_logp.device
    question_of = torch.tensor([q for q, options in enumerate(option_lists) for _ in options], device=device)
    position_of = torch.tensor([i for options in option_lists for i in range(len(options))], device=device)
    logps = flat_logp.new_zeros(n_questions, k).index_put((question_of, position_of), flat_logp)
    lengths = flat_count.new_ones(n_questions, k).index_put((question_of, position_of), flat_count)
    valid = torch.zeros(n_questions, k, dtype=torch.bool, device=device).index_put(
        (question_of, position_of), torch.ones_like(question_of, dtype=torch.bool)
    )
    answers = [answer_position(targets[row], options) for row, options in zip(rows, option_lists)]
    answers = torch.tensor(answers, device=device)
    return OptionLikelihoods(logps, lengths, valid, answers, rows)
