"""Result files written whole or not at all, and JSON that stays strict.

A full disk or a crash in the middle of ``path.write_text`` leaves a truncated (often 0-byte)
``metrics.json`` behind, and the previous run's file is lost with it. Every result file is therefore
written to a temporary file beside it, fsynced and renamed over the old one: readers see the old
content or the new, never a piece. A failing write raises :class:`ResultWriteError` naming the file.

JSON never holds a bare ``NaN``/``Infinity`` (not JSON, and most readers reject it): non-finite
floats become ``null``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from salmonn_pl.json_values import finite_json


class ResultWriteError(OSError):
    """A result file could not be written; the file named keeps its previous content."""


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file handle whose content replaces ``path`` only once the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    encoding = None if "b" in mode else "utf-8"
    try:
        with tmp.open(mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ResultWriteError(err.errno, f"could not write {path}: {err.strerror or err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace ``path`` by ``text`` atomically (see the module docstring)."""
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN/Infinity (non-finite floats become ``null``)."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def write_json_atomic(path: str | Path, document: Any, indent: int | None = 2) -> Path:
    """``document`` as strict JSON, written atomically."""
    return write_text_atomic(path, dumps_strict(document, indent=indent, ensure_ascii=False, default=str) + "\n")
