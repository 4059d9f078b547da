"""The long-audio SAKURA variant: lengths, exact target placement, distractor choice, reproducibility,
and the tiny model encoding such recordings as 30 s chunks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tests.helpers.golden import SAKURA_MINI

from salmonn_pl.audio.load import load_audio
from salmonn_pl.data.collate import AudioBatch
from salmonn_pl.data.datamodule import SakuraDataModule
from salmonn_pl.data.long_audio import Clip, build_long_audio, distractor_candidates, sakura_clip_pool
from salmonn_pl.data.sakura import TRACKS, read_sakura
from salmonn_pl.data.variants import Variant
from salmonn_pl.generation.generate import generate

SR = 16000
needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no SAKURA mini set at {SAKURA_MINI}")


def _pool(n: int = 12, labels: tuple[str, ...] = ("cat", "dog", "cow"), seed: int = 0) -> list[Clip]:
    """Clips of random noise (so any sample run identifies its clip), 0.5-4 s long."""
    rng = np.random.default_rng(seed)
    return [
        Clip(f"clip{i:02d}", labels[i % len(labels)], rng.uniform(-0.9, 0.9, int(rng.uniform(0.5, 4.0) * SR)))
        for i in range(n)
    ]


def _check_recording(wav: np.ndarray, placement, target: Clip, pool: list[Clip], gap: int) -> None:
    start, end = placement.target_start_sample, placement.target_end_sample
    np.testing.assert_array_equal(wav[start:end], target.audio)
    assert placement.target_start_s == start / SR and placement.target_end_s == end / SR
    by_id = {clip.id: clip for clip in pool}
    covered = np.zeros(len(wav), dtype=bool)
    covered[start:end] = True
    for segment in placement.distractors:
        source = by_id[segment.id].audio
        assert segment.id != target.id and segment.label == by_id[segment.id].label
        expected = source[segment.clip_offset : segment.clip_offset + segment.end - segment.start]
        np.testing.assert_array_equal(wav[segment.start : segment.end], expected)
        assert not covered[segment.start : segment.end].any()  # no overlaps
        covered[segment.start : segment.end] = True
    assert not wav[~covered].any()  # everything else is silence
    # A silence of `gap` samples separates the target from its neighbours.
    assert not wav[max(0, start - gap) : start].any() and not wav[end : end + gap].any()
    starts = [s.start for s in placement.distractors]
    assert starts == sorted(starts)


@pytest.mark.parametrize("total_seconds", [60.0, 120.0, 37.3])
@pytest.mark.parametrize("position", ["early", "middle", "late", 0.3])
def test_target_sits_exactly_where_reported(total_seconds, position):
    pool = _pool()
    target = pool[4]
    wav, placement = build_long_audio(target, pool, total_seconds, position, gap_seconds=0.1)
    total = round(total_seconds * SR)
    assert len(wav) == total == placement.total_samples and wav.dtype == np.float64
    fraction = {"early": 0.0, "middle": 0.5, "late": 1.0}.get(position, position)
    assert placement.target_start_sample == round(fraction * (total - len(target.audio)))
    if position == "early":
        assert placement.target_start_sample == 0
    if position == "late":
        assert placement.target_end_sample == total
    _check_recording(wav, placement, target, pool, gap=1600)
    assert all(s.label != target.label for s in placement.distractors) and not placement.distractors_share_label
    assert placement.target_within_first_30s == (placement.target_end_sample <= 30 * SR)
    json.dumps(placement.to_meta())


def test_reproducible_by_clip_and_independent_of_pool_order():
    pool = _pool()
    target = pool[0]
    wav, placement = build_long_audio(target, pool, 60.0, "middle")
    shuffled = [pool[i] for i in np.random.default_rng(1).permutation(len(pool))]
    wav_again, placement_again = build_long_audio(target, shuffled, 60.0, "middle")
    np.testing.assert_array_equal(wav, wav_again)
    assert placement == placement_again
    # The draw follows the target clip's id (not its samples): a clip of another id draws others.
    _, other_clip = build_long_audio(dataclasses.replace(target, id="clip99"), pool, 60.0, "middle")
    assert [s.id for s in other_clip.distractors] != [s.id for s in placement.distractors]
    _, other_seed = build_long_audio(target, pool, 60.0, "middle", seed=1)
    assert [s.id for s in other_seed.distractors] != [s.id for s in placement.distractors]


@pytest.mark.slow
def test_draw_does_not_depend_on_python_hash_randomisation():
    code = (
        "import numpy as np\n"
        "from salmonn_pl.data.long_audio import Clip, build_long_audio\n"
        "pool = [Clip(f'c{i}', 'ab'[i % 2], np.ones(8000 + 100 * i)) for i in range(10)]\n"
        "_, placement = build_long_audio(pool[0], pool, 30.0, 'middle')\n"
        "print([(s.id, s.start) for s in placement.distractors])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_same_label_distractors_only_when_nothing_else_exists():
    pool = _pool(labels=("cat",))
    wav, placement = build_long_audio(pool[0], pool, 30.0, "middle")
    assert placement.distractors_share_label and placement.distractors
    _check_recording(wav, placement, pool[0], pool, gap=1600)
    with pytest.raises(ValueError, match="no distractor clips for 'clip00'"):
        build_long_audio(pool[0], [pool[0]], 30.0)
    with pytest.raises(ValueError, match="every other clip in the pool is empty"):
        build_long_audio(pool[0], [pool[0], Clip("empty", "dog", np.zeros(0))], 30.0)


def test_small_pool_is_repeated_to_fill_the_duration():
    pool = _pool(n=2, labels=("cat", "dog"))
    wav, placement = build_long_audio(pool[0], pool, 120.0, "late", gap_seconds=0.0)
    assert {s.id for s in placement.distractors} == {"clip01"} and len(placement.distractors) > 10
    _check_recording(wav, placement, pool[0], pool, gap=0)


def test_target_longer_than_total_is_returned_alone():
    pool = _pool()
    long_target = Clip("long", "cat", np.random.default_rng(3).uniform(-1, 1, 5 * SR))
    wav, placement = build_long_audio(long_target, pool, 4.0, "middle")
    np.testing.assert_array_equal(wav, long_target.audio)
    assert placement.longer_than_target and placement.distractors == [] and placement.target_start_sample == 0


def test_bad_arguments_are_rejected():
    pool = _pool()
    with pytest.raises(ValueError, match="position must be one of"):
        build_long_audio(pool[0], pool, 60.0, "start")
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        build_long_audio(pool[0], pool, 60.0, 1.5)
    with pytest.raises(ValueError, match="total_seconds"):
        build_long_audio(pool[0], pool, 0.0)


def test_distractor_sources_split_the_pool_by_track():
    pool = [Clip(f"{track}/{i}.wav", "x", np.ones(SR), track=track) for track in ("Animal", "Gender") for i in range(3)]
    assert distractor_candidates(pool, "Animal", "all_tracks") == pool
    assert {c.track for c in distractor_candidates(pool, "Animal", "same_track")} == {"Animal"}
    assert {c.track for c in distractor_candidates(pool, "Animal", "other_tracks")} == {"Gender"}
    with pytest.raises(ValueError, match="distractor source"):
        distractor_candidates(pool, "Animal", "elsewhere")


@needs_mini
def test_sakura_clip_pool_holds_each_clip_once_and_lazily():
    questions, _ = read_sakura(SAKURA_MINI, tracks=["Animal"], hops=["single", "multi"])
    pool = sakura_clip_pool(questions)
    assert len(pool) == 24 and all(callable(clip.audio) and clip.track == "Animal" for clip in pool)
    cat = next(clip for clip in pool if clip.id == "Animal/cat2.wav")
    np.testing.assert_array_equal(cat.samples(), load_audio(SAKURA_MINI / "data/Animal/audio/cat2.wav"))


def _long_audio_examples(variants: list[Variant], **kwargs) -> tuple[SakuraDataModule, list[dict]]:
    dm = SakuraDataModule(SAKURA_MINI, variants=variants, max_audio_seconds=120, **kwargs)
    dm.setup()
    return dm, [dm.dataset[i] for i in range(len(dm.dataset))]


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Whether ``needle`` occurs sample-exact (at a whole-sample offset) in ``haystack``."""
    raw, sought = haystack.tobytes(), needle.tobytes()
    at = raw.find(sought)
    while at != -1 and at % haystack.itemsize:
        at = raw.find(sought, at + 1)
    return at != -1


