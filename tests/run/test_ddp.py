"""``salmonn-pl test`` on 2 CPU processes (DDP, gloo) writes the same results as on 1 process.

Lightning's DistributedSampler pads the ranks to equal length with repeated questions: 5 questions
on 2 ranks give 6 slots, so one question is answered twice. It must be counted once, and none lost.
"""

import pytest
from tests.helpers.cli_runs import metrics, prediction_lines, run_subprocess, run_test, write_config

QUESTIONS = 5  # odd, so that the sampler repeats a question


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one(tiny_files, tmp_path):
    one, two = tmp_path / "one-process", tmp_path / "two-processes"
    settings = {"batch_size": 2, "limit": QUESTIONS, "hops": ("single",)}
    run_test(write_config(tmp_path / "one.yaml", tiny_files, one, **settings))
    run_subprocess(write_config(tmp_path / "two.yaml", tiny_files, two, **settings),
                   "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu")

    assert metrics(two) == metrics(one)
    assert metrics(two)["overall"]["questions"] == QUESTIONS
    lines = prediction_lines(two)
    keys = [(r["id"], r["variant"]) for r in lines]
    assert len(keys) == len(set(keys)) == QUESTIONS
    assert {(r["id"], r["variant"]): r for r in lines} == {(r["id"], r["variant"]): r for r in prediction_lines(one)}
    assert not list(two.glob("predictions.rank*.jsonl")), "rank shards were not merged"
    # Each rank answered one contiguous block of the questions (ContiguousDistributedSampler keeps a
    # clip's questions on one rank), so rank 0's shard followed by rank 1's is the one-process order;
    # Lightning's default sampler would have dealt them out in turn (0, 2, 4 | 1, 3).
    assert keys == [(r["id"], r["variant"]) for r in prediction_lines(one)]
    assert (two / "report.md").read_text() == (one / "report.md").read_text()
