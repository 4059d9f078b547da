"""The official SALMONN annotation format, its prompt files, and SAKURA-style multiple-choice items.

An annotation file is ``{"annotation": [{"path", "text", "task", "Q"?, "expand_wav"?, ...}]}``
(bytedance/SALMONN ``dataset.py``). A prompt file maps each task to a list of templates holding
``<SpeechHere>`` (``prompts.json``); templates are wrapped in the prompt template
``"USER: {}\\nASSISTANT:"`` and, when they hold ``{}``, filled with the entry's question ``Q``,
exactly as ``SALMONN.forward`` does.

Multiple-choice questions follow SAKURA: ``"<stem> (a) x (b) y (c) z"`` with answers ``"(b) y"``
(grammar in :mod:`salmonn_pl.data.multiple_choice`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from salmonn_pl.audio.load import ChannelPolicy, load_audio
from salmonn_pl.data.collate import SPEECH_PLACEHOLDER
from salmonn_pl.data.multiple_choice import format_options, option_letter, parse_answer, parse_question, shuffle_options

PROMPT_TEMPLATE = "USER: {}\nASSISTANT:"
# The official prompts.json used for question answering: the question goes where "{}" is.
DEFAULT_PROMPTS: dict[str, list[str]] = {"QA": ["<Speech><SpeechHere></Speech> {}"]}
# Official dataset.py: entries without "task" are ASR, entries without "Q" have an empty question.
DEFAULT_TASK = "asr"
# Official dataset.py puts 0.1 s of silence between a clip and each of its "expand_wav" clips.
EXPAND_WAV_GAP_SAMPLES = 1600

_KNOWN_KEYS = ("path", "text", "task", "Q", "expand_wav")


class AnnotationError(ValueError):
    """A malformed annotation or prompt file; the message names the file and the entry."""


# --------------------------------------------------------------------------- annotation files


@dataclass
class Annotation:
    """One entry of an official annotation file. ``extra`` keeps any other keys (written back as is)."""

    path: str
    text: str
    task: str = DEFAULT_TASK
    q: str | None = None
    expand_wav: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": self.path, "text": self.text, "task": self.task}
        if self.q is not None:
            entry["Q"] = self.q
        if self.expand_wav:
            entry["expand_wav"] = list(self.expand_wav)
        entry.update(self.extra)
        return entry


def _parse_entry(entry: Any, source: Path, index: int) -> Annotation:
    where = f"{source}: annotation[{index}]"
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where} is a {type(entry).__name__}, expected an object with 'path' and 'text'")
    for key in ("path", "text"):
        if key not in entry:
            raise AnnotationError(f"{where} has no '{key}' field (fields present: {sorted(entry)})")
    for key in ("path", "text", "task", "Q"):
        if key in entry and not isinstance(entry[key], str):
            raise AnnotationError(f"{where}: field '{key}' must be a string, got {type(entry[key]).__name__}")
    expand_wav = entry.get("expand_wav", [])
    if not isinstance(expand_wav, list) or not all(isinstance(p, str) for p in expand_wav):
        raise AnnotationError(f"{where}: field 'expand_wav' must be a list of paths")
    return Annotation(
        path=entry["path"],
        text=entry["text"],
        task=entry.get("task", DEFAULT_TASK),
        q=entry.get("Q"),
        expand_wav=list(expand_wav),
        extra={k: v for k, v in entry.items() if k not in _KNOWN_KEYS},
    )


def read_annotations(path: str | Path) -> list[Annotation]:
    """Read an official ``{"annotation": [...]}`` file."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"annotation file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"annotation file {path} is not valid JSON: {err}") from None
    if not isinstance(content, dict) or not isinstance(content.get("annotation"), list):
        raise AnnotationError(f"annotation file {path} must hold an object with an 'annotation' list")
    return [_parse_entry(entry, path, i) for i, entry in enumerate(content["annotation"])]


