"""Loading the ``bench/`` scripts (plain files, not a package) for the toy-size benchmark tests."""

import importlib.util
import sys

import pytest
from tests.helpers.golden import REPO_ROOT, SAKURA_MINI

BENCH = REPO_ROOT / "bench"
needs_mini = pytest.mark.skipif(not SAKURA_MINI.is_dir(), reason=f"no sakura-mini at {SAKURA_MINI}")


def load_script(name: str, filename: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


# The scripts import their shared helpers as `common`: loaded here under that name, `import common`
# finds it (in the scripts and in the tests) without the bench folder on sys.path.
common = load_script("common", "common.py")
