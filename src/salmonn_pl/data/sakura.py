"""Reader of the SAKURA benchmark in its release layouts.

Two layouts are read:

* the GitHub release: ``<root>/data/<Track>/metadata.csv`` (or ``metadata.json``) with audio in
  ``<root>/data/<Track>/audio/``;
* a local copy of the Hugging Face release (``SLLM-multi-hop/<Track>QA``, e.g. downloaded with
  ``huggingface-cli download SLLM-multi-hop/AnimalQA --repo-type dataset --local-dir <root>/AnimalQA``):
  parquet files of the ``test`` split under ``<root>/<Track>QA/`` holding the same columns plus the
  encoded audio;
* the Hugging Face release by name: ``SLLM-multi-hop`` (its four ``<Track>QA`` datasets) or one of
  them (``SLLM-multi-hop/AnimalQA``), loaded with ``datasets.load_dataset(repo, split="test")``
  (which honours its cache, ``HF_HUB_OFFLINE`` and ``HF_DATASETS_OFFLINE``) or, when that cannot
  reach the Hub, read from the Hugging Face hub cache filled by ``hf download <repo> --repo-type dataset``.

Audio is decoded from the file's bytes by :func:`~salmonn_pl.audio.load.load_audio` in every layout,
so a clip's waveform is the same sample for sample whichever way the benchmark was fetched.

Each clip carries one ``single``-hop and one ``multi``-hop question. A question's id is
``<Track>/<hop>/<file>`` and is stable across runs, layouts and variants.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

from salmonn_pl.audio.load import AudioError, ChannelPolicy, load_audio

TRACKS = ("Animal", "Emotion", "Gender", "Language")
HOPS = ("single", "multi")
COLUMNS = ("file", "attribute_label", "single_instruction", "single_answer", "multi_instruction", "multi_answer")

HUB_ORG = "SLLM-multi-hop"  # the benchmark's Hugging Face namespace: one dataset <Track>QA per track
_HUB_NAME = re.compile(rf"^{re.escape(HUB_ORG)}(?:/(?P<track>[A-Za-z]+)QA)?$")

OnError = Literal["raise", "skip"]
Layout = Literal["auto", "release", "parquet", "hub"]


class SakuraDataError(ValueError):
    """Malformed benchmark metadata; the message names the file, row and column."""


@dataclass(frozen=True)
class ParquetAudio:
    """Audio stored in row ``row`` of the ``audio`` column of a parquet file."""

    path: str
    row: int


@dataclass(frozen=True)
class HubAudio:
    """Audio in row ``row`` of the test split of the Hugging Face dataset ``repo``."""

    repo: str
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
    audio: str | ParquetAudio | HubAudio  # path of the wav, or its place in a parquet file or hub dataset
    extra: dict[str, Any] = field(default_factory=dict)  # metadata columns beyond COLUMNS
    answer_verbatim: str = ""  # the golden answer as the release writes it (stray spaces kept)


@dataclass(frozen=True)
class Skipped:
    """A question left out under ``on_error="skip"``, and why."""

    id: str
    reason: str


def read_sakura(
    root: str | Path,
    tracks: tuple[str, ...] | list[str] | None = None,
    hops: tuple[str, ...] | list[str] = HOPS,
    limit: int | None = None,
    on_error: OnError = "raise",
    layout: Layout = "auto",
) -> tuple[list[SakuraQuestion], list[Skipped]]:
    """Questions of the selected tracks and hops, in release order, and the ones skipped.

    ``root`` is a directory (release layout or Hugging Face copy) or a hub name (``SLLM-multi-hop``
    or ``SLLM-multi-hop/<Track>QA``, see :func:`hub_tracks`). ``tracks`` defaults to the four SAKURA
    tracks (the one track of a single hub dataset); any other track laid out the same way (e.g. a
    custom ``data/<Track>/``) can be named too.
    ``limit`` selects the first ``limit`` questions of each track and hop in release order (the
    first ``limit`` rows of the track's metadata), whatever errors they have: ``on_error`` applies
    to the selection, so a bad row is skipped, not replaced by the next one.
    With ``on_error="raise"`` a bad row or a missing audio file raises :class:`SakuraDataError`;
    with ``"skip"`` the question is recorded in the returned skip list instead. Problems inside the
    audio files are found when they are decoded (see :func:`find_unreadable_audio`). A selected
    track without any row raises :class:`SakuraDataError` naming its metadata.
    """
    check_limit(limit, "limit")
    _check_choice(hops, HOPS, "hop")
    if not hops:
        raise ValueError("hops is empty; choose from " + str(list(HOPS)))
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    hub = hub_tracks(root) if layout in ("auto", "hub") else None
    if layout == "hub" and hub is None:
        raise SakuraDataError(f"{root}: not a hub name of the benchmark ({HUB_ORG} or {HUB_ORG}/<Track>QA)")
    if hub is not None:
        layout = "hub"
        tracks = list(hub) if tracks is None else tracks
        not_held = [track for track in tracks if track not in hub]
        if not_held:
            raise SakuraDataError(f"{root} holds track(s) {list(hub)}, not {not_held}; select tracks among those")
    else:
        root = Path(root)
        layout = _detect_layout(root) if layout == "auto" else layout
    tracks = list(TRACKS if tracks is None else tracks)
    if not tracks:
        raise ValueError("tracks is empty; name at least one track")

    questions: list[SakuraQuestion] = []
    skipped: list[Skipped] = []
    for track in tracks:
        if layout == "hub":
            rows = _hub_rows(hub[track], track)
        elif layout == "release":
            rows = _release_rows(root, track)
        else:
            rows = _parquet_rows(root, track)
        # The first `limit` rows are the selection, bad or not (the release order is the same
        # whichever layout it comes in).
        rows = rows[:limit] if limit is not None else rows
        per_hop: dict[str, list[SakuraQuestion]] = {hop: [] for hop in hops}
        seen_ids: set[str] = set()
        for row in rows:
            for hop in hops:
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


def check_limit(limit: int | None, name: str = "limit") -> None:
    """``limit`` must be a positive integer or ``None`` (``name`` is the setting in the message)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{name} must be a positive integer or null, got {limit!r}")


def hub_tracks(root: str | Path) -> dict[str, str] | None:
    """``{track: repo id}`` when ``root`` names the benchmark on the Hugging Face Hub, else ``None``.

    ``SLLM-multi-hop`` names its four datasets ``SLLM-multi-hop/<Track>QA``; ``SLLM-multi-hop/AnimalQA``
    names one. An existing local directory of that name is a directory, not a hub name.
    """
    match = _HUB_NAME.match(str(root))
    if match is None or Path(root).exists():
        return None
    if match["track"] is None:
        return {track: f"{HUB_ORG}/{track}QA" for track in TRACKS}
    return {match["track"]: str(root)}


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
    if isinstance(question.audio, HubAudio):
        cell = _open_hub_dataset(question.audio.repo)[question.audio.row]["audio"] or {}
        name = f"{question.audio.repo} (test split, row {question.audio.row}, file {question.file})"
        if cell.get("bytes") is None:
            raise AudioError(f"{name}: audio cell holds no bytes")
        return load_audio(cell["bytes"], channel=channel, name=name)
    return load_audio(question.audio, channel=channel)


def find_unreadable_audio(
    questions: list[SakuraQuestion], channel: ChannelPolicy = "first"
) -> tuple[list[SakuraQuestion], list[Skipped]]:
    """Decode every clip once; split the questions into usable ones and skipped ones with the reason."""
    errors: dict[str | ParquetAudio | HubAudio, str] = {}
    checked: set[str | ParquetAudio | HubAudio] = set()
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
    audio: str | ParquetAudio | HubAudio | None


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
        records = _csv_records(csv_path)
    elif json_path.is_file():
        records = _json_records(json_path)
    else:
        raise SakuraDataError(f"{track_dir}: no metadata.csv or metadata.json")
    if not records:
        raise SakuraDataError(f"{csv_path if csv_path.is_file() else json_path}: no questions (the metadata is empty)")

    rows = []
    for source, values in records:
        file = _clean(values.get("file"))
        rows.append(_Row(values=values, source=source, audio=str(track_dir / "audio" / file) if file else None))
    return rows


def _csv_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    # utf-8-sig: spreadsheet programs save CSVs with a byte-order mark, which would rename "file".
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise SakuraDataError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
            return [(f"{path}, row {i + 2}", dict(record)) for i, record in enumerate(reader)]
    except UnicodeDecodeError as err:
        raise SakuraDataError(f"{path}: not UTF-8 text ({err}); save the metadata as UTF-8") from err


class _DuplicateKey(ValueError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys; a second entry for a clip is a mistake to report.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _json_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_reject_duplicate_keys)
    except UnicodeDecodeError as err:
        raise SakuraDataError(f"{path}: not UTF-8 text ({err}); save the metadata as UTF-8") from err
    except _DuplicateKey as err:
        raise SakuraDataError(f"{path}: key {err.args[0]!r} appears more than once") from None
    except json.JSONDecodeError as err:
        raise SakuraDataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(entries, dict):
        raise SakuraDataError(f"{path}: expected an object keyed by audio path, got {type(entries).__name__}")
    records = []
    # Keys are audio paths relative to the release root ("data/Animal/audio/cat2.wav").
    for key, value in entries.items():
        if not isinstance(value, dict):
            raise SakuraDataError(
                f"{path}, entry {key!r}: expected an object of metadata columns, got {type(value).__name__}"
            )
        records.append((f"{path}, entry {key!r}", {"file": Path(key).name, **value}))
    return records


def _parquet_rows(root: Path, track: str) -> list[_Row]:
    track_dir = root / f"{track}QA"
    if not track_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.endswith("QA"))
        raise SakuraDataError(f"{track_dir}: no such track directory; {root} has {found}")
    return _parquet_track_rows(track_dir)


