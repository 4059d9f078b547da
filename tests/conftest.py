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


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """A random tiny SALMONN in the official on-disk formats (written once per test session)."""
    from salmonn_pl.model.tiny import write_tiny_salmonn

    return write_tiny_salmonn(tmp_path_factory.mktemp("tiny-salmonn"), seed=0)


@pytest.fixture(scope="session")
def tiny_config(tiny_files):
    from salmonn_pl.model.salmonn import SalmonnConfig
    from salmonn_pl.model.tiny import tiny_qformer_settings

    return SalmonnConfig(
        **{k: str(v) for k, v in tiny_files.items()},
        qformer=tiny_qformer_settings(),
        llm_dtype="float32",
    )


@pytest.fixture(scope="session")
def tiny_salmonn(tiny_config):
    """The tiny SALMONN in fp32, eval mode. Shared by the session: tests must not modify it."""
    from salmonn_pl.model.salmonn import Salmonn

    return Salmonn(tiny_config).eval()
