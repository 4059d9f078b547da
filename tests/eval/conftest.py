"""Fixtures of the evaluation tests (helpers live in eval_records.py, importable by spawned processes)."""

import pytest
from eval_records import synthetic_records


@pytest.fixture
def records() -> list[dict]:
    return synthetic_records()
