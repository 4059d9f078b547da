"""The evaluation-throughput benchmark at toy size: real ``salmonn-pl test`` runs that answer alike,
every stage timer firing, exclusive stage times, and its RESULTS.md section replaced.

Correctness only: no figure is asserted, since CI machines differ in speed.
"""

import math

import pytest
import yaml
from tests.helpers.bench_scripts import load_script, needs_mini
from tests.helpers.golden import REPO_ROOT, SAKURA_MINI

bench = load_script("bench_eval_throughput", "eval_throughput.py")


@pytest.mark.slow
@needs_mini
def test_toy_run_times_every_stage_and_batched_runs_answer_like_the_per_sample_loop(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## eval_throughput\n\nstale figures\n\n## features\n\nkept\n")
    limit, new_tokens = 1, 3  # 4 tracks x 2 hops x 1 question under every condition of a workload

    report = bench.main(root=SAKURA_MINI, limit=limit, batch_sizes=[1, 4], greedy_batch_sizes=[4],
                        max_new_tokens=new_tokens, warmup=False, repeats=1, results=results)

    assert list(report.workloads) == ["padding", "ablation"]
    # The ablation workload is configs/ablation_sweep.yaml's list of conditions.
    recipe = yaml.safe_load((REPO_ROOT / "configs" / "ablation_sweep.yaml").read_text())
    assert list(report.workloads["ablation"].workload.variants) == recipe["data"]["init_args"]["variants"]
    variant_names = {
        "padding": {"original", "pad15s-noise-middle"},
        "ablation": {"original", "zero_beats", "zero_whisper", "zero_audio", "no_audio", "no_options"},
    }
    batched = bench.RunSpec(4, "left", bench.OFFICIAL_BEAMS)
    greedy = bench.RunSpec(4, "left", 1)
    for name, load in report.workloads.items():
        assert list(load.runs) == [bench.PER_SAMPLE_LOOP, bench.RunSpec(1, "left", bench.OFFICIAL_BEAMS), batched, greedy]
        questions = 4 * 2 * limit * len(load.workload.variants)
        for spec, runs in load.runs.items():
            (run,) = runs
            assert run.questions == questions and len(run.responses) == questions
            assert {variant for _, variant in run.responses} == variant_names[name]
            assert run.batches == math.ceil(questions / spec.batch_size)
            assert 0 < run.decode_steps <= run.batches * (new_tokens - 1)
            # Exclusive times add up to the loop: nothing is counted twice.
            assert run.stage_seconds[bench.UNTIMED] >= 0
            assert sum(run.stage_seconds.values()) == pytest.approx(run.loop_seconds, rel=1e-6)
            # Every stage timer fires (a renamed function would leave its stage at zero).
            silent = [stage for stage, seconds in run.stage_seconds.items() if seconds <= 0 and stage != bench.UNTIMED]
            assert silent == []

        # The per-sample loop encodes every question's audio, as the official inference does: one
        # Whisper pass per question under a condition that keeps Whisper's output. Batched runs
        # encode a clip once for all its questions.
        whisper_questions = 8 * limit * sum(1 for v in load.workload.variants if v.get("ablation", "none") in
                                             ("none", "zero_beats"))
        per_sample, batched_run = load.runs[bench.PER_SAMPLE_LOOP][0], load.runs[batched][0]
        assert per_sample.stage_calls["Whisper encoder"] == whisper_questions
        assert batched_run.stage_calls["Whisper encoder"] < whisper_questions

        # Right padding at batch 1 is the left layout without pads; left-padded batches decode every
        # row as if alone, and shared audio encodings are the row's own: the same beam-search answers
        # as the per-sample loop, question by question.
        assert load.speedup(bench.PER_SAMPLE_LOOP) == 1.0
        assert load.agreement(bench.RunSpec(1, "left", bench.OFFICIAL_BEAMS)) == 1.0
        assert load.agreement(batched) == 1.0

    # The operators of the largest batched run of the first workload were profiled.
    profile = report.workloads["padding"].op_profile
    assert report.workloads["ablation"].op_profile is None
    assert profile.spec == batched and profile.questions == 8 * limit * 2
    assert 0 < len(profile.ops) <= bench.PROFILE_TOP_OPS
    assert 0 < sum(seconds for _, seconds, _ in profile.ops) <= profile.total_seconds

    text = results.read_text()
    assert "stale figures" not in text and "## features\n\nkept" in text
    section = text.split("## eval_throughput", 1)[1].split("## features", 1)[0]
    assert "### Workload `padding`: 16 questions" in section and "### Workload `ablation`: 48 questions" in section
    assert section.count("| per-sample loop (official) | 1 | right | 4 |") == 2
    assert section.count("| batch 4, greedy | 4 | left | 1 |") == 2
    assert "- `padding`: batched >= 10x the per-sample loop at batch 16: not measured" in section
    for stage in bench.stage_names():
        assert section.count(f"| {stage} |") == 2


def test_unknown_workload_is_named_in_the_error():
    with pytest.raises(ValueError, match="padding.*ablation.*got \\['paddign'\\]|ablation.*padding.*paddign"):
        bench.main(root=SAKURA_MINI, workload=["paddign"])


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
