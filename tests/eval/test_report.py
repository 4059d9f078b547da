"""report.md tables, the position plot and offline W&B logging."""

import json
from pathlib import Path

import pytest
import yaml
from tests.helpers.eval_records import judged_records, pad_sweep_variants

from salmonn_pl.eval.metrics import AVERAGE, COLUMNS, PUBLISHED_SALMONN, difference_pp
from salmonn_pl.eval.report import (
    POSITION_PLOT,
    Run,
    SakuraWandbLogger,
    grounding_gaps,
    load_run,
    log_to_wandb,
    render_report,
    write_report,
)


def _markdown_rows(text: str, section: str) -> dict[str, list[str]]:
    """Rows of the first table after a heading, as {first cell: other cells}."""
    body = text.split(section, 1)[1]
    rows = {}
    for line in body.splitlines():
        if line.startswith("## ") and rows:
            break
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def sweep_run():
    return Run("sweep", judged_records(n_clips=3, variants=pad_sweep_variants()))


def test_accuracy_table_is_laid_out_like_the_study(sweep_run):
    text = render_report([sweep_run])
    rows = _markdown_rows(text, "## Accuracy (%)")
    header = rows.pop("variant")
    assert header == [*COLUMNS, "average (SAKURA 8)"]
    assert rows["SALMONN (published)"][:8] == [f"{v:.1f}" for v in PUBLISHED_SALMONN.values()]
    assert set(rows) - {"SALMONN (published)"} == set(sweep_run.table)
    for variant, cells in rows.items():
        if variant in sweep_run.table:
            assert cells == [f"{sweep_run.table[variant][c]:.1f}" for c in (*COLUMNS, AVERAGE)]


def test_unjudged_answers_are_reported(sweep_run):
    text = render_report([sweep_run])
    rows = _markdown_rows(text, "## Unjudged answers (count)")
    rows.pop("variant")
    expected = {}
    for c in sweep_run.counts:
        expected.setdefault(c.key.variant, {})[c.key.column] = c.unjudged
    assert rows and all(cells == [str(expected[v][c]) for c in COLUMNS] for v, cells in rows.items())
    assert sum(int(x) for cells in rows.values() for x in cells) == sum(c.unjudged for c in sweep_run.counts) > 0


def test_grounding_gap_pairs_text_only_with_the_unpadded_variant(sweep_run):
    gaps = grounding_gaps([sweep_run])
    assert [(a, t) for a, t, _ in gaps] == [("original", "zero_audio")]
    assert gaps[0][2] == difference_pp(sweep_run.table["original"], sweep_run.table["zero_audio"])
    text = render_report([sweep_run])
    rows = _markdown_rows(text, "## Audio-grounding gap")
    assert rows["original (vs zero_audio)"] == [f"{gaps[0][2][c]:+.1f}" for c in (*COLUMNS, AVERAGE)]


def test_delta_vs_a_baseline_run_and_a_text_only_run():
    variants = pad_sweep_variants()
    base = Run("base", judged_records(n_clips=3, variants={"original": variants["original"]}, seed=1))
    tuned = Run("tuned", judged_records(n_clips=3, variants={"original": variants["original"]}, seed=2))
    blind = Run("blind", judged_records(n_clips=3, variants={"zero_audio": variants["zero_audio"]}, seed=3))
    text = render_report([base, tuned], baseline=base, text_only_run=blind)
    delta = _markdown_rows(text, "## Delta vs baseline base")
    assert "base / original" not in delta
    expected = difference_pp(tuned.table["original"], base.table["original"])
    assert delta["tuned / original"] == [f"{expected[c]:+.1f}" for c in (*COLUMNS, AVERAGE)]
    gaps = _markdown_rows(text, "## Audio-grounding gap")
    assert set(gaps) - {"with audio (vs text only)"} == {"base / original (vs blind / zero_audio)", "tuned / original (vs blind / zero_audio)"}


def test_flagged_clips_and_skipped_questions_are_listed():
    records = judged_records(n_clips=2)
    for record in records[:3]:
        record["meta"]["longer_than_target"] = True
    run = Run("flags", records, skipped=[{"id": "Animal/single/bad.wav", "reason": "empty file"}])
    text = render_report([run])
    assert "## Clips longer than the padding target (left unpadded)\n\n- original: 3" in text
    assert "- flags: 1" in text.split("## Skipped questions", 1)[1]


def test_position_plot_is_written_and_linked(tmp_path, sweep_run):
    report = write_report([sweep_run], tmp_path)
    plot = tmp_path / POSITION_PLOT
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert f"![Accuracy vs information position]({POSITION_PLOT})" in report.read_text()


def test_no_plot_without_positional_variants(tmp_path):
    run = Run("plain", judged_records(n_clips=2))
    write_report([run], tmp_path)
    assert not (tmp_path / POSITION_PLOT).exists()
    assert "information position" not in (tmp_path / "report.md").read_text()


