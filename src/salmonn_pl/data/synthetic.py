"""A synthetic audio multiple-choice task that a small model can learn, for training demos and studies.

Six classes of synthetic sound (low tone, high tone, white noise, rising chirp, falling chirp, click
train) in 1-3 s clips at 16 kHz, differing in pitch, spectral spread and pitch movement, so Whisper
and BEATs features separate them. Each clip gets SAKURA-style questions: a single-hop one ("Which
sound do you hear? (a) high tone (b) ...") and a multi-hop one asking for an everyday source of such
a sound. Everything is determined by the seed.

``text_prior`` plants a shortcut in the TRAIN split only: in exactly that fraction of train items the
correct option is the same class text (``prior="class"``) or sits at position (a)
(``prior="position"``); the other train items avoid it. Val and test stay balanced, so a model that
learnt the shortcut instead of listening is exposed there.

:func:`write_synthetic_task` writes train/val in the official SALMONN annotation format and test in
the SAKURA release layout (``data/Synthetic/metadata.csv``, ``metadata.json``, ``audio/``), so the
training and the SAKURA evaluation pipelines both run on it unchanged.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from salmonn_pl.data.annotations import DEFAULT_PROMPTS, Annotation, write_annotations
from salmonn_pl.data.multiple_choice import format_options, option_letter
from salmonn_pl.audio.load import SAMPLE_RATE

TRACK = "Synthetic"
SAKURA_COLUMNS = ("file", "attribute_label", "single_instruction", "single_answer", "multi_instruction", "multi_answer")
HOPS = ("single", "multi")
SPLITS = ("train", "val", "test")
N_OPTIONS = 4
MIN_SECONDS, MAX_SECONDS = 1.0, 3.0
_FADE_SECONDS = 0.01

Synthesizer = Callable[[np.random.Generator, int], np.ndarray]


# --------------------------------------------------------------------------- sounds


def _fade(wav: np.ndarray) -> np.ndarray:
    # Raised-cosine edges, so that a clip's onset does not add a broadband click to tonal classes.
    n = min(int(_FADE_SECONDS * SAMPLE_RATE), len(wav) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))
    wav = wav.copy()
    wav[:n] *= ramp
    wav[len(wav) - n :] *= ramp[::-1]
    return wav


def _amplitude(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.3, 0.7))


def _tone(low_hz: float, high_hz: float) -> Synthesizer:
    def synth(rng: np.random.Generator, n: int) -> np.ndarray:
        t = np.arange(n) / SAMPLE_RATE
        freq, phase = rng.uniform(low_hz, high_hz), rng.uniform(0, 2 * np.pi)
        return _fade(_amplitude(rng) * np.sin(2 * np.pi * freq * t + phase))

    return synth


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return _fade(np.clip(_amplitude(rng) * 0.35 * rng.standard_normal(n), -1.0, 1.0))


def _chirp(rising: bool) -> Synthesizer:
    def synth(rng: np.random.Generator, n: int) -> np.ndarray:
        low, high = rng.uniform(200, 500), rng.uniform(3000, 6000)
        start, end = (low, high) if rising else (high, low)
        duration = n / SAMPLE_RATE
        t = np.arange(n) / SAMPLE_RATE
        # Exponential sweep: f(t) = start * (end/start)^(t/T); the phase is its integral.
        ratio = end / start
        phase = 2 * np.pi * start * duration / np.log(ratio) * (ratio ** (t / duration) - 1.0)
        return _fade(_amplitude(rng) * np.sin(phase))

    return synth


def _clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    wav = np.zeros(n)
    period = int(SAMPLE_RATE / rng.uniform(5.0, 15.0))
    click_len = int(0.003 * SAMPLE_RATE)
    click = _amplitude(rng) * np.exp(-np.arange(click_len) / (click_len / 4)) * rng.standard_normal(click_len)
    for start in range(int(rng.integers(0, period)), n - click_len, period):
        wav[start : start + click_len] += click
    return np.clip(wav, -1.0, 1.0)


@dataclass(frozen=True)
class SoundClass:
    """A synthetic sound class: ``name`` answers single-hop questions, ``source`` multi-hop ones."""

    name: str
    source: str
    synthesize: Synthesizer


SOUND_CLASSES: tuple[SoundClass, ...] = (
    SoundClass("low tone", "a foghorn", _tone(150.0, 400.0)),
    SoundClass("high tone", "a referee's whistle", _tone(2000.0, 4000.0)),
    SoundClass("white noise", "a radio tuned between stations", _noise),
    SoundClass("rising chirp", "a slide whistle going up", _chirp(rising=True)),
    SoundClass("falling chirp", "a cartoon bomb falling", _chirp(rising=False)),
    SoundClass("click train", "a ticking clock", _clicks),
)
CLASS_NAMES = tuple(c.name for c in SOUND_CLASSES)
_BY_NAME = {c.name: c for c in SOUND_CLASSES}

QUESTION_STEMS: dict[str, tuple[str, ...]] = {
    "single": (
        "Which sound do you hear in the recording?",
        "Listen to the provided audio clip and identify the kind of sound it contains.",
        "Based on the audio you have heard, which of the following best describes the sound?",
    ),
    "multi": (
        "Which everyday source most plausibly makes a sound like the one in the recording?",
        "Considering the sound in the audio, which of the following would most likely produce it?",
    ),
}


def synthesize(label: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A float64 mono 16 kHz clip of class ``label`` lasting ``seconds``."""
    if label not in _BY_NAME:
        raise ValueError(f"unknown synthetic sound class {label!r} (classes: {list(CLASS_NAMES)})")
    return _BY_NAME[label].synthesize(rng, int(round(seconds * SAMPLE_RATE)))


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class SyntheticQuestion:
    hop: str
    question: str
    answer: str
    options: tuple[str, ...]
    answer_position: int


