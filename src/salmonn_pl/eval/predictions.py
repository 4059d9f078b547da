"""Prediction records and their crash-safe, resumable store (``predictions.jsonl``).

One record per question and variant, keyed by ``(id, variant)``::

    {"id": "Emotion/single/1013_IWL_ANG_XX.wav", "variant": "pad30s-noise-late",
     "track": "Emotion", "hop": "single", "instruction": "...", "response": "...",
     "label": "(c) angry", "attribute_label": "angry",
     "judgement": "correct" | "incorrect" | "unjudged", "judge_explanation": "...", "judge": "rule",
     "meta": {"variant_params": {...}, "longer_than_target": false, ...}}

``label`` is the golden answer text (the SAKURA judge's "ground truth answer"), ``attribute_label``
the clip's class. The store appends each batch and fsyncs it, so a crash loses at most the batch in
flight; re-opening the same directory resumes: answered keys are known and never written twice.
Under DDP every rank appends to its own shard ``predictions.rank<r>.jsonl``; rank 0 folds the
shards into ``predictions.jsonl`` at the end (first occurrence of a key wins, in rank order).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from salmonn_pl.eval.files import atomic_open, dumps_strict, write_text_atomic

PREDICTIONS_FILE = "predictions.jsonl"
SAKURA_RESULTS_DIR = "sakura_results"
_SHARD_GLOB = "predictions.rank*.jsonl"

Record = dict[str, Any]
Key = tuple[str, str]


def record_key(record: Mapping[str, Any]) -> Key:
    return (record["id"], record["variant"])


def example_key(example_id: str, meta: Mapping[str, Any]) -> Key:
    """The record key an example will get, from its id and ``meta``."""
    return (example_id, _variant_name(meta, f"example {example_id}"))


def _variant_name(meta: Mapping[str, Any], source: str) -> str:
    variant = meta.get("variant")
    if isinstance(variant, Mapping):
        variant = variant.get("name")
    if not isinstance(variant, str) or not variant:
        raise ValueError(f"{source}: meta has no variant name (expected meta['variant'] to be a string)")
    return variant


# Example meta fields that become top-level record fields.
_PROMOTED = {"track", "hop", "instruction", "question", "answer", "variant", "label", "attribute_label", "variant_params"}


def make_record(example_id: str, meta: Mapping[str, Any], response: str, answer: str | None = None) -> Record:
    """A record for one generated answer, from the example's ``meta``; judgement fields start empty.

    ``instruction`` is the question the model saw (``meta["question"]``, e.g. without its options
    under the "no options" probe, else ``meta["instruction"]``); the released question then stays
    in ``meta["original_instruction"]`` so a judge still knows the options. The variant's settings
    are gathered under ``meta["variant_params"]``. ``answer`` overrides ``meta["answer"]``.
    """
    missing = [k for k in ("track", "hop", "instruction") if k not in meta]
    golden = answer if answer is not None else meta.get("answer")
    if golden is None:
        missing.append("answer")
    if missing:
        raise ValueError(f"example {example_id}: meta lacks {missing}; it has {sorted(meta)}")
    shown = meta.get("question", meta["instruction"])
    params = meta.get("variant_params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"example {example_id}: meta variant_params must be a mapping of settings, got {params!r}")
    extra = {k: v for k, v in meta.items() if k not in _PROMOTED}
    if shown != meta["instruction"]:
        extra["original_instruction"] = meta["instruction"]
    return {
        "id": example_id,
        "variant": _variant_name(meta, f"example {example_id}"),
        "track": meta["track"],
        "hop": meta["hop"],
        "instruction": shown,
        "response": response,
        "label": golden.strip(),
        "attribute_label": meta.get("attribute_label", meta.get("label")),
        "judgement": None,
        "judge_explanation": None,
        "judge": None,
        "meta": {"variant_params": dict(params), **extra},
    }


# ---------------------------------------------------------------------------------------------
# Reading and writing JSON lines


def read_jsonl(path: str | Path, repair: bool = False) -> list[Record]:
    """Records of a predictions file, first occurrence of each key kept.

    A last line cut short by a crash is dropped (and, with ``repair``, removed from the file so that
    appending continues on a clean line). A bad line anywhere else is an error naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    last_line = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[Record] = []
    seen: set[Key] = set()
    torn = False
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = record_key(record)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            if index != last_line:
                raise ValueError(f"{path}:{index + 1}: not a prediction record ({err}): {line[:200]!r}") from err
            torn = True
            break
        if key not in seen:
            seen.add(key)
            records.append(record)
    if repair and (torn or not raw.endswith(b"\n")) and raw:
        write_jsonl(path, records)
    return records


def _dumps(record: Mapping[str, Any]) -> str:
    # Strict JSON: a NaN score (a broken model) is written as null, never as a bare NaN.
    return dumps_strict(record, ensure_ascii=False, sort_keys=False)


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Replace ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_open(path) as f:
        for record in records:
            f.write(_dumps(record) + "\n")


def dedupe(records: Iterable[Mapping[str, Any]]) -> list[Record]:
    """First record of every key, in order."""
    seen: set[Key] = set()
    unique = []
    for record in records:
        key = record_key(record)
        if key not in seen:
            seen.add(key)
            unique.append(dict(record))
    return unique