def write_annotations(path: str | Path, annotations: Iterable[Annotation]) -> Path:
    """Write annotations in the official format (UTF-8, readable by the official ``SALMONNDataset``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"annotation": [a.to_json() for a in annotations]}
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- prompts


def wrap_prompts(
    raw_prompts: Mapping[str, Sequence[str]], prompt_template: str = PROMPT_TEMPLATE, source: str = "prompts"
) -> dict[str, list[str]]:
    """Wrap each task's templates in ``prompt_template``, like ``SALMONN.__init__``.

    Templates without ``<SpeechHere>`` are dropped, as the official code does; a task left with no
    template, or a template with several ``<SpeechHere>``, is an error.
    """
    if prompt_template.count("{}") != 1:
        raise AnnotationError(f"prompt_template {prompt_template!r} must hold exactly one '{{}}'")
    wrapped: dict[str, list[str]] = {}
    for task, templates in raw_prompts.items():
        if isinstance(templates, str) or not isinstance(templates, Sequence):
            raise AnnotationError(f"{source}: task '{task}' must map to a list of prompt templates")
        kept = []
        for i, template in enumerate(templates):
            if not isinstance(template, str):
                raise AnnotationError(f"{source}: {task}[{i}] is not a string")
            count = template.count(SPEECH_PLACEHOLDER)
            if count > 1:
                raise AnnotationError(f"{source}: {task}[{i}] holds {SPEECH_PLACEHOLDER} {count} times: {template!r}")
            if count == 1:
                wrapped_template = prompt_template.format(template)
                try:
                    fill_prompt(wrapped_template, "")
                except (IndexError, KeyError, ValueError):
                    raise AnnotationError(
                        f"{source}: {task}[{i}] has braces other than one '{{}}' for the question: {template!r}"
                    ) from None
                kept.append(wrapped_template)
        if not kept:
            raise AnnotationError(f"{source}: task '{task}' has no template containing {SPEECH_PLACEHOLDER}")
        wrapped[task] = kept
    return wrapped


def load_prompts(path: str | Path | None, prompt_template: str = PROMPT_TEMPLATE) -> dict[str, list[str]]:
    """Read an official prompt file (task -> templates) and wrap it; ``None`` gives the QA prompt."""
    if path is None:
        return wrap_prompts(DEFAULT_PROMPTS, prompt_template, source="default QA prompts")
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"prompt file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"prompt file {path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise AnnotationError(f"prompt file {path} must hold an object mapping task -> list of templates")
    return wrap_prompts(raw, prompt_template, source=str(path))


def fill_prompt(prompt: str, question: str | None) -> str:
    """Put the question into a wrapped prompt, as ``SALMONN.forward`` does (``p.format(q)`` if ``{}`` is in p)."""
    if "{}" in prompt:
        return prompt.format(question or "")
    return prompt


# --------------------------------------------------------------------------- multiple choice

@dataclass(frozen=True)
class MCItem:
    """A SAKURA-style multiple-choice item about one audio clip."""

    audio_path: str
    label: str
    question: str
    answer: str
    options: tuple[str, ...]

    @property
    def answer_position(self) -> int:
        return self.options.index(self.label)

    def to_annotation(self, task: str = "QA", **extra: Any) -> Annotation:
        return Annotation(
            path=self.audio_path, text=self.answer, task=task, q=self.question, extra={"label": self.label, **extra}
        )


def build_mc_items(
    labelled: Sequence[tuple[str, str]],
    label_set: Sequence[str],
    question_templates: Sequence[str],
    n_options: int = 4,
    seed: int = 0,
) -> list[MCItem]:
    """Turn (audio path, label) pairs into SAKURA-style items ``"<stem> (a) x (b) y ..."`` / ``"(c) y"``.

    Each item's options are its label plus ``n_options - 1`` other labels from ``label_set``, in random
    order; the stem is one of ``question_templates``. The result depends only on the inputs and ``seed``.
    """
    labels = list(dict.fromkeys(label_set))
    if not 2 <= n_options <= len(labels):
        raise ValueError(f"n_options={n_options} needs 2 <= n_options <= {len(labels)} (the number of distinct labels)")
    if n_options > 26:
        raise ValueError(f"n_options={n_options}: options are lettered (a)..(z)")
    if not question_templates:
        raise ValueError("question_templates is empty")
    rng = random.Random(seed)
    items = []
    for index, (audio_path, label) in enumerate(labelled):
        if label not in labels:
            raise ValueError(f"item {index} ({audio_path}): label {label!r} is not in label_set {labels}")
        distractors = rng.sample([other for other in labels if other != label], n_options - 1)
        options = [label, *distractors]
        rng.shuffle(options)
        stem = rng.choice(list(question_templates))
        answer = f"({option_letter(options.index(label))}) {label}"
        items.append(MCItem(audio_path, label, f"{stem} {format_options(options)}", answer, tuple(options)))
    return items


# --------------------------------------------------------------------------- dataset


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A generator that depends only on (seed, epoch, index): the same draws in any worker and any run."""
    return random.Random(int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]))


