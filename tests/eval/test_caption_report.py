"""The report's hearing-vs-reasoning table (SAKURA's text control) and runs of several model families."""

import json

import pytest
from tests.helpers.eval_records import synthetic_examples

from salmonn_pl.data.variants import Variant
from salmonn_pl.eval.evaluator import SakuraEvaluator
from salmonn_pl.eval.report import (
    CAPTION_SECTION,
    POSITION_PLOT,
    Run,
    caption_pairs,
    grounding_gaps,
    load_run,
    position_lines,
    render_report,
    write_report,
)


def _params(**settings) -> dict:
    variant = Variant(**settings)
    return variant.params()


def _records(variant: str, params: dict, outcomes: dict[tuple[str, str], str]) -> list[dict]:
    """One record per letter of ``outcomes[(track, hop)]``: c = correct, i = incorrect, u = unjudged."""
    verdicts = {"c": "correct", "i": "incorrect", "u": "unjudged"}
    return [
        {"id": f"{track}/{hop}/clip{n}.wav", "variant": variant, "track": track, "hop": hop,
         "judgement": verdicts[letter], "meta": {"variant_params": params}}
        for (track, hop), letters in outcomes.items() for n, letter in enumerate(letters)
    ]


AUDIO = {("Gender", "single"): "ciii", ("Gender", "multi"): "ccii", ("Animal", "single"): "cccu"}
CAPTION = {("Gender", "single"): "cccc", ("Gender", "multi"): "ccci", ("Animal", "single"): "ciuu"}


def _caption_run(name: str = "run", family: str = "SALMONN") -> Run:
    records = (_records("original", _params(), AUDIO) + _records("text_caption", _params(text_caption=True), CAPTION)
               + _records("no_audio", _params(ablation="no_audio"), AUDIO))
    return Run(name, records, model_family=family)


def _table_after(text: str, heading: str) -> dict[str, list[str]]:
    """Rows of the first table after ``heading``: {first cell: other cells}."""
    rows: dict[str, list[str]] = {}
    for line in text.split(heading, 1)[1].splitlines():
        if line.startswith("#") and rows:
            break
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_caption_table_gives_audio_caption_and_gap_per_track_and_hop():
    text = render_report([_caption_run()])
    assert CAPTION_SECTION in text
    rows = _table_after(text, "### original vs text_caption")
    assert rows["track / hop"] == ["audio (%)", "caption (%)", "gap (%p)"]
    # Gender single: 1/4 with audio, 4/4 read; multi: 2/4 and 3/4; Animal single: 3/4 (one unjudged) and 1/4.
    assert rows["gender-single"] == ["25.0", "100.0", "+75.0"]
    assert rows["gender-multi"] == ["50.0", "75.0", "+25.0"]
    assert rows["animal-single"] == ["75.0", "25.0", "-50.0"]
    average = "average (animal-single, gender-multi, gender-single)"
    assert rows[average] == ["50.0", "66.7", "+16.7"]
    assert set(rows) == {"track / hop", "animal-single", "gender-multi", "gender-single", average}


def test_a_hop_missing_from_one_variant_has_no_gap_and_no_average():
    records = (_records("original", _params(), {("Gender", "single"): "ci", ("Gender", "multi"): "cc"})
               + _records("text_caption", _params(text_caption=True), {("Gender", "single"): "cc"}))
    rows = _table_after(render_report([Run("r", records)]), "### original vs text_caption")
    assert rows["gender-multi"] == ["100.0", "–", "–"]
    assert rows["gender-single"] == ["50.0", "100.0", "+50.0"]
    assert rows["average (gender-multi, gender-single)"] == ["–", "–", "–"]


def test_captions_pair_with_the_unaltered_audio_of_the_same_question_form():
    records = []
    for settings in ({}, {"strip_options": True}, {"pad_seconds": 15.0}, {"ablation": "zero_audio"},
                     {"text_caption": True}, {"text_caption": True, "strip_options": True}):
        variant = Variant(**settings)
        records += _records(variant.name, variant.params(), {("Gender", "single"): "ci"})
    run = Run("r", records)
    assert set(caption_pairs(run)) == {("original", "text_caption"), ("no_options", "no_options-text_caption")}
    text = render_report([run])
    assert "### original vs text_caption" in text and "### no_options vs no_options-text_caption" in text


def test_no_caption_table_without_both_variants():
    only_caption = _records("text_caption", _params(text_caption=True), CAPTION)
    padded_only = _records("pad15s-zero-early", _params(pad_seconds=15.0), AUDIO)
    assert CAPTION_SECTION not in render_report([Run("a", only_caption + padded_only)])
    assert CAPTION_SECTION not in render_report([Run("b", _records("original", _params(), AUDIO))])