@dataclass(frozen=True)
class SyntheticClip:
    id: str
    split: str
    label: str
    audio: np.ndarray
    questions: dict[str, SyntheticQuestion]


def _option_text(label: str, hop: str) -> str:
    return label if hop == "single" else _BY_NAME[label].source


def _question(label: str, hop: str, position: int, rng: np.random.Generator) -> SyntheticQuestion:
    others = [name for name in CLASS_NAMES if name != label]
    distractors = [others[i] for i in rng.permutation(len(others))[: N_OPTIONS - 1]]
    labels = distractors[:position] + [label] + distractors[position:]
    options = tuple(_option_text(name, hop) for name in labels)
    stems = QUESTION_STEMS[hop]
    stem = stems[int(rng.integers(len(stems)))]
    answer = f"({option_letter(position)}) {options[position]}"
    return SyntheticQuestion(hop, f"{stem} {format_options(options)}", answer, options, position)


def _balanced(names: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` labels cycling through ``names`` (counts differ by at most one), in random order."""
    labels = [names[i % len(names)] for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]


def _exact_subset(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly round(fraction * n) True entries at random places."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(fraction * n))]] = True
    return mask


def make_split(
    split: Literal["train", "val", "test"],
    n_clips: int,
    seed: int,
    text_prior: float | None = None,
    prior: Literal["class", "position"] = "class",
    prior_class: str = "click train",
) -> list[SyntheticClip]:
    """Clips of one split with their single- and multi-hop questions; deterministic in its arguments.

    Labels are balanced over the classes, and answer positions uniform, except in the train split
    when ``text_prior`` is set (see the module docstring).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if text_prior is not None and not 0.0 <= text_prior <= 1.0:
        raise ValueError(f"text_prior must be in [0, 1], got {text_prior}")
    if prior not in ("class", "position"):
        raise ValueError(f"prior must be 'class' or 'position', got {prior!r}")
    if prior_class not in _BY_NAME:
        raise ValueError(f"prior_class {prior_class!r} is not a class (classes: {list(CLASS_NAMES)})")
    split_code = SPLITS.index(split)
    split_rng = np.random.default_rng([seed, split_code])
    biased = split == "train" and text_prior is not None

    if biased and prior == "class":
        is_prior = _exact_subset(n_clips, text_prior, split_rng)
        others = [name for name in CLASS_NAMES if name != prior_class]
        n_rest = n_clips - int(is_prior.sum())
        rest = _balanced(others, n_rest, split_rng)
        labels = [prior_class if flag else rest.pop() for flag in is_prior]
    else:
        labels = _balanced(CLASS_NAMES, n_clips, split_rng)

    # Position (a) forced on exactly text_prior of the train items (clip x hop), avoided on the rest.
    at_a = _exact_subset(n_clips * len(HOPS), text_prior, split_rng) if biased and prior == "position" else None

    clips = []
    for index, label in enumerate(labels):
        rng = np.random.default_rng([seed, split_code, index])
        audio = synthesize(label, float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), rng)
        questions = {}
        for hop_index, hop in enumerate(HOPS):
            if at_a is None:
                position = int(rng.integers(N_OPTIONS))
            elif at_a[index * len(HOPS) + hop_index]:
                position = 0
            else:
                position = int(rng.integers(1, N_OPTIONS))
            questions[hop] = _question(label, hop, position, rng)
        clips.append(SyntheticClip(f"{split}_{index:05d}", split, label, audio, questions))
    return clips


# --------------------------------------------------------------------------- on disk


@dataclass(frozen=True)
class SyntheticTaskPaths:
    """Where :func:`write_synthetic_task` put things. ``sakura_root`` holds ``data/<track>/`` like a SAKURA release."""

    root: Path
    train_annotation: Path
    val_annotation: Path
    prompt_path: Path
    sakura_root: Path
    track: str
    metadata_csv: Path
    metadata_json: Path
    manifest: Path


def _write_wav(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # 16-bit PCM like the SAKURA release, so both pipelines read the same quantised samples.
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")


def _annotations(clips: Sequence[SyntheticClip], root: Path, hops: Sequence[str]) -> list[Annotation]:
    annotations = []
    for clip in clips:
        relative = f"audio/{clip.split}/{clip.id}.wav"
        _write_wav(root / relative, clip.audio)
        for hop in hops:
            q = clip.questions[hop]
            extra = {"id": f"{clip.id}_{hop}", "track": TRACK, "hop": hop, "label": clip.label}
            annotations.append(Annotation(path=relative, text=q.answer, task="QA", q=q.question, extra=extra))
    return annotations


def _write_sakura_track(clips: Sequence[SyntheticClip], track_dir: Path) -> tuple[Path, Path]:
    rows = []
    for clip in clips:
        file = f"{clip.id}.wav"
        _write_wav(track_dir / "audio" / file, clip.audio)
        single, multi = clip.questions["single"], clip.questions["multi"]
        rows.append((file, clip.label, single.question, single.answer, multi.question, multi.answer))
    csv_path, json_path = track_dir / "metadata.csv", track_dir / "metadata.json"
    # The release's metadata.csv is written by Python's csv module: minimal quoting, CRLF line ends.
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SAKURA_COLUMNS)
        writer.writerows(rows)
    # metadata.json: keyed by the path from the release root, indent 4, raw UTF-8, no final newline.
    by_path = {f"data/{track_dir.name}/audio/{row[0]}": dict(zip(SAKURA_COLUMNS[1:], row[1:])) for row in rows}
    json_path.write_text(json.dumps(by_path, indent=4, ensure_ascii=False), encoding="utf-8")
    return csv_path, json_path


def write_synthetic_task(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    text_prior: float | None = None,
    prior: Literal["class", "position"] = "class",
    prior_class: str = "click train",
    hops: Sequence[str] = HOPS,
) -> SyntheticTaskPaths:
    """Write the synthetic task under ``out_dir``; ``n_*`` count clips (each gives one item per hop).

    Layout: ``train.json`` / ``val.json`` (official annotation format, audio under ``audio/<split>/``,
    paths relative to ``out_dir``), ``prompts.json`` (the official QA prompt), the test split as
    ``data/Synthetic/{metadata.csv,metadata.json,audio/}``, and ``synthetic_task.json`` recording the
    arguments. The same arguments always give byte-identical files.
    """
    unknown = [hop for hop in hops if hop not in HOPS]
    if unknown or not hops:
        raise ValueError(f"hops must be a non-empty subset of {HOPS}, got {list(hops)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    settings = dict(prior=prior, prior_class=prior_class)
    train = make_split("train", n_train, seed, text_prior, **settings)
    val = make_split("val", n_val, seed, **settings)
    test = make_split("test", n_test, seed, **settings)

    train_annotation = write_annotations(root / "train.json", _annotations(train, root, hops))
    val_annotation = write_annotations(root / "val.json", _annotations(val, root, hops))
    prompt_path = root / "prompts.json"
    prompt_path.write_text(json.dumps(DEFAULT_PROMPTS, indent=2) + "\n", encoding="utf-8")
    track_dir = root / "data" / TRACK
    metadata_csv, metadata_json = _write_sakura_track(test, track_dir)

    manifest = root / "synthetic_task.json"
    record = dict(
        n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, text_prior=text_prior, hops=list(hops),
        classes=[{"name": c.name, "source": c.source} for c in SOUND_CLASSES], **settings,
    )
    manifest.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return SyntheticTaskPaths(
        root=root,
        train_annotation=train_annotation,
        val_annotation=val_annotation,
        prompt_path=prompt_path,
        sakura_root=root,
        track=TRACK,
        metadata_csv=metadata_csv,
        metadata_json=metadata_json,
        manifest=manifest,
    )