class AnnotationDataset(Dataset):
    """Examples (the project's data contract) from an official annotation file.

    Each item draws its prompt template (the official ``random.choice``) and, with
    ``shuffle_options``, a new option order from a generator seeded by (seed, epoch, index), so an
    epoch is reproducible whatever the number of workers. Relative audio paths are resolved against
    ``audio_root`` (default: the annotation file's folder). An entry's optional ``"id"`` field names
    its example; otherwise the audio path does, as in the official dataset. Other extra fields go to
    the example's ``meta``.
    """

    def __init__(
        self,
        annotation_path: str | Path,
        prompts: Mapping[str, Sequence[str]] | None = None,
        audio_root: str | Path | None = None,
        seed: int = 0,
        shuffle_options: bool = False,
        channel: ChannelPolicy = "first",
    ) -> None:
        self.annotation_path = Path(annotation_path)
        self.annotations = read_annotations(self.annotation_path)
        self.prompts = {task: list(t) for task, t in (prompts or load_prompts(None)).items()}
        self.audio_root = Path(audio_root) if audio_root is not None else self.annotation_path.parent
        self.seed = seed
        self.shuffle_options = shuffle_options
        self.channel = channel
        self.epoch = 0
        self._check()

    def _check(self) -> None:
        for index, ann in enumerate(self.annotations):
            where = f"{self.annotation_path}: annotation[{index}]"
            if ann.task not in self.prompts:
                raise AnnotationError(
                    f"{where} has task '{ann.task}', which has no prompt (tasks: {sorted(self.prompts)})"
                )
            for path in [ann.path, *ann.expand_wav]:
                if not self.resolve(path).is_file():
                    raise AnnotationError(f"{where}: audio file {self.resolve(path)} does not exist")

    def resolve(self, path: str) -> Path:
        return self.audio_root / path

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.annotations)

    def _audio(self, ann: Annotation) -> np.ndarray:
        audio = load_audio(self.resolve(ann.path), channel=self.channel)
        for extra in ann.expand_wav:
            gap = np.zeros(EXPAND_WAV_GAP_SAMPLES, dtype=np.float64)
            audio = np.concatenate([audio, gap, load_audio(self.resolve(extra), channel=self.channel)])
        return audio

    def __getitem__(self, index: int) -> dict[str, Any]:
        ann = self.annotations[index]
        rng = item_rng(self.seed, self.epoch, index)
        question, text = ann.q, ann.text
        options_shuffled = False
        if self.shuffle_options and question is not None and parse_question(question) and parse_answer(text):
            try:
                question, text = shuffle_options(question, text, rng)
                options_shuffled = True
            except ValueError as err:
                raise AnnotationError(f"{self.annotation_path}: annotation[{index}]: {err}") from None
        prompt = fill_prompt(rng.choice(self.prompts[ann.task]), question)
        extra = {key: value for key, value in ann.extra.items() if key != "id"}
        meta = {
            **extra,
            "task": ann.task,
            "instruction": question,
            "answer": text,
            "source": str(self.annotation_path),
            "index": index,
            "options_shuffled": options_shuffled,
        }
        example_id = str(ann.extra.get("id", ann.path))
        return {"id": example_id, "audio": self._audio(ann), "prompt": prompt, "text": text, "meta": meta}


class EpochSampler(Sampler[int]):
    """Visits every index once per epoch, in a (seed, epoch)-seeded order when ``shuffle``.

    Lightning calls ``set_epoch`` at the start of each epoch; it is forwarded to the dataset so that
    per-item random choices (prompt template, option order) change from epoch to epoch.
    """

    def __init__(self, dataset: AnnotationDataset, shuffle: bool = True, seed: int = 0) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        order = list(range(len(self.dataset)))
        if self.shuffle:
            random.Random(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])).shuffle(order)
        return iter(order)
