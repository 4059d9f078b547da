"""Consistency of two prediction files and agreement of two judges."""

import copy
import math

from tests.helpers.eval_records import judged_records

from salmonn_pl.eval.consistency import compare_predictions, consistency_markdown, judge_agreement
from salmonn_pl.eval.judge_rule import VERDICTS
from salmonn_pl.eval.metrics import accuracy_table, count_slices


def test_identical_runs_are_fully_consistent():
    records = judged_records(n_clips=3)
    result = compare_predictions(records, copy.deepcopy(records))
    assert (result.total, result.equal, result.not_equal, result.percent) == (len(records), len(records), 0, 100.0)
    assert all(v == 0 for row in result.delta_pp.values() for v in row.values())
    assert result.agreement.percent == 100.0 and result.agreement.cohen_kappa == 1.0


def test_changed_responses_and_missing_questions_are_counted():
    a = judged_records(n_clips=3)
    b = copy.deepcopy(a)
    changed = list(range(0, len(b), 7))
    for i in changed:  # e.g. what right padding does to some answers in a batch
        b[i]["response"] += " Also, it might be something else."
        b[i]["judgement"] = "incorrect"
    dropped = b.pop()  # a question the second run never reached
    result = compare_predictions(a, b)

    assert result.total == len(a) - 1
    assert result.not_equal == len([i for i in changed if i < len(a) - 1])
    assert math.isclose(result.percent, 100 * result.equal / result.total)
    assert (result.only_in_a, result.only_in_b) == (1, 0)
    shared_a = [r for r in a if r["id"] != dropped["id"] or r["variant"] != dropped["variant"]]
    table_a, table_b = accuracy_table(count_slices(shared_a)), accuracy_table(count_slices(b))
    for variant, row in result.delta_pp.items():
        for column, delta in row.items():
            assert math.isclose(delta, table_b[variant][column] - table_a[variant][column])
    assert result.differing and result.differing[0]["b"].endswith("something else.")
    text = consistency_markdown(result, "batch1", "batch5")
    assert f"| {result.total} | {result.equal} | {result.not_equal} | {result.percent:.2f} | 1 | 0 |" in text


def test_judge_agreement_and_cohen_kappa():
    a = judged_records(n_clips=4)
    b = copy.deepcopy(a)
    for i, record in enumerate(b):
        record["judge"] = "other"
        if i % 5 == 0:  # the second judge disagrees on every fifth answer
            record["judgement"] = VERDICTS[(VERDICTS.index(record["judgement"]) + 1) % 3]
    ag = judge_agreement(a, b)
    n = len(a)
    observed = sum(x["judgement"] == y["judgement"] for x, y in zip(a, b)) / n
    expected = sum(
        (sum(x["judgement"] == v for x in a) / n) * (sum(y["judgement"] == v for y in b) / n) for v in VERDICTS
    )
    assert ag.compared == n and math.isclose(ag.percent, 100 * observed)
    assert math.isclose(ag.cohen_kappa, (observed - expected) / (1 - expected), rel_tol=1e-5)
    assert sum(sum(row.values()) for row in ag.confusion.values()) == n
    assert (ag.judge_a, ag.judge_b) == ("rule", "other")
