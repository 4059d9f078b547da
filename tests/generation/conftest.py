import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Decoding comparisons are exact; one thread keeps float reductions in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