def test_wandb_offline_logging(tmp_path, monkeypatch, sweep_run):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    write_report([sweep_run], tmp_path)
    logger = SakuraWandbLogger(save_dir=str(tmp_path), name="test-run")
    log_to_wandb(logger, sweep_run, images={"position_accuracy": tmp_path / POSITION_PLOT})
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    summary = dict(logger.experiment.summary)
    logger.experiment.finish()

    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in (run_dir / "files" / "media" / "table" / "test").glob("*.table.json")}
    assert len(tables["predictions"]["data"]) == len(sweep_run.records)
    assert len(tables["slices"]["data"]) == len(sweep_run.counts)
    assert list((run_dir / "files" / "media" / "images" / "test" / "plots").glob("position_accuracy*.png"))
    assert summary["test/acc/original/emotion-single"] == pytest.approx(sweep_run.table["original"]["emotion-single"])


def _with_synthetic_track(records: list[dict]) -> list[dict]:
    """The records plus a copy of the Animal ones relabelled as the demo's ``Synthetic`` track."""
    synthetic = [{**r, "id": "Synthetic" + r["id"][len("Animal"):], "track": "Synthetic"}
                 for r in records if r["track"] == "Animal"]
    return records + synthetic


def test_other_tracks_get_their_own_columns_after_the_study_ones():
    run = Run("mixed", _with_synthetic_track(judged_records(n_clips=3)))
    text = render_report([run])
    rows = _markdown_rows(text, "## Accuracy (%)")
    header = rows.pop("variant")
    assert header == [*COLUMNS, "synthetic-multi", "synthetic-single",
                      "average (animal-multi … synthetic-single, 10 columns)"]
    published = rows.pop("SALMONN (published)")
    assert published[:8] == [f"{v:.1f}" for v in PUBLISHED_SALMONN.values()]
    # No published figure for the other track, so no average over the ten columns for that row.
    assert published[8:] == ["–", "–", "–"]
    row = run.table["original"]
    assert rows["original"] == [f"{row[c]:.1f}" for c in (*header[:-1], AVERAGE)]
    # The copied track scores what the Animal track scores: the cells come from its own slices.
    assert row["synthetic-multi"] == row["animal-multi"] and row["synthetic-single"] == row["animal-single"]

    unjudged = _markdown_rows(text, "## Unjudged answers (count)")
    assert unjudged.pop("variant") == [*COLUMNS, "synthetic-multi", "synthetic-single"]
    counts = {c.key.column: c.unjudged for c in run.counts}
    assert unjudged["original"] == [str(counts[c]) for c in (*COLUMNS, "synthetic-multi", "synthetic-single")]


def test_a_run_of_another_track_only_fills_its_own_columns():
    records = [r for r in _with_synthetic_track(judged_records(n_clips=3)) if r["track"] == "Synthetic"]
    run = Run("demo", records)
    rows = _markdown_rows(render_report([run]), "## Accuracy (%)")
    header = rows.pop("variant")
    # Its own columns only, an average that says what it averages, and no published SAKURA row.
    assert header == ["synthetic-multi", "synthetic-single", "average (synthetic-multi, synthetic-single)"]
    cells = dict(zip(header, rows["original"]))
    assert cells["synthetic-single"] == f"{run.table['original']['synthetic-single']:.1f}" != "–"
    table = run.table["original"]
    assert cells[header[-1]] == f"{(table['synthetic-multi'] + table['synthetic-single']) / 2:.1f}"
    assert "SALMONN (published)" not in rows


def _run_dir(tmp_path, name: str, records: list[dict], ablation: str = "none", ckpt: str = "model.pth") -> Path:
    """A run directory as `salmonn-pl test` leaves it: predictions.jsonl and the saved config.yaml."""
    directory = tmp_path / name
    directory.mkdir(parents=True)
    with open(directory / "predictions.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    (directory / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"model": {"llm_path": "llama", "ckpt": ckpt}, "ablation": ablation, "output_dir": str(directory)}}))
    return directory


def test_a_run_level_ablation_names_its_rows(tmp_path):
    directory = _run_dir(tmp_path, "after_text", judged_records(n_clips=2), ablation="no_audio")
    rows = _markdown_rows(render_report([load_run(directory)]), "## Accuracy (%)")
    assert "no_audio" in rows and "original" not in rows


def test_text_only_runs_pair_with_their_own_models_run(tmp_path):
    records = judged_records(n_clips=2)
    runs = [load_run(_run_dir(tmp_path, name, records, ablation, ckpt)) for name, ablation, ckpt in (
        ("before", "none", "base.pth"), ("before_text", "no_audio", "base.pth"),
        ("after", "none", "fitted.ckpt"), ("after_text", "no_audio", "fitted.ckpt"))]
    pairs = {(audio, text) for audio, text, _ in grounding_gaps(runs)}
    assert pairs == {("before / original", "before_text / no_audio"), ("after / original", "after_text / no_audio")}


def test_position_plot_of_four_tracks_and_two_hops_is_a_grid(tmp_path, sweep_run):
    import matplotlib.image

    from salmonn_pl.eval.report import plot_position_accuracy

    image = matplotlib.image.imread(plot_position_accuracy([sweep_run], tmp_path / "grid.png"))
    height, width = image.shape[:2]
    # All questions + 8 track-hop panels in a 3 x 3 grid: about as tall as wide, not one long row.
    assert 0.7 < height / width < 1.3, (height, width)
