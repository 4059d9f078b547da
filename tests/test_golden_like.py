"""The golden-set tests hold for architectures other than tiny-v1's.

``scripts/make_golden_like.py`` writes golden-like sets (other widths and depths, LoRA rank 4 / alpha
16 and rank 16 / alpha 8, 2 query tokens per 0.5 s window, 1 s windows, stereo WAVs, no BEATs) with
reference tensors from salmonn-pl; every test that takes the ``golden`` fixture must pass on them, which
it does only if it reads the architecture from the set's files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.golden import REPO_ROOT, SHARED

SCRIPT = REPO_ROOT / "scripts" / "make_golden_like.py"
TINY_V1 = SHARED / "golden" / "tiny-v1"

pytestmark = pytest.mark.skipif(not (TINY_V1 / "manifest.json").is_file(), reason=f"needs {TINY_V1}")


def _generator():
    spec = importlib.util.spec_from_file_location("make_golden_like", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden_like(tmp_path_factory) -> list[Path]:
    generator = _generator()
    out = tmp_path_factory.mktemp("golden-like")
    return [generator.write_golden_like(out, name) for name in generator.PRESETS]


@pytest.mark.slow
def test_generated_sets_follow_the_golden_layout(golden_like: list[Path]):
    reference = json.loads((TINY_V1 / "manifest.json").read_text())
    reference_names = {t["name"] for t in reference["tensors"]}
    beats_names = {n for n in reference_names if ".beats_" in n}
    for path in golden_like:
        manifest = json.loads((path / "manifest.json").read_text())
        names = {t["name"] for t in manifest["tensors"]}
        expected = reference_names - beats_names if manifest["preset"]["nobeats_variant"] else reference_names
        assert names == expected, path.name
        assert set(manifest["info"]["variants"]["main"]["wavs"]) == {w["name"] for w in manifest["wavs"]}
        assert any(w["stereo"] for w in manifest["wavs"]), path.name


@pytest.mark.slow
def test_golden_tests_pass_on_other_architectures(golden_like: list[Path]):
    env = {**os.environ, "SALMONN_PL_GOLDEN": ":".join(str(p) for p in golden_like)}
    ids = " or ".join(p.name.split("-")[0] for p in golden_like)  # the sets' parameter ids
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", "--tb=short", "-k", ids,
         "--ignore", str(Path(__file__)), str(REPO_ROOT / "tests")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]
