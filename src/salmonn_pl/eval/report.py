"""``report.md``, the accuracy-vs-position plot and W&B logging of SAKURA results.

Tables are laid out like the study's: one row per run and variant, one column per track and hop
(animal-multi, animal-single, ..., language-single) plus their average, with SALMONN's published
row on top for reference. Tracks beyond the four SAKURA ones (e.g. the demo's ``Synthetic``) get
their own columns after the study's. Derived tables: the delta of every row against a baseline, and the
audio-grounding gap (accuracy with audio minus accuracy of the matching text-only row, i.e. the
variant whose audio tokens are all zeroed), both in percentage points. SAKURA's text control
(hearing vs reasoning): per track and hop, accuracy with the audio, with a caption stating the
clip's attribute instead (the ``text_caption`` variant), and their gap. Runs of several model
families (``metrics.json``'s ``model_family``; SALMONN when absent) are labelled with their family.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.loggers import WandbLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from salmonn_pl.eval.files import atomic_open, write_text_atomic
from salmonn_pl.eval.metrics import (
    AVERAGE,
    COLUMNS,
    PUBLISHED_SALMONN,
    TRACKS,
    SliceCounts,
    Table,
    accuracy_table,
    count_slices,
    difference_pp,
    flat_metrics,
    overall,
    table_columns,
    unjudged_table,
)
from salmonn_pl.eval.predictions import PREDICTIONS_FILE, Record, read_predictions

REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"
POSITION_PLOT = "position_accuracy.png"
POSITIONS = {"early": 0.0, "middle": 0.5, "late": 1.0}
TEXT_ONLY_ABLATION = "zero_audio"
# Ablations whose rows answer without audio: the text-only references of the grounding gap.
TEXT_ONLY_ABLATIONS = ("zero_audio", "no_audio")
CONFIG_FILE = "config.yaml"
DEFAULT_MODEL_FAMILY = "SALMONN"  # runs written before metrics.json named the family
CAPTION_SECTION = "## Hearing vs reasoning (SAKURA text control)"


def run_settings(run_dir: str | Path | None) -> dict[str, Any]:
    """The ``model`` section of a run's saved ``config.yaml`` (empty when there is none)."""
    path = Path(run_dir) / CONFIG_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


@dataclass
class Run:
    """One evaluated run: its records and the figures derived from them."""

    name: str
    records: list[Record]
    skipped: list[Any] = field(default_factory=list)  # questions the data loader left out, with reasons
    directory: Path | None = None  # the run's output directory, whose config.yaml names its settings
    model_family: str = DEFAULT_MODEL_FAMILY  # which kind of model answered (SALMONN, Qwen2-Audio, ...)

    def __post_init__(self) -> None:
        self.counts: list[SliceCounts] = count_slices(self.records)
        self.table: Table = accuracy_table(self.counts)
        self.variant_params: dict[str, dict[str, Any]] = {}
        for record in self.records:
            params = (record.get("meta") or {}).get("variant_params")
            self.variant_params.setdefault(record["variant"], params if isinstance(params, dict) else {})

    @property
    def settings(self) -> dict[str, Any]:
        return run_settings(self.directory)

    @property
    def ablation(self) -> str:
        """The run-level ablation (``model.ablation``), applied to every variant without its own."""
        return str(self.settings.get("ablation") or "none")

    @property
    def model_identity(self) -> tuple[str, str] | None:
        """Which model answered (LLM and checkpoint), to pair a run with its own text-only run."""
        files = self.settings.get("model")
        if not isinstance(files, dict):
            return None
        return str(files.get("llm_path")), str(files.get("ckpt"))

    @property
    def judges(self) -> list[str]:
        return sorted({str(r.get("judge")) for r in self.records if r.get("judge")})


def model_family_of(run_dir: str | Path) -> str:
    """The model family in a run directory's ``metrics.json`` (SALMONN for runs written before it said)."""
    metrics = Path(run_dir) / METRICS_FILE
    if not metrics.exists():
        return DEFAULT_MODEL_FAMILY
    family = json.loads(metrics.read_text()).get("model_family") or DEFAULT_MODEL_FAMILY
    if not isinstance(family, str):
        raise ValueError(f"{metrics}: model_family must be a name such as \"SALMONN\", got {family!r}")
    return family


