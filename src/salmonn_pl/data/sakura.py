"""Reader of the SAKURA benchmark in its release layouts.

Two layouts are read:

* the GitHub release: ``<root>/data/<Track>/metadata.csv`` (or ``metadata.json``) with audio in
  ``<root>/data/<Track>/audio/``;
* a local copy of the Hugging Face release (``SLLM-multi-hop/<Track>QA``, e.g. downloaded with
  ``huggingface-cli download SLLM-multi-hop/AnimalQA --repo-type dataset --local-dir <root>/AnimalQA``):
  parquet files of the ``test`` split under ``<root>/<Track>QA/`` holding the same columns plus the
  encoded audio.

Each clip carries one ``single``-hop and one ``multi``-hop question. A question's id is
``<Track>/<hop>/<file>`` and is stable across runs, layouts and variants.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

from salmonn_pl.data.audio import AudioError, ChannelPolicy, load_audio

TRACKS = ("Animal", "Emotion", "Gender", "Language")
HOPS = ("single", "multi")
COLUMNS = ("file", "attribute_label", "single_instruction", "single_answer", "multi_instruction", "multi_answer")

OnError = Literal["raise", "skip"]
Layout = Literal["auto", "release", "parquet"]


class SakuraDataError(ValueError):
    """Malformed benchmark metadata; the message names the file, row and column."""


@dataclass(frozen=True)
class ParquetAudio:
    """Audio stored in row ``row`` of the ``audio`` column of a parquet file."""

    path: str
    row: int


@dataclass(frozen=True)
class SakuraQuestion:
    id: str  # "<Track>/<hop>/<file>"
    track: str
    hop: str
    file: str
    label: str  # attribute_label, e.g. "cat"
    instruction: str
    answer: str  # golden answer, e.g. "(b) cat"
    audio: str | ParquetAudio  # path of the wav, or its place in a parquet file
    extra: dict[str, Any] = field(default_factory=dict)  # metadata columns beyond COLUMNS
    answer_verbatim: str = ""  # the golden answer as the release writes it (stray spaces kept)


@dataclass(frozen=True)
class Skipped:
    """A question left out under ``on_error="skip"``, and why."""

    id: str
    reason: str


def read_sakura(
    root: str | Path,
    tracks: tuple[str, ...] | list[str] = TRACKS,
    hops: tuple[str, ...] | list[str] = HOPS,
    limit: int | None = None,
    on_error: OnError = "raise",
    layout: Layout = "auto",
) -> tuple[list[SakuraQuestion], list[Skipped]]:
    """Questions of the selected tracks and hops, in metadata order, and the ones skipped.

    ``tracks`` defaults to the four SAKURA tracks; any other track laid out the same way (e.g. a
    custom ``data/<Track>/``) can be named too.
    ``limit`` keeps at most that many questions per track and hop (the first in metadata order).
    With ``on_error="raise"`` a bad row or a missing audio file raises :class:`SakuraDataError`;
    with ``"skip"`` the question is recorded in the returned skip list instead. Problems inside the
    audio files are found when they are decoded (see :func:`find_unreadable_audio`).
    """
    root = Path(root)
    _check_choice(hops, HOPS, "hop")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    layout = _detect_layout(root) if layout == "auto" else layout

    questions: list[SakuraQuestion] = []
    skipped: list[Skipped] = []
    for track in tracks:
        rows = _release_rows(root, track) if layout == "release" else _parquet_rows(root, track)
        per_hop: dict[str, list[SakuraQuestion]] = {hop: [] for hop in hops}
        seen_ids: set[str] = set()
        for row in rows:
            for hop in hops:
                if limit is not None and len(per_hop[hop]) >= limit:
                    continue
                try:
                    question = _question(row, track, hop)
                    if question.id in seen_ids:
                        raise SakuraDataError(f"{row.source}: {question.id} appears more than once")
                    seen_ids.add(question.id)
                except SakuraDataError as err:
                    if on_error == "raise":
                        raise
                    skipped.append(Skipped(id=_row_id(row, track, hop), reason=str(err)))
                    continue
                per_hop[hop].append(question)
        for hop in hops:
            questions += per_hop[hop]
    return questions, skipped


def load_question_audio(question: SakuraQuestion, channel: ChannelPolicy = "first") -> np.ndarray:
    """The question's clip as mono float64 16 kHz audio (raises ``AudioError`` naming the file)."""
    if isinstance(question.audio, ParquetAudio):
        cell = _parquet_audio_column(question.audio.path)[question.audio.row].as_py() or {}
        name = f"{question.audio.path} (row {question.audio.row}, file {question.file})"
        if cell.get("bytes") is not None:
            return load_audio(cell["bytes"], channel=channel, name=name)
        if cell.get("path"):
            return load_audio(Path(question.audio.path).parent / cell["path"], channel=channel)
        raise AudioError(f"{name}: audio cell has neither bytes nor a path")
    return load_audio(question.audio, channel=channel)


