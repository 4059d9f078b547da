"""``salmonn-pl`` as a user meets it: where a run writes, what an error says first, what --help says,
short judge names, and which messages are shown."""

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from salmonn_pl.cli import build_cli, configure_messages, cpu_warnings, take_verbose_flag
from salmonn_pl.eval.judge_llm import LLMJudge

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def _demo_with_absolute_paths(path: Path) -> Path:
    """configs/demo.yaml as is, with its bundled-asset paths made absolute (so it runs from any directory)."""
    path.write_text(DEMO.read_text().replace(" assets/", f" {REPO / 'assets'}/"))
    return path


@pytest.mark.slow
def test_output_dir_moves_the_whole_run(tmp_path):
    """Two runs of one config with different --model.output_dir: each directory holds its own
    config.yaml, W&B run and report, and nothing is written anywhere else."""
    config = _demo_with_absolute_paths(tmp_path / "demo.yaml")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO / "src")}
    env.pop("WANDB_DIR", None)
    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, "-m", "salmonn_pl.cli", "test", "--config", str(config),
             "--model.output_dir", str(tmp_path / name), "--data.init_args.limit", "1"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
    for name in ("a", "b"):
        run = tmp_path / name
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["model"]["output_dir"] == str(run)
        assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(run)
        assert list((run / "wandb").glob("offline-run-*"))
        assert (run / "report.md").is_file() and (run / "metrics.json").is_file()
    assert list(workdir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "cwd", "demo.yaml"]


def test_checkpoints_without_a_dirpath_go_to_the_output_dir(tmp_path):
    cli = build_cli(["--config", str(REPO / "configs" / "synthetic_fit.yaml"), "--model.output_dir", str(tmp_path)],
                    run=False)
    checkpoint = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ModelCheckpoint")
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints"
    assert Path(cli.trainer.logger.save_dir) == tmp_path


def _error_lines(args, capsys) -> list[str]:
    with pytest.raises(SystemExit) as done:
        build_cli(args)
    assert done.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_a_typo_on_the_command_line_names_the_closest_key_first(capsys):
    lines = _error_lines(["test", "--config", str(DEMO), "--model.outptu_dir", "x"], capsys)
    assert lines[0] == "error: unrecognized arguments: --model.outptu_dir x"
    assert lines[1] == "model.outptu_dir: did you mean model.output_dir?"
    assert len(lines) <= 4  # no usage dump


def test_a_typo_in_a_config_file_names_the_closest_key_first(tmp_path, capsys):
    (tmp_path / "typo.yaml").write_text("model:\n  model:\n    llm_dtyp: float32\n")
    lines = _error_lines(["test", "--config", str(DEMO), "--config", str(tmp_path / "typo.yaml")], capsys)
    assert "model.model.llm_dtyp" in lines[0]
    assert lines[1] == "model.model.llm_dtyp: did you mean model.model.llm_dtype?"


def test_a_bad_value_names_the_key_the_value_and_the_allowed_values(capsys):
    lines = _error_lines(["test", "--config", str(DEMO), "--model.model.llm_dtype", "float8"], capsys)
    text = "\n".join(lines[:3])
    assert lines[0].startswith("error:") and "model.model.llm_dtype" in lines[0]
    assert "float8" in text and "'float32', 'float16', 'bfloat16'" in text


def test_help_says_what_the_tool_is_and_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        build_cli(["--help"])
    text = capsys.readouterr().out
    assert "SALMONN" in text and "SAKURA" in text
    for command in ("salmonn-pl test", "salmonn-pl fit", "configs/tiny.yaml", "salmonn-pl-eval", "salmonn-pl-probe"):
        assert command in text, command


def test_judge_short_class_name(tmp_path):
    cli = build_cli(["--config", str(DEMO), "--model.output_dir", str(tmp_path), "--model.judge", "LLMJudge",
                     "--model.judge.base_url", "http://localhost:8000/v1", "--model.judge.model", "judge-model"],
                    run=False)
    assert isinstance(cli.model.judge, LLMJudge) and cli.model.judge.model == "judge-model"


def test_verbose_flag_is_taken_and_lightnings_verbose_value_left():
    assert take_verbose_flag(["test", "--verbose", "--config", "c.yaml"]) == (["test", "--config", "c.yaml"], True)
    args, verbose = take_verbose_flag(["test", "--verbose", "false"])
    assert args == ["test", "--verbose", "false"] and verbose is (os.environ.get("SALMONN_PL_VERBOSE", "") not in ("", "0"))


@pytest.fixture
def restored_logging():
    names = ("lightning.pytorch", "transformers", "wandb")
    levels = {name: logging.getLogger(name).level for name in names}
    silent = os.environ.get("WANDB_SILENT")
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    if silent is None:
        os.environ.pop("WANDB_SILENT", None)


def _shown(verbose: bool) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_messages(verbose)
        warnings.warn_explicit("old API is deprecated", DeprecationWarning, "x.py", 1, module="transformers.x")
        warnings.warn_explicit("Found 3 module(s) in eval mode at the start of testing.", UserWarning, "x.py", 1,
                               module="lightning.pytorch.loops")
        warnings.warn_explicit("the project's own warning", UserWarning, "x.py", 1, module="salmonn_pl.data.sakura")
    return [str(w.message) for w in caught]


def test_quiet_by_default_and_verbose_brings_messages_back(restored_logging):
    assert _shown(verbose=False) == ["the project's own warning"]
    assert logging.getLogger("lightning.pytorch").level == logging.ERROR
    assert logging.getLogger("salmonn_pl").getEffectiveLevel() == logging.INFO
    logging.getLogger("lightning.pytorch").setLevel(logging.NOTSET)
    assert len(_shown(verbose=True)) == 3
    assert logging.getLogger("lightning.pytorch").level == logging.NOTSET


def _config(accelerator="cpu", llm_dtype="float16", autocast="float16", workers=4) -> Namespace:
    return Namespace(trainer=Namespace(accelerator=accelerator),
                     model=Namespace(model=Namespace(llm_dtype=llm_dtype, autocast_dtype=autocast)),
                     data=Namespace(init_args=Namespace(num_workers=workers)))


def test_cpu_runs_warn_about_half_precision_and_too_many_workers():
    messages = cpu_warnings(_config(), cuda_available=False, cpu_count=2)
    assert len(messages) == 2
    assert "model.model.llm_dtype=float16" in messages[0] and "configs/tiny.yaml" in messages[0]
    assert "num_workers=4" in messages[1] and "2 CPU cores" in messages[1]
    assert cpu_warnings(_config("auto"), cuda_available=True, cpu_count=2) == []
    assert cpu_warnings(_config(llm_dtype="float32", autocast="none", workers=0), cuda_available=False, cpu_count=2) == []
