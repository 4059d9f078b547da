"""``salmonn-pl test`` on a selection without questions fails, saying why, instead of exiting 0 with nothing."""

import shutil
import subprocess

import pytest

from tests.helpers.cli_runs import DEMO_SAKURA, cli_command, subprocess_env, write_config


def _run(config, *overrides):
    return subprocess.run(cli_command(config, *overrides), env=subprocess_env(), capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.slow
def test_empty_track_and_zero_limit_fail_with_the_reason(tiny_files, tmp_path):
    root = tmp_path / "sakura"
    shutil.copytree(DEMO_SAKURA, root)
    metadata = root / "data" / "Synthetic" / "metadata.csv"
    metadata.write_text(metadata.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_files, out)

    empty = _run(config, "--data.init_args.root", str(root))
    assert empty.returncode != 0
    assert f"{metadata}: no questions" in empty.stderr
    assert not (out / "metrics.json").exists() and not (out / "report.md").exists()

    zero = _run(config, "--data.init_args.limit", "0")
    assert zero.returncode != 0
    assert "data.limit must be a positive integer or null, got 0" in zero.stderr
    assert not (out / "metrics.json").exists()