def find_unreadable_audio(
    questions: list[SakuraQuestion], channel: ChannelPolicy = "first"
) -> tuple[list[SakuraQuestion], list[Skipped]]:
    """Decode every clip once; split the questions into usable ones and skipped ones with the reason."""
    errors: dict[str | ParquetAudio, str] = {}
    checked: set[str | ParquetAudio] = set()
    for question in questions:
        if question.audio in checked:
            continue
        checked.add(question.audio)
        try:
            load_question_audio(question, channel)
        except AudioError as err:
            errors[question.audio] = str(err)
    usable = [q for q in questions if q.audio not in errors]
    skipped = [Skipped(id=q.id, reason=errors[q.audio]) for q in questions if q.audio in errors]
    return usable, skipped


@dataclass(frozen=True)
class _Row:
    values: dict[str, Any]  # column -> value (None when absent)
    source: str  # "<metadata file>, row <n>" for error messages
    audio: str | ParquetAudio | None


def _detect_layout(root: Path) -> Literal["release", "parquet"]:
    if (root / "data").is_dir():
        return "release"
    if root.is_dir() and any(p.is_dir() and p.name.endswith("QA") for p in root.iterdir()):
        return "parquet"
    raise SakuraDataError(
        f"{root}: not a SAKURA release (no data/<Track>/metadata.csv) nor a Hugging Face copy (no <Track>QA/)"
    )


def _release_rows(root: Path, track: str) -> list[_Row]:
    track_dir = root / "data" / track
    if not track_dir.is_dir():
        found = sorted(p.name for p in (root / "data").iterdir() if p.is_dir())
        raise SakuraDataError(f"{track_dir}: no such track directory; {root / 'data'} has {found}")
    csv_path, json_path = track_dir / "metadata.csv", track_dir / "metadata.json"
    if csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise SakuraDataError(f"{csv_path}: missing column(s) {missing}; header is {reader.fieldnames}")
            records = [(f"{csv_path}, row {i + 2}", dict(record)) for i, record in enumerate(reader)]
    elif json_path.is_file():
        try:
            entries = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SakuraDataError(f"{json_path}: not valid JSON ({err})") from err
        if not isinstance(entries, dict):
            raise SakuraDataError(f"{json_path}: expected an object keyed by audio path, got {type(entries).__name__}")
        # Keys are audio paths relative to the release root ("data/Animal/audio/cat2.wav").
        records = [(f"{json_path}, entry {key!r}", {"file": Path(key).name, **value}) for key, value in entries.items()]
    else:
        raise SakuraDataError(f"{track_dir}: no metadata.csv or metadata.json")

    rows = []
    for source, values in records:
        file = _clean(values.get("file"))
        rows.append(_Row(values=values, source=source, audio=str(track_dir / "audio" / file) if file else None))
    return rows


def _parquet_rows(root: Path, track: str) -> list[_Row]:
    track_dir = root / f"{track}QA"
    if not track_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.endswith("QA"))
        raise SakuraDataError(f"{track_dir}: no such track directory; {root} has {found}")
    files = sorted(p for p in track_dir.rglob("*.parquet") if "test" in p.relative_to(track_dir).as_posix())
    if not files:
        raise SakuraDataError(f"{track_dir}: no parquet files of the test split")
    rows = []
    for path in files:
        schema_names = pq.read_schema(path).names
        missing = [column for column in (*COLUMNS, "audio") if column not in schema_names]
        if missing:
            raise SakuraDataError(f"{path}: missing column(s) {missing}; columns are {schema_names}")
        table = pq.read_table(path, columns=[c for c in schema_names if c != "audio"])
        for i, values in enumerate(table.to_pylist()):
            rows.append(_Row(values=values, source=f"{path}, row {i}", audio=ParquetAudio(str(path), i)))
    return rows


@lru_cache(maxsize=16)
def _parquet_audio_column(path: str):
    # Memory-mapped, so a row's audio is read from disk only when it is used.
    return pq.read_table(path, columns=["audio"], memory_map=True).column("audio")


def _question(row: _Row, track: str, hop: str) -> SakuraQuestion:
    needed = ("file", "attribute_label", f"{hop}_instruction", f"{hop}_answer")
    values = {column: _clean(row.values.get(column)) for column in needed}
    missing = [column for column, value in values.items() if not value]
    if missing:
        raise SakuraDataError(f"{row.source}: missing value for column(s) {missing}")
    if isinstance(row.audio, str) and not Path(row.audio).is_file():
        raise SakuraDataError(f"{row.source}: audio file {row.audio} not found")
    extra = {k: v for k, v in row.values.items() if k not in COLUMNS and k != "audio" and _is_json_scalar(v)}
    return SakuraQuestion(
        id=f"{track}/{hop}/{values['file']}",
        track=track,
        hop=hop,
        file=values["file"],
        label=values["attribute_label"],
        instruction=values[f"{hop}_instruction"],
        answer=values[f"{hop}_answer"],
        audio=row.audio,
        extra=extra,
        answer_verbatim=str(row.values[f"{hop}_answer"]),
    )


def _row_id(row: _Row, track: str, hop: str) -> str:
    file = _clean(row.values.get("file"))
    return f"{track}/{hop}/{file}" if file else f"{track}/{hop}/<{row.source}>"


def _clean(value: Any) -> str:
    # The release has stray spaces around some answers (" (c) angry").
    return "" if value is None else str(value).strip()


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _check_choice(chosen: tuple[str, ...] | list[str], allowed: tuple[str, ...], what: str) -> None:
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
