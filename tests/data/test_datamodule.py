"""SakuraDataModule: question x variant examples, YAML configuration, skip policy, throughput."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tests.helpers.golden import SAKURA_MINI
from jsonargparse import ArgumentParser

from salmonn_pl.audio.load import AudioError, load_audio
from salmonn_pl.data.datamodule import DEFAULT_PROMPT_TEMPLATE, SakuraDataModule
from salmonn_pl.data.sakura import SakuraDataError
from salmonn_pl.data.variants import Variant

needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")


@needs_mini
def test_every_question_under_every_variant():
    variants = [Variant(), Variant(pad_seconds=15, pad_fill="noise", pad_position="middle", strip_options=True)]
    dm = SakuraDataModule(SAKURA_MINI, tracks=["Animal", "Emotion"], limit=3, variants=variants, batch_size=5)
    dm.setup("test")
    assert len(dm.questions) == 2 * 2 * 3 and len(dm.dataset) == 2 * len(dm.questions)

    batches = list(dm.test_dataloader())
    ids = [i for b in batches for i in b["id"]]
    metas = [m for b in batches for m in b["meta"]]
    assert sorted(set(ids)) == sorted(q.id for q in dm.questions)
    assert sorted((i, m["variant"]) for i, m in zip(ids, metas)) == sorted(
        (q.id, v.name) for q in dm.questions for v in dm.variants
    )
    json.dumps(metas)  # outputs store meta as JSON

    for batch in batches:
        assert batch["spectrogram"].shape[1:] == (80, 3000)
        for row, (meta, prompt) in enumerate(zip(batch["meta"], batch["prompt"])):
            question = next(q for q in dm.questions if q.id == batch["id"][row])
            assert (meta["track"], meta["hop"], meta["label"]) == (question.track, question.hop, question.label)
            assert meta["answer"] == batch["text"][row] == question.answer
            assert meta["instruction"] == question.instruction
            original = load_audio(question.audio)
            length = int(batch["wav_lengths"][row])
            wav = batch["raw_wav"][row, :length].numpy()
            if meta["variant"] == "original":
                assert prompt == DEFAULT_PROMPT_TEMPLATE.replace("{question}", question.instruction)
                np.testing.assert_array_equal(wav[: len(original)], original[:480_000])
            else:
                assert meta["variant_params"]["pad_fill"] == "noise" and meta["variant_params"]["strip_options"]
                assert "(a)" not in prompt and prompt.count("<SpeechHere>") == 1
                assert length == max(15 * 16_000, len(original))
                start = round(meta["clip_start_s"] * 16_000)
                assert start == (15 * 16_000 - len(original)) // 2 or meta["longer_than_target"]
                np.testing.assert_array_equal(wav[start : start + len(original)], original)


@needs_mini
def test_ids_and_noise_are_stable_across_runs():
    def run() -> list[tuple[str, np.ndarray]]:
        dm = SakuraDataModule(
            SAKURA_MINI, tracks=["Gender"], limit=2, variants=[Variant(pad_seconds=3, pad_fill="noise")], batch_size=4
        )
        return [(i, w.numpy()) for b in dm.test_dataloader() for i, w in zip(b["id"], b["raw_wav"])]

    first, second = run(), run()
    assert [i for i, _ in first] == [i for i, _ in second]
    for (_, a), (_, b) in zip(first, second):
        np.testing.assert_array_equal(a, b)


@needs_mini
def test_sweep_from_yaml_is_one_config_entry():
    parser = ArgumentParser()
    parser.add_class_arguments(SakuraDataModule, "data")
    config = parser.parse_string(
        f"""
data:
  root: {SAKURA_MINI}
  tracks: [Language]
  hops: [single]
  limit: 1
  variants:
    - {{}}
    - {{strip_options: true}}
    - {{ablation: zero_audio, name: text_only}}
  sweep:
    pad_seconds: [15, 30]
    pad_fill: [zero, noise]
    pad_position: [early, middle, late]
