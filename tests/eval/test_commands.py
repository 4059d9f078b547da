"""The evaluator used by `salmonn-pl test` (resume, DDP) and the salmonn-pl-eval subcommands."""

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.helpers.eval_records import pad_sweep_variants, synthetic_examples
from tests.eval.test_judge_llm import ScriptedChatServer
from torch.utils.data import DistributedSampler

from salmonn_pl.eval.commands import main
from salmonn_pl.eval.evaluator import SakuraEvaluator
from salmonn_pl.eval.metrics import count_slices
from salmonn_pl.eval.predictions import PREDICTIONS_FILE, read_jsonl, read_predictions, record_key


def _run(evaluator: SakuraEvaluator, examples, batch_size: int = 5, stop_after: int | None = None):
    """Feed examples in batches as test_step would; returns the number of answers generated."""
    generated = 0
    for n, start in enumerate(range(0, len(examples), batch_size)):
        if stop_after is not None and n == stop_after:
            return generated
        batch = examples[start : start + batch_size]
        ids, metas, responses = (list(x) for x in zip(*batch))
        todo = evaluator.pending(ids, metas)
        generated += len(todo)
        if todo:
            evaluator.add([ids[i] for i in todo], [metas[i] for i in todo], [responses[i] for i in todo])
    return generated


def _metrics(path):
    document = json.loads((path / "metrics.json").read_text())
    return document["overall"], document["slices"]


@pytest.fixture(scope="module")
def examples():
    variants = pad_sweep_variants()
    return synthetic_examples(n_clips=2, variants={k: variants[k] for k in ("original", "pad30s-zero-late", "zero_audio")})


def test_a_run_writes_every_output(tmp_path, examples):
    evaluator = SakuraEvaluator(str(tmp_path), run_name="demo")
    evaluator.start()
    assert _run(evaluator, examples) == len(examples)
    counts = evaluator.finish(logger=[object()])  # loggers other than W&B are left alone

    records = read_jsonl(tmp_path / PREDICTIONS_FILE)
    assert len(records) == len(examples)
    assert {r["judgement"] for r in records} == {"correct", "incorrect", "unjudged"}
    assert counts == count_slices(records)
    overall, slices = _metrics(tmp_path)
    assert overall["questions"] == len(examples) and len(slices) == 3 * 8
    assert (tmp_path / "report.md").read_text().startswith("# SAKURA results")
    assert len(list((tmp_path / "sakura_results").glob("*/*.json"))) == 3 * 8
    log = evaluator.log_dict(counts)
    assert log["test/questions"] == len(examples)


def test_killing_a_run_and_rerunning_it_gives_the_same_metrics(tmp_path, examples):
    whole = SakuraEvaluator(str(tmp_path / "whole"))
    whole.start()
    _run(whole, examples)
    whole.finish()

    killed = SakuraEvaluator(str(tmp_path / "resumed"))
    killed.start()
    done_before_kill = _run(killed, examples, stop_after=7)
    killed.store.close()  # the process dies: no finish, the last line torn
    path = tmp_path / "resumed" / PREDICTIONS_FILE
    path.write_bytes(path.read_bytes()[:-25])

    resumed = SakuraEvaluator(str(tmp_path / "resumed"))
    resumed.start()
    regenerated = _run(resumed, examples)
    resumed.finish()

    assert regenerated == len(examples) - done_before_kill + 1  # only the torn answer is redone
    assert _metrics(tmp_path / "whole") == _metrics(tmp_path / "resumed")
    records = read_jsonl(path)
    assert len(records) == len({record_key(r) for r in records}) == len(examples)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, output_dir, examples):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        evaluator = SakuraEvaluator(output_dir)
        evaluator.start(rank=rank, world_size=world)
        share = [examples[i] for i in DistributedSampler(examples, num_replicas=world, rank=rank, shuffle=False)]
        _run(evaluator, share, batch_size=4)
        counts = evaluator.finish()
        with open(f"{output_dir}/counts.rank{rank}.json", "w") as f:
            json.dump([c.as_dict() for c in counts], f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_metrics(tmp_path, examples):
    examples = examples[:-1]  # uneven: Lightning's sampler repeats a question on the last rank
    single = SakuraEvaluator(str(tmp_path / "single"))
    single.start()
    _run(single, examples)
    single.finish()

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), examples), nprocs=2, join=True)
    assert _metrics(tmp_path / "single") == _metrics(tmp_path / "ddp")
    per_rank = [json.loads((tmp_path / "ddp" / f"counts.rank{r}.json").read_text()) for r in range(2)]
    assert per_rank[0] == per_rank[1] == _metrics(tmp_path / "single")[1]
    assert not list((tmp_path / "ddp").glob("predictions.rank*.jsonl"))
    assert len(read_jsonl(tmp_path / "ddp" / PREDICTIONS_FILE)) == len(examples)


