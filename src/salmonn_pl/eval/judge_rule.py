"""Judging interface and the rule-based (offline) judge of SAKURA multiple-choice answers.

A SAKURA question lists its options inline: ``"... (a) happy (b) disgust (c) angry (d) fear"`` and
the golden answer is one of them, e.g. ``"(c) angry"``. A response is correct iff it picks exactly
one option and that option is the golden one.

The rule judge decides only what it can be sure of; every other answer is ``unjudged`` (reported,
never counted as correct) and can be resolved by the LLM judge. Precisely, in this order:

1. **Letter selection.** Letter markers are ``(c)`` anywhere; ``c)``, ``C.``, ``C:`` or a lone
   ``c`` at the start of the response; ``answer: c``, ``answer is c.``, ``option is c.`` (the
   letter followed by punctuation or the end, so "the answer is a dog" is no letter); and
   ``option c`` / ``choice c``. Only letters of the listed options count.
   - one distinct letter: that option is selected, unless the words right after the marker name a
     *different* option (``(c) Italian`` when Italian is (a)) -> ``unjudged`` (contradiction);
   - two or more distinct letters -> ``unjudged`` (hedging and explanations look alike).
2. **Text selection** (no letter marker). An option is *named* when its words occur contiguously
   in the response, ignoring case, accents and punctuation, each word allowing morphological
   derivatives: the same stem with an inflectional or derivational suffix (happy/happiness/
   happily, angry/angrily, fear/fearful, meow/meows/meowing, wag/wagging) plus anger for angry;
   never a different word (German is not Germany, French is not France). Chinese, Japanese and
   Korean characters are matched one by one. A named option is *negated* when
   not/no/never/neither/nor/without/unlike, "rather than", "instead of" or "other than" stands in
   the three words before it within the same clause (clauses end at punctuation and at
   but/and/so/yet/however/because/while/although, so "not happy but sad" negates only happy).
   A name inside a longer named option does not count on its own. Options that are common
   function words (the ISO code ``it``) are named only when the whole response is that word or
   it is quoted.
   - exactly one option named and not negated: that option is selected;
   - two or more options named and not negated -> ``unjudged``;
   - options named but all negated -> ``unjudged`` (the model may be paraphrasing its choice);
   - nothing named: ``incorrect`` if the response declines to answer ("I cannot determine",
     "I'm sorry", "unable to", "it is difficult to" ...), since SAKURA counts picking no option as
     wrong; ``incorrect`` too if it picks an option the question does not offer: a letter past
     the listed ones (``(e)``, ``E.``, ``the answer is (e)`` for a four-option question) or, when
     every option belongs to one of the benchmark's closed label sets (animals, emotions, genders,
     languages), another member of that set ("a crow" among pig/dog/hen/sheep, "Spanish" among
     four other languages), not negated; otherwise ``unjudged`` (a paraphrase the rules cannot read).
3. The selected option is ``correct`` iff it is the golden one, otherwise ``incorrect``.

A golden answer that is not one of the listed options (a data error) makes every answer to that
question ``unjudged``, with the reason, rather than stopping an evaluation run.

When the question lists no options (the "no options" probe strips them), a separate options text
can be given; without one only the golden answer is known, so the response is ``correct`` iff it
names the golden answer text (not negated) and ``unjudged`` otherwise.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from salmonn_pl.data.multiple_choice import parse_options

Verdict = Literal["correct", "incorrect", "unjudged"]
VERDICTS: tuple[Verdict, ...] = ("correct", "incorrect", "unjudged")


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge. ``options_text`` holds the option list when ``question`` has none."""

    question: str
    answer: str
    response: str
    options_text: str | None = None


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    explanation: str
    judge: str


class Judge(ABC):
    """Decides whether responses answer SAKURA questions correctly."""

    @property
    @abstractmethod
    def name(self) -> str:
        """Short identifier written next to every judgement (e.g. ``rule`` or ``llm:gpt-4o``)."""

    @abstractmethod
    def judge_many(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        """One judgement per item, in order."""

    def judge(self, question: str, answer: str, response: str, options_text: str | None = None) -> Judgement:
        return self.judge_many([JudgeItem(question, answer, response, options_text)])[0]


# ---------------------------------------------------------------------------------------------
# Text normalisation and word matching


def _strip_latin_accents(text: str) -> str:
    # Only Latin letters lose their accents: decomposing kana or Hangul would change the word.
    text = unicodedata.normalize("NFKC", text)
    return "".join(
        "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)) if ord(ch) < 0x250 else ch
        for ch in text
    )


def _plain(text: str) -> str:
    """Lower case without Latin accents; ``n't`` becomes `` not`` and ``'s`` is dropped."""
    text = _strip_latin_accents(text).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"n't\b", " not", text)
    return re.sub(r"'s\b", "", text)


