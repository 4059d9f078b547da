"""An interrupted ``salmonn-pl test`` re-run on the same output directory finishes with the metrics
of an uninterrupted run, and ``predictions.jsonl`` holds every question once."""

import signal
import subprocess
import time

import pytest
from tests.helpers.cli_runs import (
    cli_command,
    metrics,
    prediction_lines,
    responses,
    run_test,
    subprocess_env,
    write_config,
)

from salmonn_pl.eval.predictions import read_jsonl

LIMIT = 6  # clips per hop: 12 questions in batches of 2
BATCH_SIZE = 2


@pytest.fixture(scope="module")
def uninterrupted(tiny_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    run_test(write_config(root / "config.yaml", tiny_files, root / "out", batch_size=BATCH_SIZE, limit=LIMIT))
    return root / "out"


def _assert_same_results(resumed, reference) -> None:
    keys = [(r["id"], r["variant"]) for r in prediction_lines(resumed)]
    assert len(keys) == len(set(keys)) == 2 * LIMIT, "duplicate or missing questions in predictions.jsonl"
    assert responses(resumed) == responses(reference)
    assert metrics(resumed) == metrics(reference)


@pytest.mark.slow
def test_resume_after_an_exception(tiny_files, tmp_path, uninterrupted):
    out = tmp_path / "out"
    crash = {"class_path": "tests.helpers.cli_runs.FailAfterBatches", "init_args": {"batches": 2}}
    failing = write_config(tmp_path / "failing.yaml", tiny_files, out, batch_size=BATCH_SIZE, limit=LIMIT,
                           callbacks=[crash])
    with pytest.raises(RuntimeError, match="injected failure"):
        run_test(failing)
    assert len(prediction_lines(out)) == 2 * BATCH_SIZE
    assert not (out / "metrics.json").exists()

    run_test(write_config(tmp_path / "config.yaml", tiny_files, out, batch_size=BATCH_SIZE, limit=LIMIT))
    _assert_same_results(out, uninterrupted)


@pytest.mark.slow
def test_resume_after_the_process_is_killed(tiny_files, tmp_path, uninterrupted):
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_files, out, batch_size=BATCH_SIZE, limit=LIMIT)
    predictions = out / "predictions.jsonl"
    process = subprocess.Popen(cli_command(config), env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not (predictions.exists() and predictions.read_text().count("\n") >= 2 * BATCH_SIZE):
            assert process.poll() is None, f"the run ended before it could be killed:\n{process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no predictions appeared within 90 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    answered = len(read_jsonl(predictions))  # the kill may have cut the last line short
    assert 2 * BATCH_SIZE <= answered < 2 * LIMIT, f"killed after {answered} answers"
    assert not (out / "metrics.json").exists()
    # A kill in the middle of a write leaves half a line behind.
    with predictions.open("a") as f:
        f.write('{"id": "Synthetic/single/test_0')

    run_test(config)
    _assert_same_results(out, uninterrupted)
