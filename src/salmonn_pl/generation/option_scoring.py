"""Multiple-choice answers by option likelihood: no generation and no judge needed.

Each option is scored as the answer the model would write after ``ASSISTANT:`` (``"(c) dog"``, or
``"dog"`` alone), by its log-likelihood given the prompt and the audio, optionally per token. Two
corrections target priors that do not come from the audio:

* calibration by the text-only likelihood (the same prompt with the audio tokens removed):
  ``"pmi"`` scores ``log p(option | audio, question) - log p(option | question)``; ``"divide"``
  turns both likelihoods into probabilities over the options, divides the first by the second and
  renormalises (contextual calibration). The two rank the options of one prompt alike; they differ
  once averaged over permutations;
* permutation debiasing: for K options, the question is asked in its K cyclic option orders (each
  option takes every letter once), every option is scored in every order, and its scores are
  averaged, so a preference for a letter or a position cancels out.

All (question x order x option) rows, with and without audio, go through the LLM in batches of
``max_rows_per_forward``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from salmonn_pl.data.multiple_choice import ParsedQuestion, option_letter, parse_question
from salmonn_pl.json_values import finite_json
from salmonn_pl.model.family import AudioLLM, FamilyQuestion
from salmonn_pl.model.salmonn import PaddingSide, Salmonn
from salmonn_pl.settings_check import at_least, require


@dataclass
class OptionScoringSettings:
    answer_format: Literal["label_text", "text"] = "label_text"  # "(c) dog" or "dog"
    length_normalization: Literal["none", "mean"] = "mean"  # "mean": log-likelihood per token
    score_end_of_answer: bool = True  # include the </s> that ends the answer in its likelihood
    calibration: Literal["none", "pmi", "divide"] = "none"
    permutations: Literal["none", "cyclic"] = "none"
    max_rows_per_forward: int = 64

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class OptionScores:
    """The scored options of one question, in the question's own order."""

    options: list[str]
    scores: list[float]  # the ranking score (higher is better), averaged over option orders
    audio_loglik: list[float]  # (length-normalised) log-likelihood with audio, averaged over orders
    text_loglik: list[float] | None  # the same without audio, when calibrating
    ranking: list[int]  # option positions, best first
    choice: str  # the best option as a SAKURA answer, "(c) dog"; "" when ``error`` is set
    # Set when a likelihood was NaN or infinite (a broken model): then nothing was chosen, since
    # ranking NaNs would pick "(a)" and could be judged correct.
    error: str | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-ready fields for a predictions file."""
        labels = [f"({option_letter(i)}) {text}" for i, text in enumerate(self.options)]
        # Non-finite scores stay in the record as None (strict JSON), next to the error.
        record: dict[str, Any] = {
            "choice": self.choice,
            "option_scores": dict(zip(labels, self.scores)),
            "option_loglik_audio": dict(zip(labels, self.audio_loglik)),
        }
        if self.text_loglik is not None:
            record["option_loglik_text"] = dict(zip(labels, self.text_loglik))
        if self.error is not None:
            record["error"] = self.error
        return finite_json(record)


@dataclass
class _Row:
    """One option of one question in one option order."""

    question: int
    order: int
    option: int  # position in the question's original order
    prompt: str
    answer: str


@torch.no_grad()
def score_options(
    salmonn: Salmonn,
    prompts: list[str],
    questions: list[str],
    audio_tokens: torch.Tensor | None,
    settings: OptionScoringSettings | None = None,
    padding_side: PaddingSide = "left",
    ids: list[str] | None = None,
    captions: list[str | None] | None = None,
) -> list[OptionScores]:
    """Score the options of each ``questions[i]`` (which must appear verbatim in ``prompts[i]``).

    ``audio_tokens [B, n, H]`` are the prompts' audio tokens (``None``: text-only prompts); ``ids`` name
    the questions in error messages. ``captions[i]``: the caption standing for the audio in a text-control
    prompt; calibration's text-only prompt is without it, as it is without the audio.
    """
    settings = settings or OptionScoringSettings()
    if len(prompts) != len(questions):
        raise ValueError(f"score_options got {len(prompts)} prompts but {len(questions)} questions")

    def loglik(rows: list[_Row], with_audio: bool) -> torch.Tensor:
        if not with_audio and captions is not None and any(captions):
            rows = [replace(r, prompt=r.prompt.replace(captions[r.question], "", 1)) if captions[r.question] else r
                    for r in rows]
        return _loglik(salmonn, rows, audio_tokens if with_audio else None, settings, padding_side)

    return _score(prompts, questions, settings, ids, loglik)


@torch.no_grad()
def score_family_options(
    model: AudioLLM,
    questions: list[FamilyQuestion],
    settings: OptionScoringSettings | None = None,
    ids: list[str] | None = None,
) -> list[OptionScores]:
    """:func:`score_options` for a model family of :mod:`salmonn_pl.model.family`: the family builds each
    prompt from the question shown (its options in each order); calibration asks it text only."""
    settings = settings or OptionScoringSettings()

    def loglik(rows: list[_Row], with_audio: bool) -> torch.Tensor:
        values = []
        for start in range(0, len(rows), settings.max_rows_per_forward):
            chunk = rows[start : start + settings.max_rows_per_forward]
            asked = [replace(questions[r.question], text=r.prompt) for r in chunk]
            if not with_audio:
                asked = [FamilyQuestion(text=q.text, clip=None) for q in asked]
            logp, count = model.answer_log_likelihoods(asked, [r.answer for r in chunk], settings.score_end_of_answer)
            if settings.length_normalization == "mean":
                logp = logp / count.clamp(min=1)
            values.append(logp.float().cpu())
        return torch.cat(values)

    return _score([q.text for q in questions], [q.text for q in questions], settings, ids, loglik)


def _score(
    prompts: list[str],
    questions: list[str],
    settings: OptionScoringSettings,
    ids: list[str] | None,
    loglik: Callable[[list[_Row], bool], torch.Tensor],
) -> list[OptionScores]:
    """The options' rows (every order), their log-likelihoods with audio (and without, when
    calibrating) from ``loglik(rows, with_audio)``, and the scores per question."""
    _check(settings)
    names = ids or [f"question {i}" for i in range(len(questions))]
    parsed = [_parse(q, p, name) for q, p, name in zip(questions, prompts, names)]
    rows = _rows(prompts, questions, parsed, settings)
    audio_loglik = loglik(rows, True)
    text_loglik = None
    if settings.calibration != "none":
        text_loglik = loglik(rows, False)

    results = []
    for q, question in enumerate(parsed):
        k = len(question.options)
        # [orders, K] in original option positions
        index = torch.tensor([i for i, r in enumerate(rows) if r.question == q]).view(-1, k)
        options_of_rows = torch.tensor([rows[i].option for i in index.flatten().tolist()]).view_as(index)
        audio = _to_original_order(audio_loglik[index], options_of_rows)
        text = _to_original_order(text_loglik[index], options_of_rows) if text_loglik is not None else None
        scores = _calibrate(audio, text, settings.calibration).mean(dim=0)
        error = _non_finite(audio, text, scores)
        ranking = [] if error else sorted(range(k), key=lambda i: -scores[i].item())  # stable: ties keep option order
        results.append(
            OptionScores(
                options=list(question.options),
                scores=scores.tolist(),
                audio_loglik=audio.mean(dim=0).tolist(),
                text_loglik=text.mean(dim=0).tolist() if text is not None else None,
                ranking=ranking,
                choice="" if error else f"({option_letter(ranking[0])}) {question.options[ranking[0]]}",
                error=error,
            )
        )
    return results


def _non_finite(audio: torch.Tensor, text: torch.Tensor | None, scores: torch.Tensor) -> str | None:
    """Why a question's option scores cannot rank its options (NaN or infinite values), or None."""
    for name, values in (("log-likelihoods with audio", audio), ("text-only log-likelihoods", text),
                         ("scores", scores)):
        if values is not None and not torch.isfinite(values).all():
            return f"non-finite option {name} (NaN or inf): the model's output is not a number"
    return None


