"""SakuraDataModule: question x variant examples, YAML configuration, skip policy, throughput."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from golden import SAKURA_MINI
from jsonargparse import ArgumentParser

from salmonn_pl.data.audio import AudioError, load_audio
from salmonn_pl.data.datamodule import DEFAULT_PROMPT_TEMPLATE, SakuraDataModule
from salmonn_pl.data.variants import Variant

needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")


@needs_mini
def test_every_question_under_every_variant():
    torch.set_num_threads(1)
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
                assert meta["pad_fill"] == "noise" and meta["strip_options"]
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
    assert text_only["meta"]["ablation"] == "zero_audio"
    for e in examples:
        if e["meta"]["pad_seconds"] is not None and not e["meta"]["longer_than_target"]:
            assert len(e["audio"]) == e["meta"]["pad_seconds"] * 16_000


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
def test_full_benchmark_data_work_is_well_under_a_minute():
    """CPU time for all of sakura-mini (192 questions) padded to 30 s with noise, extrapolated to 4000.

    CPU time rather than wall time: the data work is what is measured, not other load on the machine.
    """
    torch.set_num_threads(1)
    dm = SakuraDataModule(
        SAKURA_MINI, variants=[Variant(pad_seconds=30, pad_fill="noise", pad_position="late")], batch_size=8
    )
    dm.setup()
    next(iter(dm.test_dataloader()))  # warm-up (filter banks, allocator)
    start = time.process_time()
    n = sum(len(batch["id"]) for batch in dm.test_dataloader())
    seconds = time.process_time() - start
    per_4000 = seconds / n * 4000
    print(f"{n} questions, pad30s-noise-late: {seconds:.2f} CPU s on one thread -> {per_4000:.0f} s per 4000 questions")
    assert n == 192
    assert per_4000 < 60
