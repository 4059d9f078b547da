"""Result files are replaced whole or not at all: a write that fails half-way (a full disk) keeps
the previous file and raises an error naming it."""

import errno
import io
import json
import math

import pytest

from salmonn_pl.eval.evaluator import write_run_outputs
from salmonn_pl.eval.files import ResultWriteError, dumps_strict, write_json_atomic


class _DiskFullAfter:
    """A text file whose writes stop with ENOSPC once ``budget`` characters went through."""

    def __init__(self, handle, budget: int) -> None:
        self._handle, self._budget = handle, budget

    def write(self, text: str) -> int:
        room = max(0, self._budget)
        self._handle.write(text[:room])
        self._budget -= len(text)
        if self._budget < 0:
            self._handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(text)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.fixture
def disk_full_for(monkeypatch):
    """``disk_full_for(name)``: every file opened for writing whose name contains ``name`` fills up after 10 characters."""
    real_open = io.open

    def arm(name: str) -> None:
        def open_(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            return _DiskFullAfter(handle, 10) if name in str(file) and "w" in mode else handle

        monkeypatch.setattr(io, "open", open_)

    return arm


@pytest.mark.parametrize("name", ["metrics.json", "report.md", "sakura_results/original/Animal_salmonn_single.json"])
def test_a_full_disk_keeps_the_previous_result_files(tmp_path, records, disk_full_for, name):
    write_run_outputs(tmp_path, records, run_name="run")
    path = tmp_path / name
    before = path.read_text()

    disk_full_for(path.name)
    with pytest.raises(ResultWriteError, match=rf"could not write {path}: No space left on device"):
        write_run_outputs(tmp_path, [r for r in records if r["judgement"] == "correct"], run_name="run")
    assert path.read_text() == before
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name], "a temporary file was left behind"


def test_json_results_are_strict(tmp_path):
    document = {"accuracy": float("nan"), "scores": [1.0, float("inf")], "nested": {"x": -float("inf")}}
    assert json.loads(dumps_strict(document)) == {"accuracy": None, "scores": [1.0, None], "nested": {"x": None}}
    path = write_json_atomic(tmp_path / "m.json", document)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert math.isnan(document["accuracy"])  # the caller's document is left as it was
