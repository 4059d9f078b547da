import pytest


@pytest.fixture(scope="session")
def synthetic_task(tmp_path_factory):
    """A tiny synthetic audio multiple-choice task: 8 train items (4 clips x 2 hops) and 2 val items."""
    from salmonn_pl.data.synthetic import write_synthetic_task

    return write_synthetic_task(tmp_path_factory.mktemp("synthetic-task"), n_train=4, n_val=1, n_test=1, seed=0)
