"""Official SALMONN annotation format, prompt files, the annotation dataset and multiple-choice items."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.data.annotations import (
    EXPAND_WAV_GAP_SAMPLES,
    SPEECH_PLACEHOLDER,
    Annotation,
    AnnotationDataset,
    AnnotationError,
    EpochSampler,
    build_mc_items,
    load_prompts,
    read_annotations,
    write_annotations,
)
from salmonn_pl.data.multiple_choice import parse_answer, parse_question, shuffle_options
from salmonn_pl.audio.load import prepare_official

TRACKS = ("Animal", "Emotion", "Gender", "Language")
needs_sakura_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no SAKURA mini set at {SAKURA_MINI}")


def _sakura_items() -> list[tuple[str, str, str]]:
    """(track/hop, question, answer) for every question of the SAKURA mini set."""
    items = []
    for track in TRACKS:
        with (SAKURA_MINI / "data" / track / "metadata.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                for hop in ("single", "multi"):
                    items.append((f"{track}/{hop}", row[f"{hop}_instruction"], row[f"{hop}_answer"]))
    return items


def _write_wav(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, 16000, subtype="PCM_16")
    return path


@pytest.fixture
def wav_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, seconds in [("a.wav", 0.5), ("b.wav", 1.2), ("c.wav", 0.3)]:
        _write_wav(tmp_path / "clips" / name, 0.1 * rng.standard_normal(int(seconds * 16000)))
    return tmp_path


# --------------------------------------------------------------------------- file format


def test_annotation_file_round_trip_keeps_official_keys_and_extras(tmp_path: Path):
    annotations = [
        Annotation(path="clips/a.wav", text="(b) dog", task="QA", q="Which animal? (a) cat (b) dog"),
        Annotation(path="/abs/b.wav", text="hello world", task="asr"),
        Annotation("clips/c.wav", "x", "QA", q="", expand_wav=["clips/a.wav"], extra={"label": "dög", "hop": 2}),
    ]
    path = write_annotations(tmp_path / "sub" / "ann.json", annotations)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert list(raw) == ["annotation"]
    first = {"path": "clips/a.wav", "text": "(b) dog", "task": "QA", "Q": "Which animal? (a) cat (b) dog"}
    assert raw["annotation"][0] == first
    assert "Q" not in raw["annotation"][1]
    assert raw["annotation"][2]["label"] == "dög" and raw["annotation"][2]["expand_wav"] == ["clips/a.wav"]
    assert read_annotations(path) == annotations


def test_missing_task_and_question_take_official_defaults(tmp_path: Path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"annotation": [{"path": "x.wav", "text": "t"}]}))
    (entry,) = read_annotations(path)
    assert entry.task == "asr" and entry.q is None


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"annotation": [{"path": "a.wav", "text": "t"}, {"path": "b.wav"}]}, ["annotation[1]", "'text'"]),
        ({"annotation": [{"text": "t"}]}, ["annotation[0]", "'path'"]),
        ({"annotation": [{"path": "a.wav", "text": 3}]}, ["annotation[0]", "'text'", "string"]),
        ({"annotation": ["a.wav"]}, ["annotation[0]", "str"]),
        ({"items": []}, ["'annotation' list"]),
    ],
)
def test_malformed_annotation_names_file_and_entry(tmp_path: Path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    assert str(path) in str(err.value)
    for fragment in expected:
        assert fragment in str(err.value)


def test_unreadable_annotation_files_are_named(tmp_path: Path):
    with pytest.raises(AnnotationError, match="does not exist"):
        read_annotations(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="broken.json.*not valid JSON"):
        read_annotations(tmp_path / "broken.json")


def test_missing_audio_and_unknown_task_name_file_and_entry(wav_dir: Path):
    ann = write_annotations(
        wav_dir / "ann.json",
        [Annotation("clips/a.wav", "t", "QA", "q"), Annotation("clips/missing.wav", "t", "QA", "q")],
    )
    with pytest.raises(AnnotationError) as err:
        AnnotationDataset(ann)
    assert str(ann) in str(err.value) and "annotation[1]" in str(err.value)
    assert str(wav_dir / "clips" / "missing.wav") in str(err.value)

    ann = write_annotations(wav_dir / "ann2.json", [Annotation("clips/a.wav", "t", "caption")])
    with pytest.raises(AnnotationError, match=r"annotation\[0\] has task 'caption'.*tasks: \['QA'\]"):
        AnnotationDataset(ann)


# --------------------------------------------------------------------------- prompts


def test_golden_prompt_file_reproduces_the_official_prompts(golden):
    config = yaml.safe_load((golden.path / "config.yaml").read_text())["model"]
    prompts = load_prompts(golden.path / config["prompt_path"], config["prompt_template"])
    (template,) = prompts["QA"]
    for wav in golden.wavs:
        entry = golden.variant["wavs"][wav["name"]]
        assert template.format(wav["instruction"]) == entry["prompt"]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"QA": ["no placeholder {}"]}, "no template containing <SpeechHere>"),
        ({"QA": ["<SpeechHere> <SpeechHere> {}"]}, "2 times"),
        ({"QA": ["<SpeechHere> {} then {other}"]}, "braces"),
        ({"QA": "<SpeechHere> {}"}, "list of prompt templates"),
    ],
)
def test_bad_prompt_files_are_named(tmp_path: Path, raw, fragment):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(AnnotationError) as err:
        load_prompts(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_templates_without_placeholder_are_dropped_like_the_official_loader(tmp_path: Path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"QA": ["plain text", "<Speech><SpeechHere></Speech> {}"]}))
    assert load_prompts(path) == {"QA": ["USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"]}


# --------------------------------------------------------------------------- dataset


def test_dataset_examples_follow_the_data_contract(golden, tmp_path: Path):
    wavs = golden.wavs
    ann = write_annotations(
        tmp_path / "ann.json",
        [Annotation(w["file"], w["sakura_answer"], "QA", w["instruction"], extra={"name": w["name"]}) for w in wavs],
    )
    dataset = AnnotationDataset(ann, load_prompts(golden.path / "prompts.json"), audio_root=golden.path)
    assert len(dataset) == len(wavs)
    for index, wav in enumerate(wavs):
        example = dataset[index]
        assert set(example) == {"id", "audio", "prompt", "text", "meta"}
        audio = example["audio"]
        assert audio.dtype == np.float64 and audio.ndim == 1
        np.testing.assert_array_equal(audio, golden.file_samples(index)[:, 0])  # channel 0 of a stereo file
        assert len(prepare_official(audio)) == int(golden[f"wav{index}.num_samples"])
        assert example["prompt"] == golden.variant["wavs"][wav["name"]]["prompt"]
        assert example["prompt"].count(SPEECH_PLACEHOLDER) == 1
        assert example["text"] == wav["sakura_answer"] and example["id"] == wav["file"]
        assert example["meta"]["name"] == wav["name"] and example["meta"]["instruction"] == wav["instruction"]
        json.dumps(example["meta"])


def test_expand_wav_appends_clips_after_official_silence(wav_dir: Path):
    entry = Annotation("clips/a.wav", "t", "QA", "q", expand_wav=["clips/b.wav", "clips/c.wav"])
    ann = write_annotations(wav_dir / "ann.json", [entry])
    audio = AnnotationDataset(ann)[0]["audio"]
    parts = [sf.read(wav_dir / "clips" / n, dtype="float64")[0] for n in ("a.wav", "b.wav", "c.wav")]
    gap = np.zeros(EXPAND_WAV_GAP_SAMPLES)
    np.testing.assert_array_equal(audio, np.concatenate([parts[0], gap, parts[1], gap, parts[2]]))


def test_audio_root_resolves_relative_paths(wav_dir: Path, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("annotations")
    ann = write_annotations(elsewhere / "ann.json", [Annotation("clips/b.wav", "t", "QA", "q")])
    with pytest.raises(AnnotationError, match="does not exist"):
        AnnotationDataset(ann)
    assert len(AnnotationDataset(ann, audio_root=wav_dir)[0]["audio"]) == int(1.2 * 16000)


def _multi_template_prompts(n: int = 6) -> dict[str, list[str]]:
    return {"QA": [f"USER: <Speech><SpeechHere></Speech> v{i} {{}}\nASSISTANT:" for i in range(n)]}


def test_template_choice_is_seeded_per_item_and_epoch(wav_dir: Path):
    ann = write_annotations(wav_dir / "ann.json", [Annotation("clips/c.wav", "t", "QA", f"q{i}") for i in range(12)])
    prompts = _multi_template_prompts()

    def prompts_at(epoch: int, order, seed: int = 0) -> dict[int, str]:
        dataset = AnnotationDataset(ann, prompts, seed=seed)
        dataset.set_epoch(epoch)
        return {i: dataset[i]["prompt"] for i in order}

    forward = prompts_at(0, range(12))
    assert forward == prompts_at(0, reversed(range(12)))  # independent of access order
    assert all(f"q{i}\nASSISTANT:" in p for i, p in forward.items())
    assert len(set(p.split()[2] for p in forward.values())) > 1  # several templates in use
    assert forward != prompts_at(1, range(12))
    assert forward != prompts_at(0, range(12), seed=1)


def test_epoch_sampler_orders_by_seed_and_epoch_and_sets_dataset_epoch(wav_dir: Path):
    ann = write_annotations(wav_dir / "ann.json", [Annotation("clips/c.wav", "t", "QA", f"q{i}") for i in range(20)])
    dataset = AnnotationDataset(ann)
    sampler = EpochSampler(dataset, shuffle=True, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert first == list(EpochSampler(dataset, shuffle=True, seed=3))
    sampler.set_epoch(1)
    assert dataset.epoch == 1 and list(sampler) != first
    assert list(EpochSampler(dataset, shuffle=False)) == list(range(20))


def test_dataset_option_shuffling_keeps_answer_with_its_option(wav_dir: Path):
    question = "Which animal is it? (a) cat (b) dog (c) cow (d) hen"
    entries = [Annotation("clips/c.wav", "(b) dog", "QA", question), Annotation("clips/c.wav", "hello", "asr")]
    ann = write_annotations(wav_dir / "ann.json", entries)
    prompts = {"QA": ["USER: <SpeechHere> {}\nASSISTANT:"], "asr": ["USER: <SpeechHere> Transcribe.\nASSISTANT:"]}
    dataset = AnnotationDataset(ann, prompts, shuffle_options=True)
    answers = Counter()
    for epoch in range(24):
        dataset.set_epoch(epoch)
        example = dataset[0]
        asked = parse_question(example["meta"]["instruction"])
        _, position, text = parse_answer(example["text"])
        assert text == "dog" and asked.options[position] == "dog"
        assert example["prompt"] == f"USER: <SpeechHere> {example['meta']['instruction']}\nASSISTANT:"
        assert example["meta"]["options_shuffled"] and sorted(asked.options) == ["cat", "cow", "dog", "hen"]
        answers[position] += 1
        transcript = dataset[1]
        assert transcript["text"] == "hello" and not transcript["meta"]["options_shuffled"]
    assert len(answers) == 4  # the answer moves to every position over epochs
    assert AnnotationDataset(ann, prompts, shuffle_options=False)[0]["text"] == "(b) dog"


# --------------------------------------------------------------------------- multiple choice


@needs_sakura_mini
def test_every_sakura_question_parses_and_renders_back():
    items = _sakura_items()
    assert len(items) == 2 * 24 * len(TRACKS)
    for where, question, answer in items:
        parsed = parse_question(question)
        assert parsed is not None, where
        assert parsed.render() == question, where
        lead, position, text = parse_answer(answer)
        assert parsed.options[position] == text, (where, answer)


@needs_sakura_mini
def test_shuffle_options_invariants_on_sakura_over_many_seeds():
    for n, (where, question, answer) in enumerate(_sakura_items()):
        original = parse_question(question)
        lead, position, text = parse_answer(answer)
        seen_positions = set()
        for seed in range(40):
            new_question, new_answer = shuffle_options(question, answer, random.Random(seed * 1000 + n))
            shuffled = parse_question(new_question)
            new_lead, new_position, new_text = parse_answer(new_answer)
            assert shuffled.stem == original.stem and shuffled.separator == original.separator, where
            assert sorted(shuffled.options) == sorted(original.options), where
            assert (new_lead, new_text) == (lead, text), where  # e.g. Emotion's " (c) angry" keeps its space
            assert shuffled.options[new_position] == text, where  # the answer text follows its option
            assert new_answer == f"{lead}({chr(97 + new_position)}) {text}"
            seen_positions.add(new_position)
        assert seen_positions == set(range(len(original.options))), where


def test_shuffle_options_rejects_inconsistent_items():
    with pytest.raises(ValueError, match="differs from option"):
        shuffle_options("Q? (a) cat (b) dog", "(a) dog", random.Random(0))
    with pytest.raises(ValueError, match="has 2"):
        shuffle_options("Q? (a) cat (b) dog", "(c) cow", random.Random(0))
    with pytest.raises(ValueError, match="no '\\(a\\)"):
        shuffle_options("Transcribe the audio.", "(a) cat", random.Random(0))


def test_parse_question_starts_at_the_last_option_list():
    parsed = parse_question("Pick (a) or (b) below: (a) left (b) right (c) up")
    assert parsed.stem == "Pick (a) or (b) below:" and parsed.options == ["left", "right", "up"]
    assert parse_question("Only (a) one option") is None


LABELS = ["cat", "dog", "cow", "hen", "pig", "sheep"]
STEMS = ["Which animal is this?", "What animal do you hear?"]


def test_build_mc_items_invariants_over_many_seeds():
    labelled = [(f"clips/{i}.wav", LABELS[i % len(LABELS)]) for i in range(30)]
    for seed in range(30):
        for n_options in (2, 4, 6):
            items = build_mc_items(labelled, LABELS, STEMS, n_options=n_options, seed=seed)
            positions = Counter()
            for item, (path, label) in zip(items, labelled, strict=True):
                parsed = parse_question(item.question)
                lead, position, text = parse_answer(item.answer)
                assert item.audio_path == path and item.label == label and lead == ""
                assert parsed.stem in STEMS and parsed.options == list(item.options)
                assert len(set(item.options)) == n_options and set(item.options) <= set(LABELS)
                assert parsed.options[position] == label == text and item.answer_position == position
                positions[position] += 1
            assert len(positions) == n_options  # answers spread over every position
    assert build_mc_items(labelled, LABELS, STEMS, seed=7) == build_mc_items(labelled, LABELS, STEMS, seed=7)
    assert build_mc_items(labelled, LABELS, STEMS, seed=7) != build_mc_items(labelled, LABELS, STEMS, seed=8)


def test_build_mc_items_rejects_bad_inputs():
    with pytest.raises(ValueError, match="'bird' is not in label_set"):
        build_mc_items([("x.wav", "bird")], LABELS, STEMS)
    with pytest.raises(ValueError, match="n_options=7"):
        build_mc_items([("x.wav", "cat")], LABELS, STEMS, n_options=7)


def test_mc_items_become_trainable_annotations(wav_dir: Path):
    items = build_mc_items([("clips/a.wav", "cat"), ("clips/b.wav", "dog")], LABELS, STEMS, seed=0)
    ann = write_annotations(wav_dir / "mc.json", [item.to_annotation() for item in items])
    dataset = AnnotationDataset(ann)
    for item, example in zip(items, (dataset[0], dataset[1])):
        assert example["text"] == item.answer and example["meta"]["label"] == item.label
        assert example["prompt"] == f"USER: <Speech><SpeechHere></Speech> {item.question}\nASSISTANT:"


# --------------------------------------------------------------------------- data module


def test_datamodule_is_configurable_and_follows_lightning_epochs(wav_dir: Path):
    from jsonargparse import ArgumentParser
    from lightning.fabric.utilities.data import _set_sampler_epoch

    from salmonn_pl.data.annotation_datamodule import AnnotationDataModule

    question = "Which animal is it? (a) cat (b) dog (c) cow (d) hen"
    entries = [Annotation(f"clips/{n}.wav", "(b) dog", "QA", question) for n in "abc"]
    ann = write_annotations(wav_dir / "train.json", entries)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(AnnotationDataModule, "data")
    args = ["--data.train_annotation", str(ann), "--data.batch_size", "3", "--data.shuffle_options", "true"]
    config = parser.parse_args(args)
    module = parser.instantiate(config).data
    assert isinstance(module, AnnotationDataModule) and module.batch_size == 3 and module.shuffle_options

    loader = module.train_dataloader()
    texts_by_epoch = []
    for epoch in range(6):
        _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop does at each epoch start
        assert module.train_dataset.epoch == epoch
        batch = next(iter(loader))
        assert batch["spectrogram"].shape == (3, 80, 3000) and sorted(batch["id"]) == [f"clips/{n}.wav" for n in "abc"]
        texts_by_epoch.append(tuple(batch["text"]))
    assert len(set(texts_by_epoch)) > 1  # option order (hence the answer letter) changes across epochs
    assert module.val_dataloader() == []
    with pytest.raises(ValueError, match="'train_annotation' is required"):
        AnnotationDataModule().setup("fit")


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("batch_size", 0, "data.batch_size must be an integer of at least 1, got 0"),
        ("num_workers", -2, "data.num_workers must be an integer of at least 0, got -2"),
    ],
)
def test_annotation_data_module_checks_its_numbers_at_construction(setting: str, value: int, message: str):
    from salmonn_pl.data.annotation_datamodule import AnnotationDataModule

    with pytest.raises(ValueError) as excinfo:
        AnnotationDataModule(train_annotation="unused.json", **{setting: value})
    assert message in str(excinfo.value)