def read_predictions(path: str | Path) -> list[Record]:
    """Records of a run: a ``predictions.jsonl`` path, or a run directory (shards included)."""
    path = Path(path)
    if path.is_dir():
        files = [path / PREDICTIONS_FILE, *_shards(path)]
        if not any(f.exists() for f in files):
            raise FileNotFoundError(f"{path}: no {PREDICTIONS_FILE} (nor rank shards)")
        return dedupe(r for f in files for r in read_jsonl(f))
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such predictions file")
    return read_jsonl(path)


def _shards(output_dir: Path) -> list[Path]:
    def rank(p: Path) -> int:
        match = re.search(r"rank(\d+)", p.name)
        return int(match.group(1)) if match else 0

    return sorted(output_dir.glob(_SHARD_GLOB), key=rank)


# ---------------------------------------------------------------------------------------------


class PredictionStore:
    """Append-only, resumable predictions of one run directory (see the module docstring)."""

    def __init__(self, output_dir: str | Path, rank: int = 0, world_size: int = 1) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size = rank, world_size
        self.path = self.output_dir / PREDICTIONS_FILE
        self.own_path = self.path if world_size == 1 else self.output_dir / f"predictions.rank{rank}.jsonl"
        # Each process repairs only the file it writes; the others it merely reads.
        files = [self.path, *(s for s in _shards(self.output_dir) if s != self.path)]
        records = [r for f in files for r in read_jsonl(f, repair=(f == self.own_path))]
        self._records: dict[Key, Record] = {}
        for record in records:
            self._records.setdefault(record_key(record), record)
        self._file = None

    @property
    def done_keys(self) -> set[Key]:
        return set(self._records)

    @property
    def records(self) -> list[Record]:
        """Every record known to this process: the ones on disk when opened plus its own appends."""
        return list(self._records.values())

    def pending(self, keys: Sequence[Key]) -> list[int]:
        """Indices of the keys not answered yet (what a resumed run still has to generate)."""
        return [i for i, key in enumerate(keys) if key not in self._records]

    def append(self, records: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Write the records whose keys are new, flushed to disk before returning; returns them."""
        new: list[Record] = []
        for record in records:
            key = record_key(record)
            if key not in self._records:
                self._records[key] = dict(record)
                new.append(self._records[key])
        if new:
            if self._file is None:
                self._file = self.own_path.open("a", encoding="utf-8")
            self._file.write("".join(_dumps(r) + "\n" for r in new))
            self._file.flush()
            os.fsync(self._file.fileno())
        return new

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def merge_shards(self) -> list[Record]:
        """Fold every rank's shard into ``predictions.jsonl`` (call on rank 0 once all ranks are done)."""
        self.close()
        shards = _shards(self.output_dir)
        merged = dedupe(r for f in [self.path, *shards] for r in read_jsonl(f))
        if shards or not self.path.exists():
            write_jsonl(self.path, merged)
            for shard in shards:
                shard.unlink()
        self._records = {record_key(r): r for r in merged}
        return merged


# ---------------------------------------------------------------------------------------------
# The SAKURA release's own result format


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def sakura_key(record: Mapping[str, Any]) -> str:
    """The release's ``metadata.json`` key of a record's clip, e.g. ``data/Animal/audio/dog28.wav``."""
    file = (record.get("meta") or {}).get("file") or record["id"].rsplit("/", 1)[-1]
    return f"data/{record['track']}/audio/{file}"


def sakura_label(record: Mapping[str, Any]) -> str:
    """The golden answer as the release writes it (``" (c) angry"``, stray spaces kept) when the
    record carries that spelling (``meta.answer_verbatim``), else its ``label``."""
    verbatim = (record.get("meta") or {}).get("answer_verbatim")
    return verbatim if isinstance(verbatim, str) and verbatim.strip() == record["label"] else record["label"]


def write_sakura_results(records: Iterable[Mapping[str, Any]], output_dir: str | Path, model_name: str = "salmonn") -> list[Path]:
    """Per variant, track and hop: ``<output_dir>/<variant>/<Track>_<model>_<hop>.json``.

    The layout is the benchmark's own (``{"attribute", "type", "results": {key: {"instruction",
    "response", "label"}}}``, keys the release's ``metadata.json`` keys such as
    ``data/Animal/audio/dog28.wav``, labels verbatim), so its ``evaluation/llm_judge.py`` and
    ``calculate_acc.py`` run unchanged and give the numbers :class:`~salmonn_pl.eval.judge_sakura.SakuraJudge`
    gives; ``label`` holds the golden answer that script compares against.
    """
    groups: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {}
    for record in records:
        results = groups.setdefault((record["variant"], record["track"], record["hop"]), {})
        results[sakura_key(record)] = {"instruction": record["instruction"], "response": record["response"],
                                       "label": sakura_label(record)}
    written = []
    for (variant, track, hop), results in sorted(groups.items()):
        path = Path(output_dir) / _safe_name(variant) / f"{track}_{_safe_name(model_name)}_{hop}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"attribute": track.lower(), "type": hop, "results": results}
        write_text_atomic(path, dumps_strict(document, indent=4, ensure_ascii=False))
        written.append(path)
    return written


def has_predictions(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds any stored answer (``predictions.jsonl`` or a rank shard, not empty)."""
    output_dir = Path(output_dir)
    return any(f.exists() and f.stat().st_size > 0 for f in [output_dir / PREDICTIONS_FILE, *_shards(output_dir)])
