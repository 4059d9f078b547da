"""The long-audio SAKURA variant: lengths, exact target placement, distractor choice, reproducibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from golden import SAKURA_MINI

from salmonn_pl.data.audio import load_audio
from salmonn_pl.data.long_audio import Clip, LongAudioVariant, build_long_audio, sakura_clip_pool
from salmonn_pl.data.sakura import read_sakura

SR = 16000


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


def test_reproducible_by_question_id_and_independent_of_pool_order():
    pool = _pool()
    target = pool[0]
    wav, placement = build_long_audio(target, pool, 60.0, "middle")
    shuffled = [pool[i] for i in np.random.default_rng(1).permutation(len(pool))]
    wav_again, placement_again = build_long_audio(target, shuffled, 60.0, "middle")
    np.testing.assert_array_equal(wav, wav_again)
    assert placement == placement_again
    _, other_question = build_long_audio(target, pool, 60.0, "middle", question_id="Animal/multi/clip00")
    assert [s.id for s in other_question.distractors] != [s.id for s in placement.distractors]
    _, other_seed = build_long_audio(target, pool, 60.0, "middle", seed=1)
    assert [s.id for s in other_seed.distractors] != [s.id for s in placement.distractors]


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


@pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no SAKURA mini set at {SAKURA_MINI}")
def test_variant_on_real_sakura_clips():
    questions, _ = read_sakura(SAKURA_MINI, tracks=["Animal"], hops=["single", "multi"])
    pool = sakura_clip_pool(questions)
    assert len(pool) == 24 and all(callable(clip.audio) for clip in pool)  # one lazy clip per file
    by_id = {clip.id: clip for clip in pool}
    for position in ("early", "late"):
        variant = LongAudioVariant(pool, total_seconds=60.0, position=position)
        for question in questions[:2] + questions[-2:]:
            target = by_id[f"Animal/{question.file}"]
            audio = load_audio(question.audio)
            wav, meta = variant(target, question_id=question.id)
            assert len(wav) == 60 * SR and meta["variant"] == "long_audio"
            assert meta["variant_params"]["position"] == position
            start, end = meta["target_start_sample"], meta["target_end_sample"]
            np.testing.assert_array_equal(wav[start:end], audio)
            assert meta["target_within_first_30s"] == (position == "early")
            assert all(d["label"] != question.label and d["id"] != target.id for d in meta["distractors"])
            for d in meta["distractors"]:
                source = by_id[d["id"]].samples()
                expected = source[d["clip_offset"] : d["clip_offset"] + d["end"] - d["start"]]
                np.testing.assert_array_equal(wav[d["start"] : d["end"]], expected)
            json.dumps(meta)
    single, multi = questions[0], next(q for q in questions if q.hop == "multi" and q.file == questions[0].file)
    target = by_id[f"Animal/{single.file}"]
    assert variant(target, single.id)[1]["distractors"] != variant(target, multi.id)[1]["distractors"]