@pytest.fixture
def finished_run(tmp_path, examples):
    evaluator = SakuraEvaluator(str(tmp_path / "run"))
    evaluator.start()
    _run(evaluator, examples)
    evaluator.finish()
    return tmp_path / "run"


@pytest.mark.slow
def test_rejudge_compare_and_report_from_the_command_line(tmp_path, finished_run, capsys):
    server = ScriptedChatServer()
    server.thread.start()
    try:
        main(["rejudge", "--predictions", str(finished_run), "--output", str(tmp_path / "llm"),
              "--judge", "LLMJudge", "--judge.base_url", server.url, "--judge.model", "judge",
              "--judge.cache_dir", str(tmp_path / "cache"), "--judge.timeout", "5"])
        asked = server.total
        main(["rejudge", "--predictions", str(finished_run), "--output", str(tmp_path / "llm-again"),
              "--judge", "LLMJudge", "--judge.base_url", server.url, "--judge.model", "judge",
              "--judge.cache_dir", str(tmp_path / "cache")])
        assert server.total == asked  # re-judging costs nothing
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()

    original, rejudged = read_predictions(finished_run), read_predictions(tmp_path / "llm")
    assert [r["response"] for r in original] == [r["response"] for r in rejudged]
    assert {r["judge"] for r in rejudged} == {"llm:judge"}
    assert all(r["judgement"] in ("correct", "incorrect") for r in rejudged)
    assert (tmp_path / "llm" / "metrics.json").exists() and (tmp_path / "llm" / "report.md").exists()

    main(["compare", "--a", str(finished_run), "--b", str(tmp_path / "llm"), "--output", str(tmp_path / "cmp")])
    comparison = json.loads((tmp_path / "cmp" / "consistency.json").read_text())
    assert comparison["total"] == comparison["equal"] == len(original)
    agreement = comparison["agreement"]
    agree = sum(x["judgement"] == y["judgement"] for x, y in zip(original, rejudged))
    assert (agreement["judge_a"], agreement["judge_b"]) == ("rule", "llm:judge")
    assert agreement["compared"] == len(original) and agreement["agree"] == agree
    # the rule judge is never more lenient than a grader that accepts any mention of the answer
    assert agreement["confusion"]["correct"]["incorrect"] == 0

    main(["report", "--runs", json.dumps([str(finished_run), str(tmp_path / "llm")]), "--baseline", str(finished_run),
          "--output", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| run / llm / original |" not in text and "| llm / original |" in text
    assert "## Delta vs baseline run" in text
    assert "SALMONN (published)" in capsys.readouterr().out


def test_report_is_written_beside_the_runs_not_in_the_working_directory(tmp_path, monkeypatch, capsys):
    from tests.helpers.eval_records import judged_records

    runs = []
    for name in ("a", "b"):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judged_records(n_clips=2)))
        runs.append(str(run))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    main(["report", "--runs", json.dumps(runs)])
    assert (tmp_path / "runs" / "sakura_report" / "report.md").is_file()
    assert list(workdir.iterdir()) == []
