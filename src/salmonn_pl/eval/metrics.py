"""Per-slice SAKURA accuracy (track x hop x variant), DDP-correct, plus the study's derived figures.

Accuracy is ``correct / questions`` in percent; ``unjudged`` answers stay in the denominator as not
correct and are counted separately. Questions the model could not answer (``judgement: "error"``:
non-finite scores or logits, or a per-question failure under ``on_error: skip``) were never judged:
they are counted as ``errors`` and listed, and are not among the ``questions`` accuracy divides by. Every figure is computed from deduplicated records, so the
same numbers come from the live metric (:class:`SakuraAccuracy`, synchronised across ranks by
torchmetrics) and from a ``predictions.jsonl`` alone (:func:`count_slices`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torchmetrics import Metric

from salmonn_pl.eval.predictions import dedupe

TRACKS = ("Animal", "Emotion", "Gender", "Language")
HOPS = ("multi", "single")
# Column order of the study's tables.
COLUMNS = tuple(f"{track.lower()}-{hop}" for track in TRACKS for hop in HOPS)
AVERAGE = "average"
# SALMONN's accuracies as published with the SAKURA benchmark, in COLUMNS order.
PUBLISHED_SALMONN = dict(zip(COLUMNS, (34.6, 68.6, 28.2, 19.8, 48.6, 59.8, 29.6, 21.8)))

# "error": no answer to judge (see the module docstring); appended so that stored indices keep their meaning.
OUTCOMES = ("incorrect", "correct", "unjudged", "error")
ERROR = "error"


class SliceKey(NamedTuple):
    track: str
    hop: str
    variant: str

    @property
    def column(self) -> str:
        return f"{self.track.lower()}-{self.hop}"


# Named tuples rather than dataclasses: torchmetrics rebuilds ``compute`` results, which frozen
# dataclasses do not allow.
class SliceCounts(NamedTuple):
    key: SliceKey
    questions: int
    correct: int
    incorrect: int
    unjudged: int
    errors: int = 0  # not among ``questions``

    @property
    def accuracy(self) -> float:
        """Percent correct; unjudged answers count as not correct."""
        return 100.0 * self.correct / self.questions if self.questions else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**self.key._asdict(), "column": self.key.column, "questions": self.questions, "correct": self.correct,
                "incorrect": self.incorrect, "unjudged": self.unjudged, "errors": self.errors, "accuracy": self.accuracy}


def _outcome(record: Mapping[str, Any]) -> str:
    judgement = record.get("judgement")
    return judgement if judgement in ("correct", "incorrect", ERROR) else "unjudged"


def is_error(record: Mapping[str, Any]) -> bool:
    """Whether the record holds no answer to judge (``judgement: "error"``, reason in ``error``)."""
    return record.get("judgement") == ERROR


def error_entries(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``{"id", "variant", "error"}`` of every error record (deduplicated), for ``metrics.json``."""
    return [{"id": r["id"], "variant": r["variant"], "error": r.get("error")} for r in dedupe(records) if is_error(r)]


def _counts_from(outcomes: Iterable[tuple[SliceKey, str]]) -> list[SliceCounts]:
    tally: dict[SliceKey, dict[str, int]] = {}
    for key, outcome in outcomes:
        tally.setdefault(key, dict.fromkeys(OUTCOMES, 0))[outcome] += 1
    return [
        SliceCounts(key, t["correct"] + t["incorrect"] + t["unjudged"], t["correct"], t["incorrect"], t["unjudged"],
                    t[ERROR])
        for key, t in sorted(tally.items(), key=lambda kv: _slice_order(kv[0]))
    ]


_POSITION_RANK = {"early": 0, "middle": 1, "late": 2}


def variant_sort_key(variant: str) -> tuple:
    """Reading order of variant rows: ``original`` first, then numbers by value and positions as
    early < middle < late (``pad15s-zero-early``, ``pad15s-zero-middle``, ..., ``pad30s-...``)."""
    parts = []
    for token in re.split(r"[-_]", variant):
        number = re.fullmatch(r"([a-z]*)(\d+(?:\.\d+)?)([a-z]*)", token)
        if token in _POSITION_RANK:
            parts.append((1, "", _POSITION_RANK[token], ""))
        elif number:
            parts.append((1, number.group(1), float(number.group(2)), number.group(3)))
        else:
            parts.append((1, token, 0.0, ""))
    return (variant != "original", parts)


def table_columns(present: Iterable[str]) -> tuple[str, ...]:
    """Columns of a results table: the study's eight, then the columns of any other track present
    (e.g. ``synthetic-multi``, ``synthetic-single`` of the demo data), sorted. ``average`` is left out."""
    extra = sorted(set(present) - set(COLUMNS) - {AVERAGE})
    return (*COLUMNS, *extra)


def _slice_order(key: SliceKey) -> tuple:
    column = COLUMNS.index(key.column) if key.column in COLUMNS else len(COLUMNS)
    return (variant_sort_key(key.variant), column, key.track, key.hop)


def count_slices(records: Iterable[Mapping[str, Any]]) -> list[SliceCounts]:
    """Counts per slice from records (deduplicated by ``(id, variant)``, first occurrence kept)."""
    return _counts_from((SliceKey(r["track"], r["hop"], r["variant"]), _outcome(r)) for r in dedupe(records))


# ---------------------------------------------------------------------------------------------
# Tables: rows = variants, columns = track-hop


Table = dict[str, dict[str, float]]


