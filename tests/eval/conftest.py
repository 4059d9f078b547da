"""Fixtures of the evaluation tests (helpers live in tests/helpers/eval_records.py, importable by spawned processes)."""

import pytest
from tests.helpers.eval_records import synthetic_records


@pytest.fixture
def records() -> list[dict]:
    return synthetic_records()
