import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from golden import golden_params  # noqa: E402


def pytest_generate_tests(metafunc):
    if "golden" in metafunc.fixturenames:
        metafunc.parametrize("golden", golden_params())


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
