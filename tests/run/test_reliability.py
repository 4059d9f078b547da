"""What ``salmonn-pl test`` guarantees about its results (README "Reliability"): nothing that is
not a verdict is counted, a re-run resumes only the same run and says what it finds, a failing
question is handled by the data's ``on_error`` policy, and one output directory serves one run."""

import json
import shutil
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from tests.helpers.cli_runs import (
    metrics,
    prediction_lines,
    run_test,
    strict_prediction_lines,
    subprocess_env,
    write_config,
)

from salmonn_pl.eval.fingerprint import RunMismatch
from salmonn_pl.eval.run_lock import OutputDirLocked
from salmonn_pl.lit_module import BrokenRun, QuestionFailed

# End-to-end: subprocesses or whole `salmonn-pl test` runs.
pytestmark = pytest.mark.slow

OPTION_SCORING = ("--model.decoder", "OptionScoring")


def _keys(records):
    return [(r["id"], r["variant"]) for r in records]


# -- non-finite outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["Generate", "OptionScoring"])
def test_a_question_with_nan_output_is_an_error_not_an_answer(tiny_files, tmp_path, decoder):
    out = tmp_path / "out"
    nan = {"class_path": "tests.helpers.cli_runs.NaNAudioTokens", "init_args": {"file": "test_00001.wav"}}
    run_test(write_config(tmp_path / "c.yaml", tiny_files, out, limit=3, callbacks=[nan]), "--model.decoder", decoder)

    records = strict_prediction_lines(out)
    broken = [r for r in records if r["id"].endswith("test_00001.wav")]
    assert len(records) == 6 and len(broken) == 2
    for record in broken:
        assert record["judgement"] == "error" and "non-finite" in record["error"]
        assert record["judge"] is None  # never judged
    assert all(r["judgement"] in ("correct", "incorrect", "unjudged") for r in records if r not in broken)
    document = metrics(out)
    assert document["overall"]["questions"] == 4 and document["overall"]["errors"] == 2
    assert sorted(e["id"] for e in document["errors"]) == sorted(r["id"] for r in broken)
    sakura = [json.loads(p.read_text()) for p in (out / "sakura_results").rglob("*.json")]
    assert not any("test_00001.wav" in doc["results"] for doc in sakura)


def test_a_batch_of_one_clip_with_nan_output_is_one_bad_clip_not_a_broken_model(tiny_files, tmp_path):
    out = tmp_path / "out"
    nan = {"class_path": "tests.helpers.cli_runs.NaNAudioTokens", "init_args": {"file": "test_00001.wav"}}
    # Batches of 2 hold one clip's two questions: the second batch fails entirely, about one audio.
    run_test(write_config(tmp_path / "c.yaml", tiny_files, out, limit=3, batch_size=2, callbacks=[nan]),
             *OPTION_SCORING)
    assert metrics(out)["overall"]["errors"] == 2 and metrics(out)["overall"]["questions"] == 4


def test_a_model_whose_every_output_is_nan_fails_the_run(tiny_files, tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_files, out, limit=2,
                          callbacks=[{"class_path": "tests.helpers.cli_runs.NaNWeights"}])
    with pytest.raises(BrokenRun, match="every question of test batch 0 failed.*non-finite"):
        run_test(config, *OPTION_SCORING)
    assert not (out / "predictions.jsonl").exists() or not prediction_lines(out)  # nothing taken as done
    assert not (out / "metrics.json").exists()


def test_all_errors_one_question_at_a_time_fails_the_run(tiny_files, tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_files, out, limit=2, batch_size=1, hops=("single",),
                          callbacks=[{"class_path": "tests.helpers.cli_runs.NaNWeights"}])
    with pytest.raises(BrokenRun, match="none of the 2 questions got an answer"):
        run_test(config)
    assert metrics(out)["overall"]["errors"] == 2  # still listed, for the user to see


# -- resuming ------------------------------------------------------------------------------------


