"""The multiple-choice grammar of SAKURA, shared by the data, the decoders, the objectives and the judge.

A question is ``"<stem> (a) x (b) y (c) z"`` (options lettered from ``a`` in order) and its answer
``"(b) y"``. Here are the letters, rendering and parsing of both, and shuffling the options of a
question while relabelling its answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

_OPTION_MARKER = re.compile(r"\(([a-z])\)")
_ANSWER = re.compile(r"^(\s*)\(([a-z])\)\s*(.*?)\s*$", re.DOTALL)


def option_letter(position: int) -> str:
    return chr(ord("a") + position)


def format_options(options: Sequence[str]) -> str:
    return " ".join(f"({option_letter(i)}) {text}" for i, text in enumerate(options))


@dataclass(frozen=True)
class ParsedQuestion:
    """A SAKURA question split into its stem, the text between stem and "(a)", and its option texts."""

    stem: str
    separator: str
    options: list[str]

    def render(self, options: Sequence[str] | None = None) -> str:
        return f"{self.stem}{self.separator}{format_options(self.options if options is None else options)}"


def parse_question(question: str) -> ParsedQuestion | None:
    """Split ``"<stem> (a) x (b) y ..."``; ``None`` when there are fewer than two options.

    The option list starts at the last "(a)" so that a stem mentioning "(a)" is not mistaken for it;
    markers out of alphabetical order are taken as part of an option's text.
    """
    markers = list(_OPTION_MARKER.finditer(question))
    starts = [i for i, m in enumerate(markers) if m.group(1) == "a"]
    if not starts:
        return None
    chain = [markers[starts[-1]]]
    for marker in markers[starts[-1] + 1 :]:
        if marker.group(1) == option_letter(len(chain)):
            chain.append(marker)
    if len(chain) < 2:
        return None
    ends = [m.start() for m in chain[1:]] + [len(question)]
    options = [question[m.end() : end].strip() for m, end in zip(chain, ends)]
    if any(not text for text in options):
        return None
    head = question[: chain[0].start()]
    stem = head.rstrip()
    return ParsedQuestion(stem=stem, separator=head[len(stem) :], options=options)


def parse_answer(answer: str) -> tuple[str, int, str] | None:
    """``" (c) angry"`` -> (leading whitespace, option position 2, "angry"); ``None`` if not of that form."""
    match = _ANSWER.match(answer)
    if match is None:
        return None
    return match.group(1), ord(match.group(2)) - ord("a"), match.group(3)


def shuffle_options(question: str, answer: str, rng: random.Random) -> tuple[str, str]:
    """Re-order a question's options at random and relabel its answer to match.

    The answer keeps its text and leading whitespace; only its letter changes, so the answer text
    always follows its own option. Raises ``ValueError`` if the question has no options or the answer
    does not name one of them.
    """
    parsed = parse_question(question)
    if parsed is None:
        raise ValueError(f"question has no '(a) ... (b) ...' options: {question!r}")
    parsed_answer = parse_answer(answer)
    if parsed_answer is None:
        raise ValueError(f"answer is not of the form '(x) text': {answer!r}")
    lead, position, text = parsed_answer
    if position >= len(parsed.options):
        raise ValueError(
            f"answer {answer!r} names option ({option_letter(position)}) but the question has {len(parsed.options)}"
        )
    if text and text != parsed.options[position]:
        raise ValueError(
            f"answer text {text!r} differs from option ({option_letter(position)}) {parsed.options[position]!r}"
        )
    order = list(range(len(parsed.options)))
    rng.shuffle(order)
    options = [parsed.options[i] for i in order]
    new_position = order.index(position)
    return parsed.render(options), f"{lead}({option_letter(new_position)}) {parsed.options[position]}"


def answer_position(target: str, options: list[str]) -> int:
    """Option position named by a target such as ``"(b) cat"``; -1 if it names no option of the list."""
    parsed = parse_answer(target)
    if parsed is None:
        return -1
    _, position, text = parsed
    if position >= len(options) or (text and text != options[position]):
        return -1
    return position


def parse_options(question: str) -> dict[str, str]:
    """``{"a": "happy", "b": "disgust", ...}`` from the inline ``(a) ... (b) ...`` list; ``{}`` without one."""
    parsed = parse_question(question)
    return {} if parsed is None else {option_letter(i): text for i, text in enumerate(parsed.options)}
