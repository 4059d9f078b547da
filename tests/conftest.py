import pytest
import torch

from tests.helpers.golden import golden_params
from tests.helpers.hub_cache import hf_home  # noqa: F401 (a fixture: an empty Hugging Face home)


def pytest_generate_tests(metafunc):
    if "golden" in metafunc.fixturenames:
        metafunc.parametrize("golden", golden_params())


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Every test, and every fixture, computes with one torch thread.

    The golden tensors were computed single-threaded (with more threads float outputs move by ~1e-6
    and near-tied argmaxes can flip), and the exact comparisons of the suite (a batch against one item
    at a time, a resumed run against an uninterrupted one) need one order of float reductions.
    Session-scoped so that module- and session-scoped fixtures run single-threaded too; tests must not
    change the thread count (processes they spawn set their own).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def qwen():
    """The bundled tiny Qwen2-Audio (assets/tiny-qwen2-audio), loaded once; tests must not change it."""
    from salmonn_pl.model.qwen2_audio import Qwen2Audio
    from tests.helpers.qwen2_audio import TINY_QWEN

    return Qwen2Audio.from_pretrained(TINY_QWEN)
