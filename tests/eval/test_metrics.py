"""Slice accuracy: counts, deduplication, DDP (simulated and real gloo), derived figures."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.helpers.eval_records import synthetic_records
from torch.utils.data import DistributedSampler

from salmonn_pl.eval.metrics import (
    AVERAGE,
    COLUMNS,
    PUBLISHED_SALMONN,
    SakuraAccuracy,
    SliceKey,
    accuracy_table,
    count_slices,
    difference_pp,
    flat_metrics,
    overall,
    table_columns,
)


def _expected_counts(records):
    """Counts written out the slow, obvious way."""
    seen, counts = set(), {}
    for r in records:
        if (r["id"], r["variant"]) in seen:
            continue
        seen.add((r["id"], r["variant"]))
        c = counts.setdefault((r["track"], r["hop"], r["variant"]), {"n": 0, "correct": 0, "unjudged": 0})
        c["n"] += 1
        c["correct"] += r["judgement"] == "correct"
        c["unjudged"] += r["judgement"] not in ("correct", "incorrect")
    return counts


def test_counts_per_slice_with_unjudged_in_the_denominator(records):
    records[0]["judgement"] = None  # never judged counts as unjudged
    expected = _expected_counts(records)
    counts = count_slices(records)
    assert len(counts) == len(expected) == 4 * 2 * 2
    for c in counts:
        e = expected[(c.key.track, c.key.hop, c.key.variant)]
        assert (c.questions, c.correct, c.unjudged) == (e["n"], e["correct"], e["unjudged"])
        assert c.correct + c.incorrect + c.unjudged == c.questions
        assert math.isclose(c.accuracy, 100 * e["correct"] / e["n"])
    assert overall(counts)["unjudged"] == sum(e["unjudged"] for e in expected.values())


def test_table_columns_follow_the_study_layout(records):
    table = accuracy_table(count_slices(records))
    assert set(table) == {"original", "pad30s-zero-late"}
    assert list(table["original"])[:-1] == list(COLUMNS) and list(table["original"])[-1] == AVERAGE
    assert COLUMNS == ("animal-multi", "animal-single", "emotion-multi", "emotion-single",
                       "gender-multi", "gender-single", "language-multi", "language-single")
    assert list(PUBLISHED_SALMONN.values()) == [34.6, 68.6, 28.2, 19.8, 48.6, 59.8, 29.6, 21.8]
    row = table["original"]
    assert math.isclose(row[AVERAGE], sum(row[c] for c in COLUMNS) / 8)


def test_difference_in_percentage_points(records):
    table = accuracy_table(count_slices(records))
    delta = difference_pp(table["pad30s-zero-late"], table["original"])
    for column in COLUMNS:
        assert math.isclose(delta[column], table["pad30s-zero-late"][column] - table["original"][column])
    assert difference_pp({"animal-multi": 50.0}, {"emotion-multi": 10.0}) == {}


def test_metric_matches_counts_from_the_file_and_ignores_repeats(records):
    metric = SakuraAccuracy()
    metric.update(records[:30])
    metric.update(records[25:] + records[:5])  # resumed answers and sampler padding come back
    assert metric.num_answers == len(records) + 10
    assert metric.compute() == count_slices(records)


def test_first_occurrence_of_a_key_wins_like_in_the_merged_file(records):
    duplicate = dict(records[0], judgement="correct" if records[0]["judgement"] != "correct" else "incorrect")
    metric = SakuraAccuracy()
    metric.update(records + [duplicate])
    assert metric.compute() == count_slices(records)


def test_flat_metrics_for_the_logger(records):
    flat = flat_metrics(count_slices(records))
    table = accuracy_table(count_slices(records))
    assert flat["test/acc/original/emotion-single"] == table["original"]["emotion-single"]
    assert flat["test/questions"] == len(records)


def _shares(records, world):
    """What each rank of a DDP test run sees: Lightning's sampler, which pads with repeats."""
    return [[records[i] for i in DistributedSampler(records, num_replicas=world, rank=r, shuffle=False)] for r in range(world)]


def test_simulated_ranks_give_the_single_process_metrics():
    records = synthetic_records(n_clips=5)[:-1]  # 79 questions: the sampler pads rank 1
    shares = _shares(records, 2)
    assert sum(map(len, shares)) == len(records) + 1
    metrics = []
    for share in shares:
        m = SakuraAccuracy()
        for i in range(0, len(share), 4):
            m.update(share[i : i + 4])
        metrics.append(m)
    metrics[0].merge_state(metrics[1])  # what the all-gather does, without processes
    assert metrics[0].compute() == count_slices(records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, records: list, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        metric = SakuraAccuracy()
        share = _shares(records, world)[rank]
        if rank == 0:
            share = share + records[:3]  # answers of an interrupted run fed on one rank only
        for i in range(0, len(share), 4):
            metric.update(share[i : i + 4])
        results[rank] = [c.as_dict() for c in metric.compute()]

        # a rank with nothing to add (all of its questions were answered before a restart)
        lopsided = SakuraAccuracy()
        if rank == 0:
            lopsided.update(records)
        results[("lopsided", rank)] = [c.as_dict() for c in lopsided.compute()]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_metrics():
    records = synthetic_records(n_clips=5, variants=("original", "pad15s-noise-early", "zero_audio"))[:-1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), records, results), nprocs=2, join=True)
        results = dict(results)
    expected = [c.as_dict() for c in count_slices(records)]
    assert results[0] == expected
    assert results[1] == expected
    assert results[("lopsided", 0)] == results[("lopsided", 1)] == expected
    assert {SliceKey(d["track"], d["hop"], d["variant"]) for d in expected} == {
        SliceKey(r["track"], r["hop"], r["variant"]) for r in records
    }


def test_table_columns_append_other_tracks_after_the_study_ones():
    assert table_columns(COLUMNS) == COLUMNS
    assert table_columns([]) == COLUMNS
    present = ["synthetic-single", "animal-multi", AVERAGE, "birds-multi", "synthetic-multi", "synthetic-single"]
    assert table_columns(present) == (*COLUMNS, "birds-multi", "synthetic-multi", "synthetic-single")