def load_run(path: str | Path, name: str | None = None) -> Run:
    """A run from its output directory (or a predictions file); ``metrics.json`` adds skipped questions."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    skipped: list[Any] = []
    metrics = run_dir / METRICS_FILE
    if metrics.exists():
        skipped = json.loads(metrics.read_text()).get("skipped", [])
    family = model_family_of(run_dir)
    return Run(name=name or (run_dir.name if path.is_dir() or path.name == PREDICTIONS_FILE else path.stem),
               records=read_predictions(path), skipped=skipped, directory=run_dir, model_family=family)


# ---------------------------------------------------------------------------------------------
# Rows, baselines and the grounding gap


def _variant_label(run: Run, variant: str) -> str:
    """The variant's name, with the run-level ablation when there is one (``no_audio``, not ``original``)."""
    ablation = run.ablation
    if ablation == "none" or str(run.variant_params.get(variant, {}).get("ablation", "none")) != "none":
        return variant
    return ablation if variant == "original" else f"{variant}+{ablation}"


def _families(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(run.model_family for run in runs))


def _run_label(run: Run, runs: Sequence[Run]) -> str:
    """The run's name, with its model family when the runs are of more than one family."""
    return f"{run.name} ({run.model_family})" if len(_families(runs)) > 1 else run.name


def _row_label(run: Run, variant: str, runs: Sequence[Run]) -> str:
    label = _variant_label(run, variant)
    return label if len(runs) == 1 else f"{_run_label(run, runs)} / {label}"


def _ablation(run: Run, variant: str) -> str:
    own = str(run.variant_params.get(variant, {}).get("ablation", "none"))
    return own if own != "none" else run.ablation


def _audio_free_key(run: Run, variant: str, ablation: str) -> str:
    """What a variant is apart from its ablation, to pair a text-only row with its audio row."""
    params = run.variant_params.get(variant)
    if params:
        # text_caption: false is left out, so runs written before the setting existed still pair.
        kept = {k: v for k, v in params.items() if k not in ("name", "ablation") and not (k == "text_caption" and not v)}
        return json.dumps(kept, sort_keys=True, default=str)
    stripped = variant.removesuffix(f"-{ablation}") if ablation != "none" else variant
    return "original" if stripped == ablation else stripped


def grounding_gaps(runs: Sequence[Run], text_only_run: Run | None = None,
                   text_only_ablation: str = TEXT_ONLY_ABLATION) -> list[tuple[str, str, dict[str, float]]]:
    """``(audio row, text-only row, gap per column)`` for every row with a text-only counterpart.

    A text-only row is a variant with ``ablation == text_only_ablation``, or any row of
    ``text_only_run``. The counterpart of a text-only row in the same run is preferred.
    """
    text_only: list[tuple[Run, str, str]] = []
    for run in [*runs, *([text_only_run] if text_only_run and text_only_run not in runs else [])]:
        for variant in run.table:
            ablation = _ablation(run, variant)
            if run is text_only_run or ablation in (text_only_ablation, *TEXT_ONLY_ABLATIONS):
                text_only.append((run, variant, _audio_free_key(run, variant, ablation)))
    everyone = [*runs, *([text_only_run] if text_only_run and text_only_run not in runs else [])]
    gaps = []
    for run in runs:
        if run is text_only_run:
            continue
        for variant, row in run.table.items():
            if _ablation(run, variant) in (text_only_ablation, *TEXT_ONLY_ABLATIONS):
                continue
            key = _audio_free_key(run, variant, "none")
            partners = [t for t in text_only if t[2] == key]
            # Same run first, then a run of the same model (a text-only run of another model is no
            # reference for this one), then an explicit text-only run.
            same_model = [t for t in partners if t[0] is run or t[0] is text_only_run
                          or (run.model_identity is not None and t[0].model_identity == run.model_identity)]
            if run.model_identity is not None:
                partners = same_model
            partners.sort(key=lambda t: (t[0] is not run, t[0] is not text_only_run))
            if partners:
                partner_run, partner_variant, _ = partners[0]
                gaps.append((_row_label(run, variant, everyone), _row_label(partner_run, partner_variant, everyone),
                             difference_pp(row, partner_run.table[partner_variant])))
    return gaps


# ---------------------------------------------------------------------------------------------
# Hearing vs reasoning: SAKURA's text control

# Settings a caption variant shares with its audio variant: the question and the prompt it is asked in.
_QUESTION_SETTINGS = ("strip_options", "prompt_template")


def _is_caption(run: Run, variant: str) -> bool:
    return bool(run.variant_params.get(variant, {}).get("text_caption"))


def _hears_the_clip_as_released(run: Run, variant: str) -> bool:
    """An audio variant the text control compares with: the clip unaltered, no ablation, no caption."""
    params = run.variant_params.get(variant, {})
    return (bool(params) and not params.get("text_caption") and _ablation(run, variant) == "none"
            and params.get("pad_seconds") is None and params.get("long_audio_seconds") is None)