def test_a_run_level_ablation_leaves_no_audio_variant_to_compare(tmp_path):
    import yaml

    directory = tmp_path / "zeroed"
    directory.mkdir()
    (directory / "config.yaml").write_text(yaml.safe_dump({"model": {"ablation": "zero_audio"}}))
    run = Run("zeroed", _caption_run().records, directory=directory)
    assert caption_pairs(run) == []


def test_the_caption_is_no_text_only_reference_of_the_grounding_gap():
    gaps = grounding_gaps([_caption_run()])
    assert [(audio, text) for audio, text, _ in gaps] == [("original", "no_audio")]
    # A run written before text_caption existed still pairs with a newer text-only run.
    old_params = {k: v for k, v in _params().items() if k != "text_caption"}
    old = Run("old", _records("original", old_params, AUDIO))
    new_text = Run("new", _records("no_audio", _params(ablation="no_audio"), AUDIO))
    assert [(a, t) for a, t, _ in grounding_gaps([old], text_only_run=new_text)] == [("old / original", "new / no_audio")]


def test_one_caption_block_per_run_labelled_with_its_family():
    runs = [_caption_run("salmonn13b", "SALMONN"), _caption_run("qwen", "Qwen2-Audio")]
    text = render_report(runs)
    assert "Model families: SALMONN, Qwen2-Audio" in text
    assert _table_after(text, "### salmonn13b (SALMONN): original vs text_caption")["gender-single"][2] == "+75.0"
    assert _table_after(text, "### qwen (Qwen2-Audio): original vs text_caption")["gender-multi"][2] == "+25.0"
    accuracy = _table_after(text, "## Accuracy (%)")
    assert "qwen (Qwen2-Audio) / text_caption" in accuracy and "salmonn13b (SALMONN) / original" in accuracy
    assert {"salmonn13b (SALMONN)", "qwen (Qwen2-Audio)"} <= set(_table_after(text, "## Questions"))


def test_runs_of_one_family_are_not_labelled_with_it():
    text = render_report([_caption_run("a"), _caption_run("b")])
    assert "Model families" not in text and "(SALMONN)" not in text
    assert "### a: original vs text_caption" in text and "a / original" in _table_after(text, "## Accuracy (%)")


def _padded_run(name: str, family: str, late: str) -> Run:
    records = _records("original", _params(), {("Gender", "single"): "cccc"})
    for position, letters in (("early", "cccc"), ("middle", "ccci"), ("late", late)):
        params = _params(pad_seconds=15.0, pad_position=position)
        records += _records(Variant(**params).name, params, {("Gender", "single"): letters})
    return Run(name, records, model_family=family)


def test_position_plot_has_lines_per_family(tmp_path):
    runs = [_padded_run("salmonn", "SALMONN", "ciii"), _padded_run("qwen", "Qwen2-Audio", "cccc")]
    lines = position_lines(runs)
    assert [(line.label, line.family) for line in lines] == [
        ("salmonn (SALMONN): zero 15s", "SALMONN"), ("qwen (Qwen2-Audio): zero 15s", "Qwen2-Audio")]
    assert lines[0].positions == (0.0, 0.5, 1.0)
    assert lines[0].accuracy == (100.0, 75.0, 25.0) and lines[1].accuracy == (100.0, 75.0, 100.0)
    assert position_lines(runs, "gender-single")[0].accuracy == (100.0, 75.0, 25.0)
    write_report(runs, tmp_path)
    assert (tmp_path / POSITION_PLOT).stat().st_size > 10_000
    # One family: the lines name their runs only.
    assert [line.label for line in position_lines([_padded_run("a", "SALMONN", "cccc"),
                                                   _padded_run("b", "SALMONN", "cccc")])] == ["a: zero 15s", "b: zero 15s"]


@pytest.mark.parametrize("family", [None, "Qwen2-Audio"])
def test_the_evaluator_writes_the_model_family_and_reports_read_it(tmp_path, family):
    evaluator = SakuraEvaluator(str(tmp_path), **({"model_family": family} if family else {}))
    evaluator.start()
    examples = synthetic_examples(n_clips=1)
    evaluator.add([e[0] for e in examples], [e[1] for e in examples], [e[2] for e in examples])
    evaluator.finish()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model_family"] == (family or "SALMONN")
    assert load_run(tmp_path).model_family == (family or "SALMONN")


def test_a_run_without_model_family_counts_as_salmonn(tmp_path):
    (tmp_path / "predictions.jsonl").write_text(json.dumps(_records("original", _params(), AUDIO)[0]) + "\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"run": "old", "skipped": []}))
    assert load_run(tmp_path).model_family == "SALMONN"
    (tmp_path / "metrics.json").write_text(json.dumps({"run": "odd", "model_family": 3}))
    with pytest.raises(ValueError, match="metrics.json: model_family must be a name"):
        load_run(tmp_path)


def test_the_evaluator_refuses_an_empty_family(tmp_path):
    with pytest.raises(ValueError, match="model_family"):
        SakuraEvaluator(str(tmp_path), model_family="")