@needs_mini
def test_sixty_second_middle_example_holds_the_clip_at_the_recorded_offset():
    middle = Variant(long_audio_seconds=60, long_audio_position="middle")
    dm, examples = _long_audio_examples([middle], tracks=["Animal"], hops=["single"], limit=3)
    assert len(examples) == 3 and dm.variants[0].name == "long60s-middle"
    clip_ids = {clip.id for clip in dm.dataset.distractor_pool}
    # The pool is the whole benchmark: every track, every clip, not only the 3 selected questions.
    assert len(clip_ids) == 4 * 24 and {i.split("/")[0] for i in clip_ids} == set(TRACKS)
    for example in examples:
        meta, wav = example["meta"], example["audio"]
        clip = load_audio(SAKURA_MINI / "data/Animal/audio" / meta["file"])
        assert len(wav) == 60 * SR and meta["variant"] == "long60s-middle"
        start = round(meta["target_start_s"] * SR)
        assert start == round(0.5 * (60 * SR - len(clip))) and meta["clip_start_s"] == meta["target_start_s"]
        assert round(meta["target_end_s"] * SR) == start + len(clip) == start + meta["num_samples"]
        np.testing.assert_array_equal(wav[start : start + len(clip)], clip)
        assert not wav[start - 1600 : start].any() and not wav[start + len(clip) : start + len(clip) + 1600].any()
        assert (meta["variant_params"]["long_audio_seconds"], meta["variant_params"]["long_audio_position"]) == (60, "middle")
        assert not meta["target_within_first_30s"] and not meta["longer_than_target"]

        distractors = meta["distractor_ids"]
        assert distractors and set(distractors) <= clip_ids and f"Animal/{meta['file']}" not in distractors
        assert not meta["distractors_share_label"]
        # Every distractor but the two cut at the recording's edges appears whole.
        for clip_id in distractors[1:-1]:
            track, file = clip_id.split("/")
            assert _contains(wav, load_audio(SAKURA_MINI / "data" / track / "audio" / file)), clip_id
        json.dumps(meta)
    # Distractors come from the other tracks too.
    assert len({i.split("/")[0] for e in examples for i in e["meta"]["distractor_ids"]}) > 1