def caption_pairs(run: Run) -> list[tuple[str, str]]:
    """``(audio variant, text_caption variant)`` of a run: the same question and prompt, heard as
    released or read as a caption."""
    pairs = []
    for caption in run.table:
        if not _is_caption(run, caption):
            continue
        wanted = {k: run.variant_params[caption].get(k) for k in _QUESTION_SETTINGS}
        for audio in run.table:
            params = run.variant_params.get(audio, {})
            if _hears_the_clip_as_released(run, audio) and all(params.get(k) == v for k, v in wanted.items()):
                pairs.append((audio, caption))
                break
    return pairs


def caption_gap_rows(run: Run, audio: str, caption: str, columns: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Per track-hop column (of ``columns`` that either variant has): audio and caption accuracy and
    the gap, caption - audio in percentage points; then their average over those columns (None when
    one variant lacks one of them)."""
    heard, read = run.table[audio], run.table[caption]
    shown = [c for c in columns if c in heard or c in read]
    rows = []
    for column in shown:
        a, c = heard.get(column), read.get(column)
        rows.append((column, {"audio": a, "caption": c, "gap": c - a if a is not None and c is not None else None}))
    complete = all(c in heard and c in read for c in shown)
    if len(shown) > 1:
        a = sum(heard[c] for c in shown) / len(shown) if complete else None
        c = sum(read[c] for c in shown) / len(shown) if complete else None
        rows.append((average_label(shown), {"audio": a, "caption": c, "gap": c - a if complete else None}))
    return rows


def _caption_section(runs: Sequence[Run], columns: Sequence[str]) -> list[str]:
    blocks = [(run, audio, caption) for run in runs for audio, caption in caption_pairs(run)]
    if not blocks:
        return []
    lines = ["", CAPTION_SECTION, "",
             ("The same questions, once with the audio and once with the audio replaced by a caption that states "
              "the clip's attribute (`text_caption`: the model hears nothing and reads e.g. \"The speaker is "
              "female.\"). gap = caption - audio (%p): a large gap means the model reasons with the attribute "
              "when it is told it but does not hear it.")]
    for run, audio, caption in blocks:
        title = f"{audio} vs {caption}"
        lines += ["", f"### {_run_label(run, runs)}: {title}" if len(runs) > 1 else f"### {title}", ""]
        lines += ["| track / hop | audio (%) | caption (%) | gap (%p) |", "|---|---:|---:|---:|"]
        lines += [f"| {label} | {_fmt(row['audio'])} | {_fmt(row['caption'])} | {_fmt(row['gap'], signed=True)} |"
                  for label, row in caption_gap_rows(run, audio, caption, columns)]
    return lines


# ---------------------------------------------------------------------------------------------
# The study's questions, family by family: one compact table per question, one row per run

STUDY_SECTION = "## The study's questions, family by family"
STUDY_ABLATIONS = ("zero_whisper", "zero_beats", "zero_audio", "no_audio")


def _heard_unpadded(run: Run, variant: str) -> bool:
    """The clip as released (no padding, no long audio, no caption), whatever the ablation and options."""
    params = run.variant_params.get(variant, {})
    return (bool(params) and not params.get("text_caption") and params.get("pad_seconds") is None
            and params.get("long_audio_seconds") is None)


def original_variant(run: Run) -> str | None:
    """The run's unpadded variant: the clip as released, no ablation, no caption, options kept
    (``original`` when the records carry no variant settings)."""
    candidates = [v for v in run.table if _heard_unpadded(run, v) and _ablation(run, v) == "none"
                  and not run.variant_params[v].get("strip_options")]
    if "original" in candidates or (not candidates and "original" in run.table and run.ablation == "none"
                                    and not run.variant_params.get("original")):
        return "original"
    return candidates[0] if candidates else None


def ablation_variants(run: Run) -> dict[str, str]:
    """``{ablation: variant}``: the run's unpadded variants (options kept) with an ablation, its own
    or the run-level ``model.ablation``."""
    found: dict[str, str] = {}
    for variant in run.table:
        params = run.variant_params.get(variant, {})
        unpadded = _heard_unpadded(run, variant) or (not params and variant in ("original", run.ablation))
        if unpadded and not params.get("strip_options") and _ablation(run, variant) != "none":
            found.setdefault(_ablation(run, variant), variant)
    return found


def stripped_options_variant(run: Run) -> str | None:
    """The unpadded variant asked without its answer options (``strip_options``), no ablation."""
    return next((v for v in run.table if _heard_unpadded(run, v) and _ablation(run, v) == "none"
                 and run.variant_params[v].get("strip_options")), None)


def _same_model(run: Run, other: Run, runs: Sequence[Run]) -> bool:
    """Whether ``other`` is the same model as ``run``: the same LLM and checkpoint when the configs
    name them, else the only run of its family."""
    if run.model_identity is not None or other.model_identity is not None:
        return run.model_identity == other.model_identity
    return run.model_family == other.model_family and sum(r.model_family == run.model_family for r in runs) == 2


@dataclass
class StudyRow:
    """One run of the study's tables: its variants by role, the ablations of a run-level ablated run
    of the same model folded in (a run evaluated with ``model.ablation: no_audio`` has no original)."""

    label: str
    cells: dict[str, tuple[Run, str]]  # role ("original", "no_audio", "strip_options", ...) -> (run, variant)
    run: Run


def study_rows(runs: Sequence[Run]) -> list[StudyRow]:
    rows: list[StudyRow] = []
    for run in runs:
        cells = {role: (run, variant) for role, variant in ablation_variants(run).items()}
        if (original := original_variant(run)) is not None:
            cells["original"] = (run, original)
        if (stripped := stripped_options_variant(run)) is not None:
            cells["strip_options"] = (run, stripped)
        host = next((r for r in rows if run.ablation != "none" and "original" in r.cells
                     and r.run.ablation == "none" and _same_model(run, r.run, runs)), None)
        if host is not None:
            for role, cell in cells.items():
                host.cells.setdefault(role, cell)
        else:
            rows.append(StudyRow(_run_label(run, runs), cells, run))
    return rows


def common_columns(cells: Sequence[tuple[Run, str]], columns: Sequence[str]) -> list[str]:
    """The track-hop columns (of ``columns``) that every one of ``cells`` has: the average of each
    cell over them compares with the others."""
    return [c for c in columns if all(c in run.table[variant] for run, variant in cells)]


def _mean(run: Run, variant: str | None, columns: Sequence[str]) -> float | None:
    if variant is None or not columns:
        return None
    return sum(run.table[variant][c] for c in columns) / len(columns)


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def padded_conditions(run: Run) -> dict[str, dict[str, str]]:
    """``{"<seconds>s <fill>": {position: variant}}``: the run's padded variants (no ablation, no
    caption, options kept) with the clip early, middle or late."""
    conditions: dict[str, dict[str, str]] = {}
    for variant in run.table:
        params = run.variant_params.get(variant, {})
        if (params.get("pad_seconds") is None or params.get("text_caption") or params.get("strip_options")
                or _ablation(run, variant) != "none" or params.get("pad_position") not in POSITIONS):
            continue
        fill = params.get("pad_fill", "zero")
        if fill == "noise" and params.get("noise_dbfs") is not None:
            fill = f"noise {float(params['noise_dbfs']):g} dBFS"
        condition = f"{float(params['pad_seconds']):g}s {fill}"
        conditions.setdefault(condition, {}).setdefault(params["pad_position"], variant)
    return conditions


def position_effect_rows(runs: Sequence[Run], columns: Sequence[str]) -> tuple[str, list[tuple[str, dict]]]:
    """Per run and padded condition: the original's and each position's accuracy, and the spread
    (max - min over the positions present, %p); all averaged over the columns every cell has."""
    blocks = [(row, condition, positions) for row in study_rows(runs)
              for condition, positions in sorted(padded_conditions(row.run).items())]
    cells = [(b[0].run, v) for b in blocks for v in b[2].values()]
    cells += [b[0].cells["original"] for b in blocks if "original" in b[0].cells]
    shared = common_columns(cells, columns)
    rows = []
    for row, condition, positions in blocks:
        accuracy = {p: _mean(row.run, positions.get(p), shared) for p in POSITIONS}
        present = [a for a in accuracy.values() if a is not None]
        spread = max(present) - min(present) if len(present) > 1 else None
        rows.append((f"{row.label} | {condition}", {"original": _mean(*row.cells.get("original", (row.run, None)), shared),
                                                     **accuracy, "spread": spread}))
    return average_label(shared), rows


def ablation_rows(runs: Sequence[Run], columns: Sequence[str]) -> tuple[str, list[str], list[tuple[str, dict]]]:
    """Per run: the original's accuracy, each ablation's (``–`` where the run lacks it) and its drop,
    original - ablation (%p)."""
    rows = [r for r in study_rows(runs) if any(a in r.cells for a in STUDY_ABLATIONS)]
    present = [a for a in STUDY_ABLATIONS if any(a in r.cells for r in rows)]
    shared = common_columns([c for r in rows for role, c in r.cells.items() if role in ("original", *present)], columns)
    table = []
    for row in rows:
        original = _mean(*row.cells.get("original", (row.run, None)), shared)
        values: dict[str, float | None] = {"original": original}
        for ablation in present:
            values[ablation] = _mean(*row.cells.get(ablation, (row.run, None)), shared)
            values[f"{ablation} drop"] = _minus(original, values[ablation])
        table.append((row.label, values))
    return average_label(shared), present, table


def text_prior_rows(runs: Sequence[Run], columns: Sequence[str]) -> tuple[str, bool, list[tuple[str, dict]]]:
    """Per run with a ``no_audio`` answer: the original's accuracy, with no audio, with the options
    stripped, and the audio gain = original - no_audio (%p)."""
    rows = [r for r in study_rows(runs) if "no_audio" in r.cells]
    stripped = any("strip_options" in r.cells for r in rows)
    roles = ("original", "no_audio", "strip_options")
    shared = common_columns([c for r in rows for role, c in r.cells.items() if role in roles], columns)
    table = []
    for row in rows:
        values = {role: _mean(*row.cells.get(role, (row.run, None)), shared) for role in roles}
        table.append((row.label, {**values, "gain": _minus(values["original"], values["no_audio"])}))
    return average_label(shared), stripped, table


def hearing_rows(runs: Sequence[Run], columns: Sequence[str]) -> tuple[str, list[tuple[str, dict]]]:
    """Per run and caption pair (:func:`caption_pairs`): audio and caption accuracy and the gap,
    caption - audio (%p)."""
    pairs = [(run, audio, caption) for run in runs for audio, caption in caption_pairs(run)]
    shared = common_columns([(run, v) for run, audio, caption in pairs for v in (audio, caption)], columns)
    table = []
    for run, audio, caption in pairs:
        heard, read = _mean(run, audio, shared), _mean(run, caption, shared)
        table.append((f"{_run_label(run, runs)} | {audio} vs {caption}", {"audio": heard, "caption": read,
                                                                       "gap": _minus(read, heard)}))
    return average_label(shared), table


def _study_table(title: str, first: str, average: str, headers: Sequence[tuple[str, str, bool]],
                 rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """A compact table: ``first`` columns (run, condition) then ``headers`` = (key, title, signed)."""
    firsts = first.split(" | ")
    firsts[0] = f"{firsts[0]} — accuracy (%): {average}"  # which columns every number averages
    lines = ["", f"### {title}", ""]
    lines += ["| " + " | ".join([*firsts, *(h[1] for h in headers)]) + " |",
              "|" + "---|" * len(firsts) + "---:|" * len(headers)]
    lines += [f"| {label} | " + " | ".join(_fmt(values.get(k), signed) for k, _, signed in headers) + " |"
              for label, values in rows]
    return lines


def study_section(runs: Sequence[Run], columns: Sequence[str]) -> list[str]:
    """The study's four questions side by side per run and family; each table only where the runs
    hold the variants it needs."""
    lines: list[str] = []
    average, rows = position_effect_rows(runs, columns)
    if rows:
        headers = [("original", "original", False), *((p, p, False) for p in POSITIONS),
                   ("spread", "spread (%p)", False)]
        lines += _study_table("Position effect: the clip early, middle or late in the padding", "run | padding",
                              average, headers, rows)
    average, present, rows = ablation_rows(runs, columns)
    if rows:
        headers = [("original", "original", False)]
        headers += [h for a in present for h in ((a, a, False), (f"{a} drop", "drop (%p)", True))]
        lines += _study_table("Encoder ablations (drop = original - ablation)", "run", average, headers, rows)
    average, stripped, rows = text_prior_rows(runs, columns)
    if rows:
        headers = [("original", "original", False), ("no_audio", "no audio", False),
                   *([("strip_options", "options stripped", False)] if stripped else []),
                   ("gain", "audio gain (%p)", True)]
        lines += _study_table("Text prior (audio gain = original - no audio)", "run", average, headers, rows)
    average, rows = hearing_rows(runs, columns)
    if rows:
        headers = [("audio", "audio", False), ("caption", "caption", False), ("gap", "gap (%p)", True)]
        lines += _study_table("Hearing vs reasoning (gap = caption - audio)", "run | compared", average, headers, rows)
    return ["", STUDY_SECTION, *lines] if lines else []


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(value: float | int | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _track_columns(runs: Sequence[Run]) -> tuple[str, ...]:
    """The track-hop columns of the runs: the study's eight when a SAKURA track is present, then
    any other track's own columns."""
    present = {c.key.column for run in runs for c in run.counts}
    columns = table_columns(present)
    return columns if present & set(COLUMNS) else tuple(c for c in columns if c not in COLUMNS)


