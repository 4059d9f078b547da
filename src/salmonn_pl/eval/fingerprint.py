"""What produced a run's answers, kept beside them, so that a re-run resumes only the same run.

``salmonn-pl test`` resumes by skipping the questions already in ``predictions.jsonl``. Re-run with
another checkpoint, decoding, judge or data selection, it would append answers of a different model
to the old ones and report the mixture as one run. So the first start writes ``run.json``::

    {"answers": {"module.generation.max_new_tokens": 200, "weights.model.ckpt": "size 123, blake2b ...", ...},
     "judge": "rule"}

``answers`` is the flattened fingerprint of everything that changes an answer (the module decides
what: see ``SalmonnModule.answer_fingerprint``); ``judge`` names the judge of the stored verdicts.
A later start on the same directory compares: equal -> resume; different answers -> stop before
any work with every differing field (``field: old -> new``); only the judge different -> stop with
the ``salmonn-pl-eval rejudge`` command that re-judges the stored answers without the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from salmonn_pl.eval.files import finite_json, write_json_atomic

RUN_FILE = "run.json"
# Files up to this size are hashed whole; larger ones (LLM shards) by evenly spaced blocks plus their size.
_FULL_HASH_BYTES = 64 << 20
_BLOCK_BYTES = 64 << 10
_BLOCKS = 64


class RunMismatch(RuntimeError):
    """The output directory holds answers of another configuration."""


def file_digest(path: Path) -> str:
    """``"<size> bytes, blake2b <hex>"`` of a file: its whole content up to 64 MiB, else 64 evenly
    spaced 64 KiB blocks (4 MiB read, so a 26 GB LLM costs milliseconds; a retrained checkpoint
    changes every block)."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        if size <= _FULL_HASH_BYTES:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        else:
            for i in range(_BLOCKS):
                handle.seek((size - _BLOCK_BYTES) * i // (_BLOCKS - 1))
                digest.update(handle.read(_BLOCK_BYTES))
    return f"{size} bytes, blake2b {digest.hexdigest()}"


def path_digest(path: str | Path) -> str:
    """:func:`file_digest` of a file, or of every (non-hidden) file under a directory, combined."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    digest = hashlib.blake2b(digest_size=16)
    total = 0
    for file in files:
        entry = file_digest(file)
        total += file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\x1f{entry}\n".encode())
    return f"{len(files)} files, {total} bytes, blake2b {digest.hexdigest()}"


def weight_digests(settings: Mapping[str, Any]) -> dict[str, str]:
    """``{setting: digest}`` of every existing file or directory a (flattened) setting names: the weights."""
    return {key: path_digest(value) for key, value in flatten(settings).items()
            if isinstance(value, str) and value and os.path.exists(value)}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys, values in JSON form (tuples as lists, paths as
    strings, NaN as None), so that a file read back compares equal to what was written."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        if not value and prefix:
            out[prefix] = {}
        return out
    return {prefix: json.loads(json.dumps(finite_json(value), default=str))}


def without_neutral(value: Any) -> Any:
    """``value`` without the mapping entries that are ``false`` or ``null`` (inside lists too): a setting
    that a newer salmonn-pl added at its neutral value (e.g. a variant's ``text_caption: false``) is
    not a change from a ``run.json`` written before it existed."""
    if isinstance(value, Mapping):
        return {k: without_neutral(v) for k, v in value.items() if v is not False and v is not None}
    if isinstance(value, list):
        return [without_neutral(v) for v in value]
    return value


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``field: old -> new`` for every field that differs (``<absent>`` where one side lacks it)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            lines.append(f"{key}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return lines


def check_run(output_dir: str | Path, answers: Mapping[str, Any], judge: str, has_answers: bool) -> str:
    """Compare this run with the one that wrote ``output_dir``; write ``run.json`` when none did.

    Returns ``"new"`` (nothing stored yet: ``run.json`` written) or ``"resume"`` (same answers and judge).
    Raises :class:`RunMismatch` (before any work) when the stored answers came from other settings,
    when only the judge differs, or when answers are stored without a ``run.json``.
    """
    output_dir = Path(output_dir)
    path = output_dir / RUN_FILE
    current = {"answers": flatten(answers), "judge": judge}
    fresh = f"start afresh with another --model.output_dir, or delete {output_dir} (or its predictions.jsonl and {RUN_FILE})"
    if not has_answers:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, current)
        return "new"
    if not path.exists():
        raise RunMismatch(
            f"{output_dir} holds answers but no {RUN_FILE} (written by an older salmonn-pl), so it is unknown "
            f"which model, decoding and data produced them; resuming could mix runs. To go on, {fresh}."
        )
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        stored_answers, stored_judge = stored["answers"], stored["judge"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunMismatch(f"{path}: unreadable ({err}); to go on, {fresh}") from err
    differences = describe_differences(without_neutral(stored_answers), without_neutral(current["answers"]))
    if differences:
        listing = "\n  ".join(differences)
        raise RunMismatch(
            f"{output_dir} holds answers of another configuration; resuming would mix two runs in one "
            f"metrics.json. What changed (stored -> now):\n  {listing}\nTo keep both, {fresh}."
        )
    if stored_judge != judge:
        raise RunMismatch(
            f"{output_dir} holds answers judged by {stored_judge!r}, and this run judges by {judge!r}; one "
            f"metrics.json would mix two judges. To re-judge the stored answers without the model: "
            f"salmonn-pl-eval rejudge --predictions {output_dir} --judge <judge>. Or run with the judge "
            f"{stored_judge!r}, or {fresh}."
        )
    return "resume"