def _check(settings: OptionScoringSettings) -> None:
    allowed = {
        "answer_format": ("label_text", "text"),
        "length_normalization": ("none", "mean"),
        "calibration": ("none", "pmi", "divide"),
        "permutations": ("none", "cyclic"),
    }
    for name, choices in allowed.items():
        require(getattr(settings, name) in choices, f"option_scoring.{name}", getattr(settings, name), f"one of {choices}")
    require(at_least(settings.max_rows_per_forward, 1), "option_scoring.max_rows_per_forward",
            settings.max_rows_per_forward, ">= 1")


def _parse(question: str, prompt: str, name: str) -> ParsedQuestion:
    parsed = parse_question(question)
    if parsed is None:
        raise ValueError(f"{name}: question has no '(a) ... (b) ...' options to score: {question!r}")
    count = prompt.count(question)
    if count != 1:
        raise ValueError(f"{name}: the question must appear exactly once in the prompt, found {count} times; "
                         f"question {question!r}, prompt {prompt!r}")
    return parsed


def _rows(
    prompts: list[str], questions: list[str], parsed: list[ParsedQuestion], settings: OptionScoringSettings
) -> list[_Row]:
    rows = []
    for q, (prompt, question, p) in enumerate(zip(prompts, questions, parsed)):
        k = len(p.options)
        shifts = range(k) if settings.permutations == "cyclic" else range(1)
        for shift in shifts:
            order = [(i + shift) % k for i in range(k)]  # order[position] = original option
            shown = prompt.replace(question, p.render([p.options[i] for i in order]))
            for position, option in enumerate(order):
                text = p.options[option]
                answer = f"({option_letter(position)}) {text}" if settings.answer_format == "label_text" else text
                rows.append(_Row(q, shift, option, shown, answer))
    return rows