def average_label(columns: Sequence[str]) -> str:
    """The average column's header names what it averages."""
    if tuple(columns) == COLUMNS:
        return "average (SAKURA 8)"
    shown = ", ".join(columns) if len(columns) <= 3 else f"{columns[0]} … {columns[-1]}, {len(columns)} columns"
    return f"average ({shown})"


def _with_average(row: Mapping[str, Any], columns: Sequence[str], label: str) -> dict[str, Any]:
    """``row`` with its mean over exactly ``columns`` under ``label``; None when it lacks one of them
    (an average over other columns would not compare with the rest of the table)."""
    values = [row.get(c) for c in columns]
    average = sum(values) / len(values) if values and all(v is not None for v in values) else None
    return {**{c: row.get(c) for c in columns}, label: average}


def _table(
    first_header: str, rows: Sequence[tuple[str, Mapping[str, Any]]], columns: Sequence[str], signed: bool = False
) -> list[str]:
    lines = [f"| {first_header} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(_fmt(row.get(c), signed) for c in columns) + " |" for label, row in rows]
    return lines


def _delta(row: Mapping[str, Any], reference: Mapping[str, Any], columns: Sequence[str], label: str) -> dict:
    """Difference per track column (``reference`` empty: ``row`` is already one) and its average."""
    difference = difference_pp(row, reference) if reference else dict(row)
    return _with_average(difference, columns, label)


def render_report(
    runs: Sequence[Run],
    baseline: Run | None = None,
    baseline_variant: str | None = None,
    text_only_run: Run | None = None,
    text_only_ablation: str = TEXT_ONLY_ABLATION,
    plots: Sequence[str] = (),
) -> str:
    """The Markdown report; ``plots`` are image paths relative to the report."""
    track_columns = _track_columns([*runs, *(r for r in (baseline, text_only_run) if r is not None)])
    average = average_label(track_columns)
    columns = (*track_columns, average)
    judges = sorted({j for run in runs for j in run.judges}) or ["none"]
    families = _families(runs)
    lines = [
        "# SAKURA results",
        "",
        (f"Judge: {', '.join(judges)}. Accuracy (%) = correct answers / questions; answers the judge could not "
         "decide (`unjudged`) count as not correct and are listed separately."),
        "",
        *([f"Model families: {', '.join(families)} (each run's in brackets after its name).", ""]
          if len(families) > 1 else []),
        "## Accuracy (%)",
        "",
    ]
    # The published row is a reference only where the table has the benchmark's columns.
    rows: list[tuple[str, Mapping[str, Any]]] = [
        ("SALMONN (published)", _with_average(PUBLISHED_SALMONN, track_columns, average))
    ] if set(COLUMNS) & set(track_columns) else []
    rows += [(_row_label(run, variant, runs), _with_average(row, track_columns, average))
             for run in runs for variant, row in run.table.items()]
    lines += _table("run / variant" if len(runs) > 1 else "variant", rows, columns)
    lines += study_section(runs, track_columns)

    summary_rows = [(_run_label(run, runs), overall(run.counts)) for run in runs]
    lines += ["", "## Questions", ""]
    lines += _table("run", summary_rows, ("questions", "correct", "incorrect", "unjudged", "accuracy"))
    for name, summary in summary_rows:
        if summary["errors"]:
            lines += ["", (f"{name}: {summary['errors']} more questions got no answer (non-finite model output or a "
                           "failed question, listed under `errors` in metrics.json); they are not judged and not "
                           "among the questions above.")]

    unjudged_rows = [(_row_label(run, v, runs), row) for run in runs for v, row in unjudged_table(run.counts).items()
                     if any(row.values())]
    if unjudged_rows:
        lines += ["", "## Unjudged answers (count)", ""]
        lines += _table("run / variant" if len(runs) > 1 else "variant", unjudged_rows, track_columns)

    if baseline is not None:
        lines += ["", f"## Delta vs baseline {baseline.name}{' / ' + baseline_variant if baseline_variant else ''} (%p)", ""]
        delta_rows = []
        for run in runs:
            for variant, row in run.table.items():
                reference = baseline.table.get(baseline_variant or variant)
                if reference is not None and (run is not baseline or variant != (baseline_variant or variant)):
                    delta_rows.append((_row_label(run, variant, runs),
                                       _delta(row, reference, track_columns, average)))
        lines += _table("run / variant", delta_rows, columns, signed=True) if delta_rows else ["No comparable rows."]

    gaps = grounding_gaps(runs, text_only_run, text_only_ablation)
    if gaps:
        lines += ["", "## Audio-grounding gap: with audio - text only (%p)", ""]
        lines += _table("with audio (vs text only)", [(f"{a} (vs {t})", _delta(gap, {}, track_columns, average))
                                                      for a, t, gap in gaps], columns, signed=True)

    lines += _caption_section(runs, track_columns)

    flagged: dict[str, int] = {}
    for run in runs:
        for record in run.records:
            if (record.get("meta") or {}).get("longer_than_target"):
                label = _row_label(run, record["variant"], runs)
                flagged[label] = flagged.get(label, 0) + 1
    if any(flagged.values()):
        lines += ["", "## Clips longer than the padding target (left unpadded)", ""]
        lines += [f"- {label}: {n}" for label, n in flagged.items() if n]

    skipped = [(_run_label(run, runs), len(run.skipped)) for run in runs if run.skipped]
    if skipped:
        lines += ["", "## Skipped questions (unreadable input; see metrics.json)", ""]
        lines += [f"- {name}: {n}" for name, n in skipped]

    for plot in plots:
        lines += ["", "## Accuracy vs information position", "", f"![Accuracy vs information position]({plot})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Accuracy vs position


def _position_series(run: Run) -> dict[str, dict[float, str]]:
    """``{"<fill> <seconds>s": {x position: variant}}`` for the run's padded / long-audio variants."""
    series: dict[str, dict[float, str]] = {}
    for variant, params in run.variant_params.items():
        if params.get("ablation", "none") != "none":
            continue
        if params.get("long_audio_seconds") is not None:
            position, seconds, fill = params.get("long_audio_position"), params["long_audio_seconds"], "distractors"
        else:
            position, seconds, fill = params.get("pad_position"), params.get("pad_seconds"), params.get("pad_fill", "?")
        if position is None or seconds is None:
            continue
        x = POSITIONS.get(position, position) if isinstance(position, str) else float(position)
        if not isinstance(x, float):
            continue
        series.setdefault(f"{fill} {float(seconds):g}s", {})[x] = variant
    return series


def _unpadded_variant(run: Run) -> str | None:
    for variant, params in run.variant_params.items():
        if params and params.get("pad_seconds", 0) is None and not params.get("strip_options") \
                and params.get("ablation", "none") == "none" and params.get("long_audio_seconds") is None:
            return variant
    return "original" if "original" in run.table else None


def _accuracy(run: Run, variant: str, column: str | None) -> float:
    """Accuracy of a variant over every slice (``column`` None) or one track-hop column."""
    counts = [c for c in run.counts if c.key.variant == variant and (column is None or c.key.column == column)]
    questions = sum(c.questions for c in counts)
    return 100.0 * sum(c.correct for c in counts) / questions if questions else float("nan")


@dataclass(frozen=True)
class PositionLine:
    """One line of the position plot: a run's accuracy per information position for one fill and duration."""

    label: str
    family: str
    run: str
    positions: tuple[float, ...]
    accuracy: tuple[float, ...]


def position_lines(runs: Sequence[Run], column: str | None = None) -> list[PositionLine]:
    """The position plot's lines for every question (``column`` None) or one track-hop column: one
    per run, fill and duration, labelled with the run (and its model family when the runs are of
    several families), so each family's position effect is a line of its own."""
    lines = []
    for run in runs:
        prefix = f"{_run_label(run, runs)}: " if len(runs) > 1 else ""
        for label, points in sorted(_position_series(run).items()):
            xs = tuple(sorted(points))
            lines.append(PositionLine(f"{prefix}{label}", run.model_family, run.name, xs,
                                      tuple(_accuracy(run, points[x], column) for x in xs)))
    return lines


def plot_position_accuracy(runs: Sequence[Run], path: str | Path) -> Path | None:
    """Accuracy vs where the information sits (early / middle / late), one line per run, fill and
    duration (:func:`position_lines`); a grid of panels, all questions together and each track-hop
    column (the study's 4 tracks x 2 hops give 3 x 3 panels). The dashed line is the run's unpadded
    accuracy. Series are shifted sideways a little and differ by marker, so identical ones stay
    visible; runs of different model families differ by line style as well. Returns None when no
    run has positional variants."""
    per_run = [(run, _position_series(run)) for run in runs]
    if not any(series for _, series in per_run):
        return None
    columns = list(_track_columns(runs))
    present = {c.key.column for run in runs for c in run.counts}
    columns = [c for c in columns if c in present]
    # "All" repeats the only column when there is one: no panel twice.
    panels: list[str | None] = [None, *columns] if len(columns) > 1 else columns
    grid_columns = min(3, len(panels))
    grid_rows = math.ceil(len(panels) / grid_columns)
    figure = Figure(figsize=(3.6 * grid_columns, 3.0 * grid_rows + 1.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(grid_rows, grid_columns, sharey=True, squeeze=False)
    colors = [f"C{i}" for i in range(10)]
    families = _families(runs)
    for index, ax in enumerate(axes.flat):
        if index >= len(panels):
            ax.set_visible(False)  # no empty panels
            continue
        column = panels[index]
        for run_index, (run, series) in enumerate(per_run):
            # Runs differ by reference-line style; series by colour, marker and a small sideways shift.
            reference = _unpadded_variant(run)
            if reference is not None and series:
                prefix = f"{_run_label(run, runs)}: " if len(runs) > 1 else ""
                ax.axhline(_accuracy(run, reference, column), color="0.4", linestyle=("--", ":", "-.")[run_index % 3],
                           linewidth=1, label=f"{prefix}{_variant_label(run, reference)}")
        lines = position_lines(runs, column)
        spread = 0.06 if len(lines) > 1 else 0.0
        for line_index, line in enumerate(lines):
            shift = (line_index - (len(lines) - 1) / 2) * spread / max(1, len(lines) - 1)
            ax.plot([x + shift for x in line.positions], line.accuracy,
                    linestyle=("-", "--", ":", "-.")[families.index(line.family) % 4],
                    marker="osD^v<>ph*"[line_index % 10], markersize=5, alpha=0.9,
                    color=colors[line_index % len(colors)], label=line.label)
        ax.set_title(column or "all questions", fontsize="medium")
        ax.set_xticks(list(POSITIONS.values()), list(POSITIONS))
        ax.set_xlim(-0.2, 1.2)
        ax.grid(alpha=0.3)
        if index % grid_columns == 0:
            ax.set_ylabel("accuracy (%)")
        if index + grid_columns >= len(panels):
            ax.set_xlabel("information position")
    axes[0][0].set_ylim(-3, 103)  # one scale for every run; markers at 0 and 100 stay visible
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="small")
    figure.suptitle("SAKURA accuracy vs information position")
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, dpi=110, format="png")
    return path


def write_report(
    runs: Sequence[Run],
    output_dir: str | Path,
    baseline: Run | None = None,
    baseline_variant: str | None = None,
    text_only_run: Run | None = None,
    text_only_ablation: str = TEXT_ONLY_ABLATION,
) -> Path:
    """Write ``report.md`` (and the position plot when there are positional variants) to ``output_dir``.

    A run's ``config.yaml`` (in its directory) names its run-level ablation and its model: rows of a
    run evaluated with ``model.ablation: no_audio`` are named ``no_audio``, and a run's grounding gap
    is taken against a text-only run of the same model."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if len(runs) == 1 and runs[0].directory is None:
        runs[0].directory = output_dir  # a run's own report: its settings are in its config.yaml
    plot = plot_position_accuracy(runs, output_dir / POSITION_PLOT)
    text = render_report(runs, baseline, baseline_variant, text_only_run, text_only_ablation,
                         plots=[plot.name] if plot else [])
    path = output_dir / REPORT_FILE
    write_text_atomic(path, text)
    return path


# ---------------------------------------------------------------------------------------------
# Weights & Biases


class SakuraWandbLogger(WandbLogger):
    """Lightning's WandbLogger, offline unless ``online=True``: runs log without an account and
    can be uploaded later with ``wandb sync``."""

    def __init__(self, project: str = "salmonn-pl", save_dir: str = ".", online: bool = False, **kwargs: Any) -> None:
        super().__init__(project=project, save_dir=save_dir, offline=not online, **kwargs)
        # Lightning passes anonymous=None, which W&B >= 0.19 answers with a deprecation notice on every run.
        if self._wandb_init.get("anonymous", "unset") is None:
            del self._wandb_init["anonymous"]

    def finalize(self, status: str) -> None:
        """Finish the W&B run when the command ends: Lightning leaves it open, and the next run started
        in the same process (a notebook sweep, a test suite) would log into it."""
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


PREDICTION_COLUMNS = (
    "id", "variant", "track", "hop", "instruction", "response", "label", "judgement", "judge_explanation", "judge",
)


def log_to_wandb(
    logger: WandbLogger | Any, run: Run, images: Mapping[str, str | Path] | None = None, prefix: str = "test"
) -> None:
    """Log a run's metrics, predictions table, slice tables and plots to a WandbLogger (or a wandb run).

    Call it on rank 0 only; on other ranks Lightning's logger ignores it anyway.
    """
    import wandb

    experiment = logger.experiment if isinstance(logger, WandbLogger) else logger
    flat = flat_metrics(run.counts, prefix)
    predictions = wandb.Table(columns=list(PREDICTION_COLUMNS),
                              data=[[r.get(c) for c in PREDICTION_COLUMNS] for r in run.records])
    slice_columns = ["track", "hop", "variant", "column", "questions", "correct", "incorrect", "unjudged", "accuracy"]
    slices = wandb.Table(columns=slice_columns, data=[[c.as_dict()[k] for k in slice_columns] for c in run.counts])
    columns = (*_track_columns([run]), AVERAGE)
    accuracy = wandb.Table(columns=["variant", *columns],
                           data=[[variant, *(row.get(c) for c in columns)] for variant, row in run.table.items()])
    payload: dict[str, Any] = {
        **flat,
        f"{prefix}/predictions": predictions,
        f"{prefix}/slices": slices,
        f"{prefix}/accuracy_table": accuracy,
    }
    payload.update({f"{prefix}/plots/{name}": wandb.Image(str(path)) for name, path in (images or {}).items()})
    experiment.log(payload)
    experiment.summary.update(flat)
