"""The evaluation-throughput benchmark at toy size: real ``salmonn-pl test`` runs that answer alike,
every stage timer firing, exclusive stage times, and its RESULTS.md section replaced.

Correctness only: no figure is asserted, since CI machines differ in speed.
"""

import math

import pytest
import torch
from bench_scripts import load_script, needs_mini
from golden import SAKURA_MINI

bench = load_script("bench_eval_throughput", "eval_throughput.py")


@needs_mini
def test_toy_run_times_every_stage_and_batched_runs_answer_like_the_per_sample_loop(tmp_path):
    torch.set_num_threads(1)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## eval_throughput\n\nstale figures\n\n## features\n\nkept\n")
    limit, copies, new_tokens = 1, 2, 3  # 4 tracks x 2 hops x 1 question, asked twice: 16 questions

    report = bench.main(root=SAKURA_MINI, limit=limit, copies=copies, batch_sizes=[1, 4], greedy_batch_sizes=[4],
                        max_new_tokens=new_tokens, warmup=False, repeats=1, results=results)

    batched = bench.RunSpec(4, "left", bench.OFFICIAL_BEAMS)
    greedy = bench.RunSpec(4, "left", 1)
    assert list(report.runs) == [bench.PER_SAMPLE_LOOP, bench.RunSpec(1, "left", bench.OFFICIAL_BEAMS), batched, greedy]
    questions = 4 * 2 * limit * copies
    for spec, runs in report.runs.items():
        (run,) = runs
        assert run.questions == questions and len(run.responses) == questions
        assert {variant for _, variant in run.responses} == {"copy1", "copy2"}
        assert run.batches == math.ceil(questions / spec.batch_size)
        assert 0 < run.decode_steps <= run.batches * (new_tokens - 1)
        # Exclusive times add up to the loop: nothing is counted twice.
        assert run.stage_seconds[bench.UNTIMED] >= 0
        assert sum(run.stage_seconds.values()) == pytest.approx(run.loop_seconds, rel=1e-6)
        # Every stage timer fires (a renamed function would leave its stage at zero).
        silent = [stage for stage, seconds in run.stage_seconds.items() if seconds <= 0 and stage != bench.UNTIMED]
        assert silent == []

    # Right padding at batch 1 is the left layout without pads; left-padded batches decode every
    # row as if alone: the same beam-search answers as the per-sample loop, question by question.
    assert report.speedup(bench.PER_SAMPLE_LOOP) == 1.0
    assert report.agreement(bench.RunSpec(1, "left", bench.OFFICIAL_BEAMS)) == 1.0
    assert report.agreement(batched) == 1.0

    # The operators of the largest batched run were profiled.
    profile = report.op_profile
    assert profile.spec == batched and profile.questions == 8 * limit
    assert 0 < len(profile.ops) <= bench.PROFILE_TOP_OPS
    assert 0 < sum(seconds for _, seconds, _ in profile.ops) <= profile.total_seconds

    text = results.read_text()
    assert "stale figures" not in text and "## features\n\nkept" in text
    section = text.split("## eval_throughput", 1)[1].split("## features", 1)[0]
    assert "| per-sample loop (official) | 1 | right | 4 |" in section
    assert "| batch 4, greedy | 4 | left | 1 |" in section
    assert "at batch 16: not measured" in section
    for stage in bench.stage_names():
        assert f"| {stage} |" in section


def test_stage_clock_counts_exclusive_time_and_restores_what_it_patched():
    now = [0.0]

    class Pipeline:
        def outer(self) -> str:
            now[0] += 1.0
            inner = self.inner()
            now[0] += 2.0
            return "outer+" + inner

        def inner(self) -> str:
            now[0] += 10.0
            return "inner"

    original_outer, original_inner = Pipeline.__dict__["outer"], Pipeline.__dict__["inner"]
    clock = bench.StageClock(clock=lambda: now[0])
    with clock.patched([("outer", Pipeline, "outer"), ("inner", Pipeline, "inner")]):
        assert Pipeline().outer() == "outer+inner"
        assert Pipeline().inner() == "inner"

    assert clock.seconds == {"outer": 3.0, "inner": 20.0}
    assert clock.calls == {"outer": 1, "inner": 2}
    assert Pipeline.__dict__["outer"] is original_outer and Pipeline.__dict__["inner"] is original_inner