@needs_mini
def test_recording_does_not_depend_on_what_else_is_evaluated():
    variants = [Variant(long_audio_seconds=60, long_audio_position="late")]
    _, alone = _long_audio_examples(variants, tracks=["Gender"], hops=["multi"], limit=1)
    _, among = _long_audio_examples(
        [Variant(), *variants, Variant(long_audio_seconds=120)], tracks=["Animal", "Gender"], limit=2
    )
    same = next(e for e in among if e["id"] == alone[0]["id"] and e["meta"]["variant"] == "long60s-late")
    np.testing.assert_array_equal(same["audio"], alone[0]["audio"])
    assert same["meta"] == alone[0]["meta"]
    assert round(alone[0]["meta"]["target_end_s"] * SR) == 60 * SR  # late: the clip ends the recording


@needs_mini
def test_distractor_source_restricts_tracks():
    variants = [
        Variant(long_audio_seconds=30, long_audio_position="early", long_audio_distractors="same_track"),
        Variant(long_audio_seconds=30, long_audio_position="early", long_audio_distractors="other_tracks"),
    ]
    dm, examples = _long_audio_examples(variants, tracks=["Emotion"], hops=["single"], limit=2)
    assert [v.name for v in dm.variants] == ["long30s-early-same_track", "long30s-early-other_tracks"]
    for example in examples:
        tracks = {i.split("/")[0] for i in example["meta"]["distractor_ids"]}
        if example["meta"]["variant_params"]["long_audio_distractors"] == "same_track":
            assert tracks == {"Emotion"}
        else:
            assert tracks and "Emotion" not in tracks
        assert example["meta"]["target_within_first_30s"] and example["meta"]["target_start_s"] == 0.0


@needs_mini
def test_tiny_model_encodes_long_examples_as_thirty_second_chunks(tiny_config):
    from salmonn_pl.generation.decode import GenerationSettings
    from salmonn_pl.model.salmonn import Salmonn

    model = Salmonn(dataclasses.replace(tiny_config, max_audio_seconds=120)).eval()
    variants = [
        Variant(long_audio_seconds=60, long_audio_position="middle"),
        Variant(long_audio_seconds=120, long_audio_position="late"),
    ]
    dm = SakuraDataModule(
        SAKURA_MINI, tracks=["Language"], hops=["single"], limit=1, variants=variants, max_audio_seconds=120
    )
    batch = next(iter(dm.test_dataloader()))
    assert batch["wav_lengths"].tolist() == [60 * SR, 120 * SR]
    with torch.no_grad():
        encoded = model.encode_audio(AudioBatch.of(batch))
        per_chunk = model.connector.tokens_for_frames()
        assert encoded["chunks_per_clip"].tolist() == [2, 4]
        assert [tokens.shape[0] for tokens in encoded["audio_tokens"]] == [2 * per_chunk, 4 * per_chunk]
        assert all(torch.isfinite(tokens).all() for tokens in encoded["audio_tokens"])
        settings = GenerationSettings(max_new_tokens=3, num_beams=1)
        result = generate(model, batch["prompt"], encoded["audio_tokens"], settings)
    assert len(result.sequences) == 2