# Chinese, Japanese and Korean are written without spaces between words, so each character is a
# word of its own and an option matches as a run of characters.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_WORD_OR_BREAK = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[,.;:!?\n()\u3001\u3002\uff0c\uff1f\uff01]")


def normalize_words(text: str) -> list[str]:
    """Lower-case words without Latin accents or punctuation."""
    return _WORD.findall(_plain(text))


# Words that start a new clause: a negation before them does not reach the words after them.
_CLAUSE_STARTERS = {"but", "however", "although", "though", "yet", "so", "because", "while", "whereas", "and"}


def _words_with_clauses(text: str) -> tuple[list[str], list[int]]:
    """Words of ``text`` and, for each, the index of the clause it belongs to."""
    words: list[str] = []
    clauses: list[int] = []
    clause = 0
    for token in _WORD_OR_BREAK.findall(_plain(text)):
        if not token[0].isalnum() or token in _CLAUSE_STARTERS:
            clause += 1
        if token[0].isalnum():
            words.append(token)
            clauses.append(clause)
    return words, clauses


# Suffixes that derive or inflect a word without changing what it names.
_SUFFIXES = ("fulness", "fully", "ness", "ful", "ly", "ing", "ed", "es", "s", "ity", "ment")
# Irregular derivatives of SAKURA labels that suffix rules cannot reach.
_IRREGULAR_ROOTS = {"anger": "angry", "angered": "angry"}
_MIN_STEM = 3


def word_roots(word: str) -> frozenset[str]:
    """The word plus the stems it reduces to by removing one known suffix.

    Two words are the same option word when their root sets intersect. Spelling changes before a
    suffix are undone: happi-ness -> happy, wagg-ing -> wag, amus-ing -> amuse.
    """
    roots = {word, _IRREGULAR_ROOTS.get(word, word)}
    for suffix in _SUFFIXES:
        stem = word[: -len(suffix)]
        if not word.endswith(suffix) or len(stem) < _MIN_STEM:
            continue
        roots.add(stem)
        if stem.endswith("i"):
            roots.add(stem[:-1] + "y")
        if len(stem) > _MIN_STEM and stem[-1] == stem[-2]:
            roots.add(stem[:-1])
        roots.add(stem + "e")
    return frozenset(roots)


def _same_word(a: str, b: str) -> bool:
    return a == b or bool(word_roots(a) & word_roots(b))


_NEGATORS = {"not", "no", "never", "neither", "nor", "without", "unlike"}
_NEGATING_BIGRAMS = {("rather", "than"), ("instead", "of"), ("other", "than")}
_NEGATION_WINDOW = 3
# Options made of such words appear in almost every sentence ("it is a dog"), so they only count
# when they are the whole response or quoted.
_FUNCTION_WORDS = {
    "a", "an", "and", "as", "at", "be", "by", "he", "i", "in", "is", "it", "me", "no", "of",
    "on", "or", "she", "so", "the", "to", "us", "we", "yes",
}
_REFUSALS = re.compile(
    r"\b(i\s+cannot|i\s+can\s*not|i\s+can't|i\s+am\s+unable|i'm\s+unable|unable\s+to|"
    r"cannot\s+(?:be\s+)?determin|can't\s+(?:be\s+)?determin|not\s+possible\s+to|impossible\s+to|"
    r"i'm\s+sorry|i\s+am\s+sorry|it\s+is\s+difficult|it's\s+difficult|i\s+don't\s+know|"
    r"i\s+do\s+not\s+know|no\s+(?:audio|sound)\s+(?:is\s+)?(?:provided|given))",
    re.IGNORECASE,
)


def _is_negated(words: list[str], clauses: list[int], start: int) -> bool:
    window = [
        w for w, c in zip(words[max(0, start - _NEGATION_WINDOW) : start], clauses[max(0, start - _NEGATION_WINDOW) : start])
        if c == clauses[start]
    ]
    if any(w in _NEGATORS for w in window):
        return True
    return any(pair in _NEGATING_BIGRAMS for pair in zip(window, window[1:]))


# ---------------------------------------------------------------------------------------------
# Options and letters


def answer_letter(answer: str, options: dict[str, str]) -> str | None:
    """The golden option's letter: from ``(c) angry`` (checked against option c), else by its text."""
    wanted = normalize_words(re.sub(r"^\s*\([a-z]\)", "", answer, flags=re.IGNORECASE))
    match = re.match(r"\s*\(([a-z])\)", answer, re.IGNORECASE)
    if match and match.group(1).lower() in options:
        letter = match.group(1).lower()
        if wanted and wanted != normalize_words(options[letter]):
            raise ValueError(f"golden answer {answer!r} does not match option ({letter}) {options[letter]!r}")
        return letter
    for letter, text in options.items():
        if normalize_words(text) == wanted:
            return letter
    return None