def test_a_rerun_with_another_setting_stops_before_any_work(tiny_files, tmp_path, caplog):
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_files, out, batch_size=2, limit=2)
    run_test(config)
    before = {name: (out / name).read_text() for name in ("predictions.jsonl", "metrics.json", "config.yaml")}

    with pytest.raises(RunMismatch) as error:
        run_test(config, "--model.generation.max_new_tokens", "8", "--data.init_args.limit", "3")
    message = str(error.value)
    assert "module.generation.max_new_tokens: 6 -> 8" in message
    assert "data.limit: 2 -> 3" in message
    assert "--model.output_dir" in message
    assert {name: (out / name).read_text() for name in before} == before  # config.yaml not overwritten either

    # A change that does not touch the answers resumes (left padding answers alike in any batch size).
    caplog.set_level(logging.INFO, logger="salmonn_pl")
    run_test(config, "--data.init_args.batch_size", "3")
    assert f"resumed: 4 of 4 questions already answered in {out}; nothing to do" in caplog.text
    keys = _keys(prediction_lines(out))
    assert len(keys) == len(set(keys)) == 4


def test_a_partial_resume_says_how_many_are_left(tiny_files, tmp_path, caplog):
    out = tmp_path / "out"
    crash = {"class_path": "tests.helpers.cli_runs.FailAfterBatches", "init_args": {"batches": 1}}
    with pytest.raises(RuntimeError, match="injected failure"):
        run_test(write_config(tmp_path / "failing.yaml", tiny_files, out, batch_size=2, limit=3, callbacks=[crash]))
    caplog.set_level(logging.INFO, logger="salmonn_pl")
    run_test(write_config(tmp_path / "c.yaml", tiny_files, out, batch_size=2, limit=3))
    assert f"resumed: 2 of 6 questions already answered in {out}; 4 left" in caplog.text
    assert len(prediction_lines(out)) == 6


# -- per-question failures -----------------------------------------------------------------------

STRIPPED = ("--data.init_args.variants", "[{}, {strip_options: true}]")


def test_a_question_without_options_is_skipped_under_on_error_skip(tiny_files, tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_files, out, limit=2)
    run_test(config, *OPTION_SCORING, *STRIPPED, "--data.init_args.on_error", "skip")

    records = strict_prediction_lines(out)
    stripped = [r for r in records if r["variant"] != "original"]
    assert len(records) == 8 and len(stripped) == 4
    assert all(r["judgement"] == "error" and "no '(a) ... (b) ...' options" in r["error"] for r in stripped)
    document = metrics(out)
    assert document["overall"] == {**document["overall"], "questions": 4, "errors": 4}
    assert sorted(_keys(document["errors"])) == sorted(_keys(stripped))


def test_a_question_without_options_names_itself_under_on_error_raise(tiny_files, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_files, tmp_path / "out", limit=2)
    with pytest.raises(QuestionFailed, match=r"question Synthetic/single/test_00000\.wav \(variant no_options\)"):
        run_test(config, *OPTION_SCORING, *STRIPPED)


# -- one run per output directory ----------------------------------------------------------------


def test_a_second_run_on_a_busy_output_directory_is_refused(tiny_files, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from salmonn_pl.eval.run_lock import OutputDirLock
            lock = OutputDirLock({str(out)!r}).acquire()
            print("locked", flush=True)
            time.sleep(60)
        """)],
        env=subprocess_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = write_config(tmp_path / "c.yaml", tiny_files, out, limit=1)
        with pytest.raises(OutputDirLocked, match=rf"{out} is in use by another salmonn-pl run \(pid {holder.pid}"):
            run_test(config)
        assert not (out / "predictions.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    run_test(config)  # the lock went with the process
    assert len(prediction_lines(out)) == 2


def test_a_checkpoint_retrained_in_place_is_another_run(tiny_files, tmp_path):
    ckpt = tmp_path / "last.pth"
    shutil.copy(tiny_files["ckpt"], ckpt)
    files = {**tiny_files, "ckpt": ckpt}
    config = write_config(tmp_path / "c.yaml", files, tmp_path / "out", limit=1)
    run_test(config)

    state = torch.load(ckpt, weights_only=True)
    weights = state["model"] if "model" in state else state
    name = next(k for k, v in weights.items() if torch.is_floating_point(v))
    weights[name] = weights[name] + 0.01  # same path, same size, other weights
    torch.save(state, ckpt)
    with pytest.raises(RunMismatch, match=r"weights\.ckpt: \"\d+ bytes, blake2b \w+\" -> "):
        run_test(config)