def _parquet_track_rows(track_dir: Path) -> list[_Row]:
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
    if not rows:
        raise SakuraDataError(f"{track_dir}: no questions (the test split is empty)")
    return rows


def _hub_rows(repo: str, track: str) -> list[_Row]:
    source = _open_hub_dataset(repo)
    if isinstance(source, Path):  # a snapshot in the hub cache: the same parquet files
        return _parquet_track_rows(source)
    missing = [column for column in (*COLUMNS, "audio") if column not in source.column_names]
    if missing:
        raise SakuraDataError(f"{repo}: missing column(s) {missing}; columns are {source.column_names}")
    table = source.remove_columns("audio").to_list()
    if not table:
        raise SakuraDataError(f"{repo}: no questions (the test split is empty)")
    return [
        _Row(values=values, source=f"{repo} (test split), row {i}", audio=HubAudio(repo, i))
        for i, values in enumerate(table)
    ]


def hub_fetch_hint(repo: str) -> str:
    """How to put the hub dataset ``repo`` on local disk, for error messages."""
    return (
        f"fetch it with `hf download {repo} --repo-type dataset` (`huggingface-cli download {repo} "
        "--repo-type dataset` with older huggingface_hub), or download it with --local-dir <dir>/"
        f"{repo.split('/')[-1]} and set root to <dir>"
    )


@lru_cache(maxsize=8)
def _open_hub_dataset(repo: str):
    """The test split of ``repo`` as a ``datasets.Dataset`` with undecoded audio, or a hub-cache snapshot.

    ``datasets.load_dataset`` comes first (its cache, downloads, offline settings). When it cannot
    reach the Hub and has no cache of its own, a snapshot that ``hf download`` put in the hub cache
    is read directly (``load_dataset`` does not look there offline).
    """
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        dataset = datasets.load_dataset(repo, split="test")
    except (OSError, ValueError) as err:  # unreachable, not found, or an unusable datasets cache
        try:
            return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
        except LocalEntryNotFoundError:
            raise SakuraDataError(
                f"{repo}: cannot load the dataset ({type(err).__name__}: {err}) and it is not in the "
                f"Hugging Face cache; {hub_fetch_hint(repo)}"
            ) from err
    # Decoded here from the bytes, by the same reader as the other layouts.
    return dataset.cast_column("audio", datasets.Audio(decode=False))


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