def accuracy_table(counts: Sequence[SliceCounts]) -> Table:
    """``{variant: {column: accuracy, ..., "average": mean of the columns present}}``."""
    table: Table = {}
    for c in counts:
        table.setdefault(c.key.variant, {})[c.key.column] = c.accuracy
    for row in table.values():
        row[AVERAGE] = sum(row.values()) / len(row)
    return table


def unjudged_table(counts: Sequence[SliceCounts]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for c in counts:
        table.setdefault(c.key.variant, {})[c.key.column] = c.unjudged
    return table


def difference_pp(row: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """``row - reference`` in percentage points for the columns both have (e.g. delta vs a
    baseline run, or the audio-grounding gap: accuracy with audio minus text-only accuracy)."""
    return {column: row[column] - reference[column] for column in row if column in reference}


def overall(counts: Sequence[SliceCounts]) -> dict[str, float | int]:
    questions = sum(c.questions for c in counts)
    correct = sum(c.correct for c in counts)
    return {
        "questions": questions,
        "correct": correct,
        "incorrect": sum(c.incorrect for c in counts),
        "unjudged": sum(c.unjudged for c in counts),
        "errors": sum(c.errors for c in counts),
        "accuracy": 100.0 * correct / questions if questions else float("nan"),
    }


def metrics_document(counts: Sequence[SliceCounts], run: str, judge: str | None = None, **extra: Any) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    return {
        "run": run,
        "judge": judge,
        "overall": overall(counts),
        "accuracy": accuracy_table(counts),
        "unjudged": unjudged_table(counts),
        "slices": [c.as_dict() for c in counts],
        **extra,
    }


def flat_metrics(counts: Sequence[SliceCounts], prefix: str = "test") -> dict[str, float]:
    """Scalars for a logger: ``test/acc/<variant>/<column>``, the per-variant average and totals."""
    flat: dict[str, float] = {}
    for variant, row in accuracy_table(counts).items():
        for column, value in row.items():
            flat[f"{prefix}/acc/{variant}/{column}"] = value
    for c in counts:
        flat[f"{prefix}/unjudged/{c.key.variant}/{c.key.column}"] = float(c.unjudged)
    summary = overall(counts)
    flat[f"{prefix}/acc"] = float(summary["accuracy"])
    flat[f"{prefix}/unjudged"] = float(summary["unjudged"])
    flat[f"{prefix}/questions"] = float(summary["questions"])
    flat[f"{prefix}/errors"] = float(summary["errors"])
    return flat


# ---------------------------------------------------------------------------------------------
# The live metric


def _hash63(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SakuraAccuracy(Metric):
    """Slice accuracy that stays exact under DDP.

    Lightning's distributed sampler pads the last batches with repeated questions, so plain sums
    would count those twice. Each update therefore keeps one row per answer (a hash of its
    ``(id, variant)`` key, its outcome and a hash of its slice); ``compute`` gathers the rows of
    every rank and keeps the first row of each key, in rank order (the order in which the
    prediction shards are merged). Slice names travel once per rank as UTF-8 codes next to their
    hash, because torchmetrics gathers tensors only. Feeding the same records again (e.g. the
    answers of an interrupted run) is harmless for the same reason.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Flat int64 lists: torchmetrics gathers lists of uneven length, and an empty rank sends an
        # empty tensor of the metric's dtype, which must then match.
        self.add_state("answers", default=[], dist_reduce_fx="cat")  # rows of (key hash, outcome, slice hash)
        self.add_state("slice_names", default=[], dist_reduce_fx="cat")  # (slice hash, n, n UTF-8 bytes)...
        self.set_dtype(torch.int64)
        self._named_slices: set[int] = set()

    def update(self, records: Sequence[Mapping[str, Any]]) -> None:
        rows, names = [], []
        for record in records:
            name = "\x1f".join((record["track"], record["hop"], record["variant"]))
            slice_hash = _hash63(name)
            rows += [_hash63(f"{record['id']}\x1f{record['variant']}"), OUTCOMES.index(_outcome(record)), slice_hash]
            if slice_hash not in self._named_slices:
                self._named_slices.add(slice_hash)
                encoded = list(name.encode())
                names += [slice_hash, len(encoded), *encoded]
        if rows:
            self.answers.append(torch.tensor(rows, dtype=torch.int64, device=self.device))
        if names:
            self.slice_names.append(torch.tensor(names, dtype=torch.int64, device=self.device))

    def compute(self) -> list[SliceCounts]:
        answers = _flat(self.answers).view(-1, 3).tolist()
        codes = _flat(self.slice_names).tolist()
        slices: dict[int, SliceKey] = {}
        i = 0
        while i < len(codes):
            slice_hash, n = codes[i], codes[i + 1]
            slices[slice_hash] = SliceKey(*bytes(codes[i + 2 : i + 2 + n]).decode().split("\x1f"))
            i += 2 + n
        first: dict[int, tuple[int, int]] = {}
        for key_hash, outcome, slice_hash in answers:
            first.setdefault(key_hash, (outcome, slice_hash))
        return _counts_from((slices[slice_hash], OUTCOMES[outcome]) for outcome, slice_hash in first.values())

    def reset(self) -> None:
        super().reset()
        self._named_slices = set()

    @property
    def num_answers(self) -> int:
        """Rows held by this process (before gathering and deduplication)."""
        return sum(t.numel() for t in self.answers) // 3 if isinstance(self.answers, list) else self.answers.numel() // 3


def _flat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(state, torch.Tensor):
        return state.cpu().long()
    return torch.cat([t.cpu().long() for t in state]) if state else torch.zeros(0, dtype=torch.int64)