"""
    )
    dm = parser.instantiate(config).data
    names = [v.name for v in dm.variants]
    assert names[:3] == ["original", "no_options", "text_only"] and len(names) == 15 == len(set(names))
    assert dm.prompt_template == DEFAULT_PROMPT_TEMPLATE
    dm.setup()
    examples = [dm.dataset[i] for i in range(len(dm.dataset))]
    assert {e["meta"]["variant"] for e in examples} == set(names)
    text_only = next(e for e in examples if e["meta"]["variant"] == "text_only")
    assert text_only["meta"]["variant_params"]["ablation"] == "zero_audio"
    # Every setting of the variant travels as one value, none of them flat in the meta.
    settings = {field.name for field in dataclasses.fields(Variant)} - {"name"}
    assert set(text_only["meta"]["variant_params"]) == settings and not settings & set(text_only["meta"])
    for e in examples:
        seconds = e["meta"]["variant_params"]["pad_seconds"]
        if seconds is not None and not e["meta"]["longer_than_target"]:
            assert len(e["audio"]) == seconds * 16_000


def _release_with_bad_clips(root: Path) -> None:
    audio = root / "data" / "Animal" / "audio"
    audio.mkdir(parents=True)
    rows = ["file,attribute_label,single_instruction,single_answer,multi_instruction,multi_answer"]
    for i in range(4):
        sf.write(audio / f"c{i}.wav", 0.1 * np.ones(4000), 16000)
        rows.append(f"c{i}.wav,cat,Which? (a) cat (b) dog,(a) cat,Eats? (a) fish (b) hay,(a) fish")
    (audio / "c1.wav").write_bytes(b"not audio at all")
    stereo_44k = np.stack([np.full(44100, 0.2), np.full(44100, -0.2)], axis=1)
    sf.write(audio / "c2.wav", stereo_44k, 44100)  # converted, not rejected
    (root / "data" / "Animal" / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_skip_policy_records_skipped_ids_and_keeps_the_rest(tmp_path: Path):
    _release_with_bad_clips(tmp_path)
    dm = SakuraDataModule(tmp_path, tracks=["Animal"], on_error="skip", batch_size=8)
    dm.setup()
    assert dm.skipped_records() == [
        {"id": f"Animal/{hop}/c1.wav", "reason": dm.skipped[i].reason} for i, hop in enumerate(["single", "multi"])
    ]
    assert all(str(tmp_path / "data/Animal/audio/c1.wav") in s.reason for s in dm.skipped)
    batch = next(iter(dm.test_dataloader()))
    assert sorted(batch["id"]) == sorted(f"Animal/{h}/c{i}.wav" for h in ("single", "multi") for i in (0, 2, 3))
    row = batch["id"].index("Animal/single/c2.wav")
    assert int(batch["wav_lengths"][row]) == 16_000  # 1 s at 44.1 kHz -> 1 s at 16 kHz
    assert torch.allclose(batch["raw_wav"][row, 100:15_900], torch.tensor(0.2, dtype=torch.float64), atol=1e-3)


def test_raise_policy_names_the_bad_file(tmp_path: Path):
    _release_with_bad_clips(tmp_path)
    dm = SakuraDataModule(tmp_path, tracks=["Animal"], batch_size=8)
    with pytest.raises(AudioError, match="c1.wav"):
        list(dm.test_dataloader())


def test_bad_prompt_template_is_rejected():
    with pytest.raises(ValueError, match="prompt_template"):
        SakuraDataModule("unused", prompt_template="USER: {question}\nASSISTANT:")
    with pytest.raises(ValueError, match="prompt_template"):
        Variant(prompt_template="<SpeechHere> no question")


@needs_mini
def test_all_of_sakura_mini_padded_to_30s_with_noise_is_served():
    """Every question of sakura-mini (192), padded to 30 s with noise, in full 30 s batches.

    How long this data work takes per 4000 questions is measured by bench/features.py (its target:
    under a minute), not asserted here.
    """
    dm = SakuraDataModule(
        SAKURA_MINI, variants=[Variant(pad_seconds=30, pad_fill="noise", pad_position="late")], batch_size=8
    )
    dm.setup()
    ids = []
    for batch in dm.test_dataloader():
        ids += batch["id"]
        assert batch["raw_wav"].shape[1] == 30 * 16_000 and bool(batch["wav_lengths"].eq(30 * 16_000).all())
        assert batch["spectrogram"].shape[1:] == (80, 3000) and bool(torch.isfinite(batch["spectrogram"]).all())
    assert len(ids) == len(set(ids)) == 192


REPO_ROOT = Path(__file__).resolve().parents[2]


def test_long_audio_recipe_serves_six_long_variants_to_a_model_that_hears_them(tmp_path: Path):
    from salmonn_pl.cli import build_cli

    overrides = ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--model.output_dir", str(tmp_path)]
    cli = build_cli(["--config", str(REPO_ROOT / "configs/long_audio.yaml"), *overrides], run=False)
    dm = cli.datamodule
    assert [v.name for v in dm.variants] == ["original"] + [
        f"long{s}s-{p}" for s in (60, 120) for p in ("early", "middle", "late")
    ]
    assert cli.model.model_config.max_audio_seconds == 120
    assert dm.collator.max_samples == 120 * 16_000


def test_the_data_keeps_the_audio_the_model_encodes(tmp_path: Path):
    """``max_audio_seconds`` is set once, in the model; the data module follows it (a data value is replaced)."""
    from salmonn_pl.cli import build_cli

    overrides = ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--model.output_dir", str(tmp_path)]
    cli = build_cli(["--config", str(REPO_ROOT / "configs/long_audio.yaml"), *overrides,
                     "--model.model.max_audio_seconds", "60", "--data.max_audio_seconds", "30"], run=False)
    assert cli.model.model_config.max_audio_seconds == cli.datamodule.max_audio_seconds == 60
    assert cli.datamodule.collator.max_samples == 60 * 16_000


@needs_mini
def test_long_audio_from_yaml_with_a_fraction_and_its_prediction_record():
    from salmonn_pl.eval.predictions import make_record

    parser = ArgumentParser()
    parser.add_class_arguments(SakuraDataModule, "data")
    config = parser.parse_string(
        f"""