_LETTER_PATTERNS = (
    re.compile(r"(?<![a-z0-9])\(([a-z])\)", re.IGNORECASE),
    re.compile(r"^\s*([a-z])\s*[).:](?=\s|$)", re.IGNORECASE),
    re.compile(r"^\s*([a-z])\s*$", re.IGNORECASE),
    re.compile(r"\b(?:answer|option|choice)\s*(?:is\s*)?:?\s*\(?([a-z])\)?(?=\s*(?:[).,:;!]|$))", re.IGNORECASE),
    re.compile(r"\b(?:option|choice)\s*\(?([a-z])\b", re.IGNORECASE),
)


# Letter forms that can only be an option letter, for letters the question does not list.
_UNLISTED_LETTER_PATTERNS = (
    re.compile(r"(?<![a-z0-9])\(([a-z])\)", re.IGNORECASE),
    re.compile(r"^\s*([a-z])\s*[).:]?\s*$", re.IGNORECASE),
    re.compile(r"^\s*([a-z])\s*[).:](?=\s|$)", re.IGNORECASE),
    re.compile(r"\b(?:answer|option|choice)\s+(?:is\s+)?:?\s*\(?([a-z])\)?(?=\s*(?:[).,:;!]|$))", re.IGNORECASE),
)
_LAST_PLAUSIBLE_LETTER = "h"


def _unlisted_letters(response: str, options: dict[str, str]) -> set[str]:
    """Option letters past the listed ones (``e``-``h`` for four options) that the response picks."""
    last = max(options)
    found = set()
    for pattern in _UNLISTED_LETTER_PATTERNS:
        for match in pattern.finditer(response):
            letter = match.group(1).lower()
            if last < letter <= _LAST_PLAUSIBLE_LETTER:
                found.add(letter)
    return found


# The benchmark's closed label sets (the single-hop options of its tracks, plus a few labels of the
# same kind). An answer naming a member that the question does not offer picks no listed option.
# Only kinds whose members are never paraphrases of one another.
LABEL_SETS: dict[str, frozenset[str]] = {
    "animal": frozenset({"cat", "cow", "crow", "dog", "frog", "hen", "pig", "rooster", "sheep", "horse", "duck", "goat"}),
    "emotion": frozenset({"angry", "disgust", "fear", "happy", "sad", "neutral", "surprise"}),
    "gender": frozenset({"male", "female"}),
    "language": frozenset({"chinese", "english", "french", "german", "italian", "japanese", "korean", "spanish",
                           "portuguese", "russian", "arabic", "dutch", "hindi"}),
}


def _unoffered_labels(response: str, options: dict[str, str]) -> set[str]:
    """Members of the options' label set that the response names (not negated) but the question
    does not offer; empty when the options are not all of one label set."""
    option_words = [normalize_words(text) for text in options.values()]
    if not all(len(words) == 1 for words in option_words):
        return set()
    offered = {words[0] for words in option_words}
    for members in LABEL_SETS.values():
        if all(any(_same_word(word, member) for member in members) for word in offered):
            others = {m: m for m in members if not any(_same_word(m, word) for word in offered)}
            return {m.letter for m in _find_mentions(response, others) if not m.negated}
    return set()


def _letter_markers(response: str, options: dict[str, str]) -> list[tuple[str, int]]:
    """(letter, end offset) of every letter marker naming a listed option."""
    found = []
    for pattern in _LETTER_PATTERNS:
        for match in pattern.finditer(response):
            letter = match.group(1).lower()
            if letter in options:
                found.append((letter, match.end()))
    return found


# ---------------------------------------------------------------------------------------------
# Naming options in free text


_QUOTED = re.compile(r"[\"'\u201c\u2018]([^\"'\u201d\u2019]+)[\"'\u201d\u2019]")


@dataclass(frozen=True)
class _Mention:
    letter: str
    start: int
    stop: int
    negated: bool


def _find_mentions(response: str, options: dict[str, str]) -> list[_Mention]:
    words, clauses = _words_with_clauses(response)
    quoted = {w for q in _QUOTED.findall(response) for w in normalize_words(q)}
    mentions = []
    for letter, text in options.items():
        option_words = normalize_words(text)
        if not option_words:
            continue
        if len(option_words) == 1 and option_words[0] in _FUNCTION_WORDS:
            if words == option_words or option_words[0] in quoted:
                mentions.append(_Mention(letter, 0, len(words), False))
            continue
        n = len(option_words)
        for start in range(len(words) - n + 1):
            if all(_same_word(words[start + k], option_words[k]) for k in range(n)):
                mentions.append(_Mention(letter, start, start + n, _is_negated(words, clauses, start)))
    # "male" inside "female" never matches (whole words), but a short option inside a longer
    # option's span ("tail" inside "wagging its tail") must not count as a second choice.
    return [
        m for m in mentions
        if not any(o is not m and o.letter != m.letter and o.start <= m.start and m.stop <= o.stop
                   and (o.stop - o.start) > (m.stop - m.start) for o in mentions)
    ]


