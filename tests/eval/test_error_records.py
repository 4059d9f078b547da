"""Questions without an answer (``judgement: "error"``) are listed, never judged, never counted in
the accuracy, and stored as strict JSON."""

import json

from salmonn_pl.eval.commands import rejudge
from salmonn_pl.eval.evaluator import SakuraEvaluator, judge_records, make_error_record
from salmonn_pl.eval.judge_rule import RuleJudge
from salmonn_pl.eval.metrics import SakuraAccuracy, count_slices, metrics_document
from salmonn_pl.eval.predictions import PredictionStore, read_jsonl

QUESTION = "Which animal? (a) dog (b) cat"
META = {"track": "Animal", "hop": "single", "instruction": QUESTION, "answer": "(a) dog", "variant": "original"}


def _error(i: int) -> dict:
    return make_error_record(f"Animal/single/{i}.wav", META, "non-finite option scores", response="(a) dog")


def _judged(i: int, judgement: str) -> dict:
    return {**_error(i), "judgement": judgement, "error": None}


def test_errors_are_counted_apart_from_the_questions():
    records = [_judged(0, "correct"), _judged(1, "incorrect"), _error(2), _error(3)]
    (counts,) = count_slices(records)
    assert (counts.questions, counts.correct, counts.errors) == (2, 1, 2)
    assert counts.accuracy == 50.0
    metric = SakuraAccuracy()
    metric.update(records)
    assert metric.compute() == [counts]
    document = metrics_document([counts], "run")
    assert document["overall"]["errors"] == 2 and document["slices"][0]["errors"] == 2


def test_a_judge_never_turns_an_error_into_a_verdict(tmp_path):
    # The response names the golden option: judged, it would be "correct".
    (record,) = judge_records(RuleJudge(), [_error(0)])
    assert record["judgement"] == "error" and record["judge"] is None

    store = PredictionStore(tmp_path)
    store.append([_error(0), _judged(1, "correct")])
    store.close()
    out = rejudge(str(tmp_path), output=str(tmp_path / "rejudged"))
    assert [r["judgement"] for r in read_jsonl(f"{out}/predictions.jsonl")] == ["error", "correct"]


def test_non_finite_values_are_stored_as_null(tmp_path):
    evaluator = SakuraEvaluator(str(tmp_path))
    evaluator.start()
    meta = {**META, "option_scores": {"scores": [float("nan"), float("inf")]}}
    evaluator.add(["Animal/single/0.wav"], [meta], [""], errors=["non-finite option scores"])
    evaluator.finish()
    line = (tmp_path / "predictions.jsonl").read_text()
    record = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"bare {c}")))
    assert record["meta"]["option_scores"] == {"scores": [None, None]}
    assert record["judgement"] == "error" and record["error"] == "non-finite option scores"
    assert json.loads((tmp_path / "metrics.json").read_text())["errors"] == [
        {"id": "Animal/single/0.wav", "variant": "original", "error": "non-finite option scores"}]
    assert "1 more questions got no answer" in (tmp_path / "report.md").read_text()
