"""One ``salmonn-pl test`` run per output directory at a time.

Two runs on one directory would both see the same questions unanswered, answer all of them and
append every record twice (with possibly different answers). The run holds an exclusive
``fcntl.flock`` on ``<output_dir>/.lock`` while it works; the file names the holder's pid. The lock
belongs to the open file, so the operating system drops it when the process ends, however it ends:
a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"


class OutputDirLocked(RuntimeError):
    """Another process is running on the output directory."""


class OutputDirLock:
    """An exclusive, non-blocking lock on an output directory (see the module docstring)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> OutputDirLock:
        if self._handle is not None:
            return self
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # "a+": opening must not wipe the holder's pid before we know the lock is ours.
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputDirLocked(
                f"{self.output_dir} is in use by another salmonn-pl run (pid {holder}, lock file {self.path}); "
                "wait for it to finish, or give this run another --model.output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