def _starts_with_option(text: str, options: dict[str, str]) -> set[str]:
    words = normalize_words(text)
    hits = set()
    for letter, option_text in options.items():
        option_words = normalize_words(option_text)
        if option_words and len(words) >= len(option_words) and all(
            _same_word(w, o) for w, o in zip(words, option_words)
        ):
            hits.add(letter)
    return hits


# ---------------------------------------------------------------------------------------------


def _format(options: dict[str, str], letters) -> str:
    return ", ".join(f"({x}) {options[x]}" for x in sorted(letters))


@dataclass(frozen=True)
class _Selection:
    letter: str | None  # the option the response selects, if it selects exactly one
    reason: str
    verdict_without_letter: Verdict = "unjudged"


class RuleJudge(Judge):
    """Offline rule-based judge (the default); see the module docstring for the exact rules."""

    @property
    def name(self) -> str:
        return "rule"

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        return [self._judge_one(item) for item in items]

    def _judge_one(self, item: JudgeItem) -> Judgement:
        options = parse_options(item.question) or parse_options(item.options_text or "")
        if not options:
            return self._judge_without_options(item)
        try:
            golden = answer_letter(item.answer, options)
        except ValueError as err:
            return Judgement("unjudged", f"cannot judge: {err}", self.name)
        if golden is None:
            reason = f"cannot judge: golden answer {item.answer!r} is not one of the options {options}"
            return Judgement("unjudged", reason, self.name)
        selection = _select(item.response, options)
        if selection.letter is None:
            return Judgement(selection.verdict_without_letter, selection.reason, self.name)
        verdict: Verdict = "correct" if selection.letter == golden else "incorrect"
        return Judgement(verdict, f"{selection.reason}; golden is ({golden}) {options[golden]}", self.name)

    def _judge_without_options(self, item: JudgeItem) -> Judgement:
        golden_text = re.sub(r"^\s*\([a-z]\)\s*", "", item.answer, flags=re.IGNORECASE)
        mentions = _find_mentions(item.response, {"golden": golden_text})
        if any(not m.negated for m in mentions):
            return Judgement("correct", f"no options listed; names the golden answer {golden_text!r}", self.name)
        return Judgement("unjudged", f"no options listed and the golden answer {golden_text!r} is not named", self.name)


def _select(response: str, options: dict[str, str]) -> _Selection:
    """Which option the response selects, following the module docstring's rules in order."""
    markers = _letter_markers(response, options)
    letters = {letter for letter, _ in markers}
    if len(letters) > 1:
        return _Selection(None, f"names several option letters: {_format(options, letters)}")
    if len(letters) == 1:
        letter = letters.pop()
        for _, end in markers:
            following = re.split(r"[\n.;,!?]", response[end:], maxsplit=1)[0]
            named = _starts_with_option(following, options)
            if named and letter not in named:
                return _Selection(None, f"letter ({letter}) contradicts the text after it: {following.strip()!r}")
        return _Selection(letter, f"selects ({letter}) {options[letter]} by letter")

    mentions = _find_mentions(response, options)
    affirmed = {m.letter for m in mentions if not m.negated}
    unlisted = _unlisted_letters(response, options)
    if affirmed and unlisted:
        letters = ", ".join(f"({x})" for x in sorted(unlisted))
        return _Selection(None, f"picks {letters}, which the question does not offer, and names {_format(options, affirmed)}")
    if len(affirmed) == 1:
        letter = affirmed.pop()
        return _Selection(letter, f"names ({letter}) {options[letter]}")
    if len(affirmed) > 1:
        return _Selection(None, f"names several options: {_format(options, affirmed)}")
    if mentions:
        return _Selection(None, f"only negates options: {_format(options, {m.letter for m in mentions})}")
    if _REFUSALS.search(response.replace("\u2019", "'")):
        return _Selection(None, "declines to choose an option", verdict_without_letter="incorrect")
    if unlisted:
        letters = ", ".join(f"({x})" for x in sorted(unlisted))
        return _Selection(None, f"picks {letters}, which the question does not offer", verdict_without_letter="incorrect")
    unoffered = _unoffered_labels(response, options)
    if unoffered:
        return _Selection(None, f"names {', '.join(sorted(unoffered))}, which the question does not offer",
                          verdict_without_letter="incorrect")
    return _Selection(None, "names no option")
