"""One run per output directory: the second gets an error naming the directory and the holder's pid."""

import os

import pytest

from salmonn_pl.eval.run_lock import LOCK_FILE, OutputDirLock, OutputDirLocked


def test_a_held_directory_is_refused_with_the_holders_pid(tmp_path):
    with OutputDirLock(tmp_path / "run"):
        with pytest.raises(OutputDirLocked, match=rf"{tmp_path / 'run'} is in use .*\(pid {os.getpid()},"):
            OutputDirLock(tmp_path / "run").acquire()
        assert (tmp_path / "run" / LOCK_FILE).read_text().strip() == str(os.getpid())
    with OutputDirLock(tmp_path / "run") as again:  # released on exit
        assert again.held


def test_a_refused_attempt_leaves_the_holders_pid(tmp_path):
    holder = OutputDirLock(tmp_path).acquire()
    for _ in range(2):
        with pytest.raises(OutputDirLocked, match=f"pid {os.getpid()}"):
            OutputDirLock(tmp_path).acquire()
    holder.release()
    holder.release()  # idempotent