def _loglik(
    salmonn: Salmonn,
    rows: list[_Row],
    audio_tokens: torch.Tensor | list[torch.Tensor] | None,
    settings: OptionScoringSettings,
    padding_side: PaddingSide,
) -> torch.Tensor:
    """Per-row log-likelihood of the answer (per token with ``"mean"``), float32 on the CPU.

    ``audio_tokens`` has one entry per question; each row takes its question's.
    """
    values = []
    step = settings.max_rows_per_forward
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        audio = None
        if isinstance(audio_tokens, torch.Tensor):
            audio = audio_tokens[torch.tensor([r.question for r in chunk], device=audio_tokens.device)]
        elif audio_tokens is not None:  # per-question tensors (mixed ablations, long audio)
            audio = [audio_tokens[r.question] for r in chunk]
        inputs = salmonn.assemble([r.prompt for r in chunk], audio, [r.answer for r in chunk], padding_side)
        labels = inputs.labels
        if not settings.score_end_of_answer:
            labels = _without_last_target(labels)
        logp, count = salmonn.answer_logprobs(inputs, labels)
        if settings.length_normalization == "mean":
            logp = logp / count.clamp(min=1)
        values.append(logp.float().cpu())
    return torch.cat(values)


def _without_last_target(labels: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    last = torch.where(labels != -100, positions, -1).max(dim=1).values
    return labels.scatter(1, last[:, None].clamp(min=0), -100)


def _to_original_order(values: torch.Tensor, options: torch.Tensor) -> torch.Tensor:
    """``values[order, position]`` -> ``[order, original option]``."""
    return torch.empty_like(values).scatter_(1, options, values)


def _calibrate(audio: torch.Tensor, text: torch.Tensor | None, calibration: str) -> torch.Tensor:
    """``[orders, K]`` log-likelihoods -> ``[orders, K]`` scores to average over orders."""
    if calibration == "none":
        return audio
    if calibration == "pmi":
        return audio - text
    ratio = torch.softmax(audio, dim=-1) / torch.softmax(text, dim=-1)
    return ratio / ratio.sum(dim=-1, keepdim=True)