data:
  root: {SAKURA_MINI}
  tracks: [Gender]
  hops: [single]
  limit: 1
  max_audio_seconds: 60
  sweep:
    long_audio_seconds: [40]
    long_audio_position: [0.25, late]
"""
    )
    dm = parser.instantiate(config).data
    assert [v.name for v in dm.variants] == ["long40s-at0.25", "long40s-late"]
    dm.setup()
    example = dm.dataset[0]
    clip = load_audio(dm.questions[0].audio)
    start = round(example["meta"]["target_start_s"] * 16_000)
    assert len(example["audio"]) == 40 * 16_000 and start == round(0.25 * (40 * 16_000 - len(clip)))
    np.testing.assert_array_equal(example["audio"][start : start + len(clip)], clip)

    # The settings land under variant_params; where the clip sits stays with the example's meta.
    record = make_record(example["id"], example["meta"], "(a) female")
    params = record["meta"]["variant_params"]
    assert (params["long_audio_seconds"], params["long_audio_position"]) == (40, 0.25)
    assert params["long_audio_distractors"] == "all_tracks" and params["pad_seconds"] is None
    assert record["meta"]["target_start_s"] == example["meta"]["target_start_s"]
    assert record["meta"]["distractor_ids"] == example["meta"]["distractor_ids"]
    json.dumps(record)


@pytest.mark.parametrize("limit", [None, 1])  # c1.wav among the evaluated questions, or only in the pool
def test_long_audio_pool_skips_unreadable_clips_and_missing_tracks(tmp_path: Path, limit: int | None):
    _release_with_bad_clips(tmp_path)  # one track (Animal), c1.wav is not audio, every clip a "cat"
    late = Variant(long_audio_seconds=5, long_audio_position="late")
    dm = SakuraDataModule(
        tmp_path, tracks=["Animal"], limit=limit, on_error="skip", variants=[late], max_audio_seconds=30
    )
    dm.setup()
    assert len(dm.dataset) == (6 if limit is None else 2)
    assert sorted(clip.id for clip in dm.dataset.distractor_pool) == ["Animal/c0.wav", "Animal/c2.wav", "Animal/c3.wav"]
    for example in (dm.dataset[i] for i in range(len(dm.dataset))):
        meta = example["meta"]
        assert len(example["audio"]) == 5 * 16_000 and round(meta["target_end_s"] * 16_000) == 5 * 16_000
        assert meta["distractor_ids"] and f"Animal/{meta['file']}" not in meta["distractor_ids"]
        assert "Animal/c1.wav" not in meta["distractor_ids"]
        assert meta["distractors_share_label"]  # no other label exists in this pool


def test_long_audio_without_possible_distractors_names_variant_and_question(tmp_path: Path):
    _release_with_bad_clips(tmp_path)
    variant = Variant(long_audio_seconds=5, long_audio_distractors="other_tracks")
    dm = SakuraDataModule(tmp_path, tracks=["Animal"], on_error="skip", variants=[variant], max_audio_seconds=30)
    dm.setup()
    with pytest.raises(ValueError, match=r"'long5s-middle-other_tracks', question Animal/single/c0.wav: no distractor"):
        dm.dataset[0]


def test_long_audio_longer_than_max_audio_seconds_warns():
    with pytest.warns(UserWarning, match="long-audio variants last up to 120 s but max_audio_seconds is 30"):
        SakuraDataModule("unused", variants=[Variant(long_audio_seconds=120)])


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("limit", 0, "data.limit must be a positive integer or null, got 0"),
        ("limit", -1, "data.limit must be a positive integer or null, got -1"),
        ("batch_size", 0, "data.batch_size must be an integer of at least 1, got 0"),
        ("batch_size", 2.5, "data.batch_size must be an integer of at least 1, got 2.5"),
        ("num_workers", -1, "data.num_workers must be an integer of at least 0, got -1"),
        ("max_audio_seconds", -1, "data.max_audio_seconds must be a number of at least 30, got -1"),
        ("max_audio_seconds", float("nan"), "data.max_audio_seconds must be a number of at least 30, got nan"),
        ("tracks", [], "data.tracks is empty"),
        ("hops", [], "data.hops is empty"),
    ],
)
def test_numeric_settings_are_checked_at_construction(tmp_path: Path, setting: str, value, message: str):
    _release_with_bad_clips(tmp_path)
    with pytest.raises(ValueError) as excinfo:
        SakuraDataModule(tmp_path, **{setting: value})
    assert message in str(excinfo.value)


def test_bad_limit_from_yaml_fails_naming_the_setting(tmp_path: Path):
    parser = ArgumentParser()
    parser.add_class_arguments(SakuraDataModule, "data")
    config = parser.parse_string(f"data:\n  root: {tmp_path}\n  limit: -1\n")
    with pytest.raises(ValueError, match="data.limit must be a positive integer or null, got -1"):
        parser.instantiate(config)


def test_empty_selection_is_an_error_that_says_why(tmp_path: Path):
    _release_with_bad_clips(tmp_path)
    (tmp_path / "data/Animal/metadata.csv").write_text(
        "file,attribute_label,single_instruction,single_answer,multi_instruction,multi_answer\n", encoding="utf-8"
    )
    dm = SakuraDataModule(tmp_path, tracks=["Animal"], on_error="skip")
    with pytest.raises(SakuraDataError, match="no questions") as excinfo:
        dm.setup()
    assert str(tmp_path / "data/Animal/metadata.csv") in str(excinfo.value)


def test_selection_that_skipping_empties_is_an_error_that_says_why(tmp_path: Path):
    _release_with_bad_clips(tmp_path)
    dm = SakuraDataModule(tmp_path, tracks=["Animal"], hops=["multi"], limit=1, on_error="skip")
    (tmp_path / "data/Animal/audio/c0.wav").write_bytes(b"RIFF cut")
    with pytest.raises(SakuraDataError, match="no question to evaluate") as excinfo:
        dm.setup()
    message = str(excinfo.value)
    assert f"root {tmp_path}, tracks ['Animal'], hops ['multi'], limit 1" in message
    assert "left out every one" in message and "Animal/multi/c0.wav" in message
