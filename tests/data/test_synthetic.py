"""The synthetic audio multiple-choice task: determinism, learnable classes, text prior, files on disk."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.data.annotation_datamodule import AnnotationDataModule
from salmonn_pl.data.annotations import read_annotations
from salmonn_pl.data.multiple_choice import parse_answer, parse_question
from salmonn_pl.data.synthetic import (
    CLASS_NAMES,
    HOPS,
    MAX_SECONDS,
    MIN_SECONDS,
    N_OPTIONS,
    SOUND_CLASSES,
    TRACK,
    make_split,
    synthesize,
    write_synthetic_task,
)

SR = 16000


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _flatness(wav: np.ndarray) -> float:
    """Spectral flatness: near 1 for white noise, near 0 for a pure tone."""
    power = np.abs(np.fft.rfft(wav)) ** 2 + 1e-20
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def _centroid(wav: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(wav)) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1 / SR)
    return float((freqs * power).sum() / power.sum())


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> object:
    return write_synthetic_task(tmp_path_factory.mktemp("synthetic"), n_train=12, n_val=6, n_test=12, seed=5)


def test_same_seed_gives_byte_identical_files(task, tmp_path: Path):
    again = write_synthetic_task(tmp_path / "again", n_train=12, n_val=6, n_test=12, seed=5)
    assert _files(task.root) == _files(again.root)
    other = write_synthetic_task(tmp_path / "other", n_train=12, n_val=6, n_test=12, seed=6)
    first, second = _files(task.root), _files(other.root)
    assert first.keys() == second.keys()
    assert any(first[k] != second[k] for k in first if k.endswith(".wav"))


def test_clips_are_short_finite_mono_16k(task):
    wavs = sorted(task.root.rglob("*.wav"))
    assert len(wavs) == 12 + 6 + 12
    for path in wavs:
        info = sf.info(str(path))
        assert info.samplerate == SR and info.channels == 1 and info.subtype == "PCM_16"
        assert MIN_SECONDS - 1e-3 <= info.duration <= MAX_SECONDS + 1e-3
        audio, _ = sf.read(str(path))
        assert np.isfinite(audio).all() and 0.05 < np.abs(audio).max() <= 1.0


def test_tone_and_chirp_classes_separate_on_spectral_features():
    for seed in range(8):
        rng = lambda: np.random.default_rng(seed)  # noqa: E731 - a fresh generator per class
        low, high = synthesize("low tone", 1.5, rng()), synthesize("high tone", 1.5, rng())
        assert _centroid(low) < 500 < 1500 < _centroid(high)
        for rising in (True, False):
            chirp = synthesize("rising chirp" if rising else "falling chirp", 2.0, rng())
            head, tail = _centroid(chirp[: len(chirp) // 4]), _centroid(chirp[-len(chirp) // 4 :])
            assert (head < tail) == rising and max(head, tail) > 3 * min(head, tail)
        noise, tone = synthesize("white noise", 1.0, rng()), synthesize("high tone", 1.0, rng())
        assert _flatness(noise) > 0.3 > 1e-3 > _flatness(tone)
        clicks = synthesize("click train", 1.0, rng())
        assert np.mean(np.abs(clicks) > 1e-6) < 0.25 < np.mean(np.abs(noise) > 1e-6)  # mostly silence between clicks


def test_questions_are_sakura_style_and_answers_name_the_label():
    for split in ("train", "val", "test"):
        for clip in make_split(split, 18, seed=1):
            for hop in HOPS:
                q = clip.questions[hop]
                parsed = parse_question(q.question)
                lead, position, text = parse_answer(q.answer)
                assert parsed.render() == q.question and len(parsed.options) == N_OPTIONS
                assert len(set(parsed.options)) == N_OPTIONS and parsed.options[position] == text
                source = next(c.source for c in SOUND_CLASSES if c.name == clip.label)
                expected = clip.label if hop == "single" else source
                assert text == expected and position == q.answer_position


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.8, 1.0])
def test_class_prior_holds_in_exactly_that_fraction_of_train_items(fraction):
    train = make_split("train", 40, seed=2, text_prior=fraction, prior="class", prior_class="high tone")
    labels = Counter(clip.label for clip in train)
    assert labels["high tone"] == round(fraction * 40)
    answers = [parse_answer(c.questions["single"].answer)[2] for c in train]
    assert answers.count("high tone") == round(fraction * 40)
    for split in ("val", "test"):  # never biased
        clips = make_split(split, 36, seed=2, text_prior=fraction, prior_class="high tone")
        counts = Counter(clip.label for clip in clips)
        assert set(counts) == set(CLASS_NAMES) and max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("fraction", [0.25, 0.9])
def test_position_prior_holds_in_exactly_that_fraction_of_train_items(fraction):
    train = make_split("train", 30, seed=3, text_prior=fraction, prior="position")
    positions = [clip.questions[hop].answer_position for clip in train for hop in HOPS]
    assert positions.count(0) == round(fraction * len(positions))
    assert set(positions) == set(range(N_OPTIONS))
    unbiased = [c.questions[h].answer_position for c in make_split("train", 30, seed=3) for h in HOPS]
    assert abs(unbiased.count(0) / len(unbiased) - 1 / N_OPTIONS) < 0.15


def test_sakura_layout_matches_the_release_format(task):
    track_dir = task.sakura_root / "data" / TRACK
    assert task.metadata_csv == track_dir / "metadata.csv"
    raw = task.metadata_csv.read_bytes()
    assert raw.count(b"\r\n") == 13 and raw.endswith(b"\r\n")
    with task.metadata_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if SAKURA_MINI.is_dir():
        with (SAKURA_MINI / "data" / "Animal" / "metadata.csv").open(newline="", encoding="utf-8") as handle:
            assert list(rows[0]) == next(csv.reader(handle))
    by_path = json.loads(task.metadata_json.read_text(encoding="utf-8"))
    assert list(by_path) == [f"data/{TRACK}/audio/{row['file']}" for row in rows]
    for row in rows:
        assert (track_dir / "audio" / row["file"]).is_file()
        assert by_path[f"data/{TRACK}/audio/{row['file']}"] == {k: v for k, v in row.items() if k != "file"}
        for hop in HOPS:
            parsed = parse_question(row[f"{hop}_instruction"])
            _, position, text = parse_answer(row[f"{hop}_answer"])
            assert parsed.options[position] == text
        assert row["attribute_label"] in CLASS_NAMES


def test_annotations_hold_one_item_per_clip_and_hop(task):
    train = read_annotations(task.train_annotation)
    assert len(train) == 12 * len(HOPS) and len(read_annotations(task.val_annotation)) == 6 * len(HOPS)
    assert len({a.extra["id"] for a in train}) == len(train)
    for entry in train:
        assert entry.task == "QA" and (task.root / entry.path).is_file()
        assert entry.extra["hop"] in HOPS and entry.extra["label"] in CLASS_NAMES


def test_annotation_datamodule_batches_the_synthetic_task(task):
    module = AnnotationDataModule(
        train_annotation=str(task.train_annotation),
        val_annotation=str(task.val_annotation),
        prompt_path=str(task.prompt_path),
        batch_size=3,
        shuffle_options=True,
        seed=0,
    )
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["spectrogram"].shape == (3, 80, 3000) and batch["spectrogram"].dtype == torch.float32
    assert batch["raw_wav"].dtype == torch.float64 and batch["raw_wav"].shape[1] == int(batch["wav_lengths"].max())
    assert torch.equal(batch["padding_mask"].sum(1), batch["raw_wav"].shape[1] - batch["wav_lengths"])
    for prompt, text, meta in zip(batch["prompt"], batch["text"], batch["meta"]):
        assert prompt.startswith("USER: <Speech><SpeechHere></Speech> ") and prompt.endswith("\nASSISTANT:")
        asked = parse_question(meta["instruction"])
        _, position, answer = parse_answer(text)
        assert meta["instruction"] in prompt and asked.options[position] == answer
    val = next(iter(module.val_dataloader()))
    assert val["id"] == [a.extra["id"] for a in read_annotations(task.val_annotation)[:3]]


def test_bad_arguments_are_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="text_prior"):
        make_split("train", 4, seed=0, text_prior=1.5)
    with pytest.raises(ValueError, match="prior_class 'bell'"):
        make_split("train", 4, seed=0, prior_class="bell")
    with pytest.raises(ValueError, match="hops"):
        write_synthetic_task(tmp_path, 1, 1, 1, hops=("triple",))


def test_sakura_reader_and_datamodule_read_the_test_split(task):
    from salmonn_pl.data.datamodule import SakuraDataModule
    from salmonn_pl.data.sakura import read_sakura

    questions, skipped = read_sakura(task.sakura_root, tracks=[TRACK])
    assert not skipped and len(questions) == 12 * len(HOPS)
    with task.metadata_csv.open(newline="", encoding="utf-8") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    for question in questions:
        row = rows[question.file]
        assert question.label == row["attribute_label"] and question.answer == row[f"{question.hop}_answer"]
        assert question.instruction == row[f"{question.hop}_instruction"]
    module = SakuraDataModule(root=str(task.sakura_root), tracks=[TRACK], batch_size=4)
    module.setup("test")
    batch = next(iter(module.test_dataloader()))
    assert batch["spectrogram"].shape == (4, 80, 3000)
