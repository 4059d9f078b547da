"""Consistency of two prediction files, and agreement of two judges.

Two runs that should answer identically (batch 1 vs batch 5, fp16 vs fp32 autocast, left vs right
padding) are compared question by question on the keys both answered: how many responses are equal
(exact string equality after trimming surrounding whitespace), and how accuracy moves per slice.
When the same responses were judged twice (e.g. ``salmonn-pl-eval rejudge`` with another judge),
the judgements are compared on the questions whose responses are equal: percent agreement and
Cohen's kappa over the three verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torchmetrics.functional import cohen_kappa

from salmonn_pl.eval.judge_rule import VERDICTS
from salmonn_pl.eval.metrics import AVERAGE, Table, accuracy_table, count_slices, difference_pp, table_columns
from salmonn_pl.eval.predictions import Key, Record, dedupe, record_key


@dataclass
class JudgeAgreement:
    judge_a: str
    judge_b: str
    compared: int
    agree: int
    cohen_kappa: float
    confusion: dict[str, dict[str, int]]  # verdict of a -> verdict of b -> questions

    @property
    def percent(self) -> float:
        return 100.0 * self.agree / self.compared if self.compared else float("nan")


@dataclass
class Consistency:
    total: int  # questions answered in both files
    equal: int
    only_in_a: int
    only_in_b: int
    accuracy_a: Table  # on the shared questions
    accuracy_b: Table
    delta_pp: Table  # b - a, per variant and column
    agreement: JudgeAgreement | None
    differing: list[dict[str, Any]] = field(default_factory=list)  # a few examples of unequal responses

    @property
    def not_equal(self) -> int:
        return self.total - self.equal

    @property
    def percent(self) -> float:
        """Consistency: percent of shared questions with equal responses."""
        return 100.0 * self.equal / self.total if self.total else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "equal": self.equal, "not_equal": self.not_equal, "consistency": self.percent,
            "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
            "accuracy_a": self.accuracy_a, "accuracy_b": self.accuracy_b, "delta_pp": self.delta_pp,
            "agreement": None if self.agreement is None else {**self.agreement.__dict__, "percent": self.agreement.percent},
            "differing": self.differing,
        }


def _judge_name(records: Sequence[Mapping[str, Any]]) -> str:
    names = sorted({str(r.get("judge")) for r in records if r.get("judge")})
    return ",".join(names) or "unknown"


def judge_agreement(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> JudgeAgreement:
    """Agreement of the judgements of paired records (same question, same response)."""
    pairs = [(x.get("judgement") or "unjudged", y.get("judgement") or "unjudged") for x, y in zip(a, b)]
    confusion = {va: dict.fromkeys(VERDICTS, 0) for va in VERDICTS}
    for va, vb in pairs:
        confusion[va][vb] += 1
    if pairs:
        target = torch.tensor([VERDICTS.index(va) for va, _ in pairs])
        preds = torch.tensor([VERDICTS.index(vb) for _, vb in pairs])
        kappa = float(cohen_kappa(preds, target, task="multiclass", num_classes=len(VERDICTS)))
    else:
        kappa = float("nan")
    return JudgeAgreement(_judge_name(a), _judge_name(b), len(pairs), sum(va == vb for va, vb in pairs), kappa, confusion)


def compare_predictions(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], examples: int = 10) -> Consistency:
    by_key_a: dict[Key, Record] = {record_key(r): r for r in dedupe(a)}
    by_key_b: dict[Key, Record] = {record_key(r): r for r in dedupe(b)}
    shared = [key for key in by_key_a if key in by_key_b]
    shared_a = [by_key_a[k] for k in shared]
    shared_b = [by_key_b[k] for k in shared]
    same = [(x, y) for x, y in zip(shared_a, shared_b) if x["response"].strip() == y["response"].strip()]
    judged = [(x, y) for x, y in same if x.get("judgement") and y.get("judgement")]
    table_a, table_b = accuracy_table(count_slices(shared_a)), accuracy_table(count_slices(shared_b))
    differing = [
        {"id": x["id"], "variant": x["variant"], "a": x["response"], "b": y["response"]}
        for x, y in zip(shared_a, shared_b)
        if x["response"].strip() != y["response"].strip()
    ][:examples]
    return Consistency(
        total=len(shared),
        equal=len(same),
        only_in_a=len(by_key_a) - len(shared),
        only_in_b=len(by_key_b) - len(shared),
        accuracy_a=table_a,
        accuracy_b=table_b,
        delta_pp={v: difference_pp(table_b[v], table_a[v]) for v in table_b if v in table_a},
        agreement=judge_agreement([x for x, _ in judged], [y for _, y in judged]) if judged else None,
        differing=differing,
    )


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def consistency_markdown(result: Consistency, name_a: str = "a", name_b: str = "b") -> str:
    columns = table_columns(c for row in result.delta_pp.values() for c in row if c != AVERAGE)
    lines = [
        f"# Consistency: {name_a} vs {name_b}",
        "",
        "| total | equal | not equal | consistency % | only in a | only in b |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {result.total} | {result.equal} | {result.not_equal} | {result.percent:.2f} "
        f"| {result.only_in_a} | {result.only_in_b} |",
        "",
        f"## Accuracy delta ({name_b} - {name_a}, %p, shared questions)",
        "",
        "| variant | " + " | ".join((*columns, AVERAGE)) + " |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for variant, row in result.delta_pp.items():
        lines.append(f"| {variant} | " + " | ".join(_cell(row.get(c)) for c in (*columns, AVERAGE)) + " |")
    if result.agreement is not None:
        ag = result.agreement
        lines += [
            "",
            f"## Judge agreement: {ag.judge_a} vs {ag.judge_b} ({ag.compared} equal responses)",
            "",
            f"Agreement {ag.percent:.2f} %, Cohen's kappa {ag.cohen_kappa:.3f}.",
            "",
            f"| {ag.judge_a} \\ {ag.judge_b} | " + " | ".join(VERDICTS) + " |",
            "|---|" + "---:|" * len(VERDICTS),
        ]
        lines += [f"| {va} | " + " | ".join(str(ag.confusion[va][vb]) for vb in VERDICTS) + " |" for va in VERDICTS]
    if result.differing:
        lines += ["", "## Examples of unequal responses", ""]
        for d in result.differing:
            lines.append(f"- `{d['id']}` ({d['variant']}): {d['a']!r} vs {d['b']!r}")
    return "\n".join(lines) + "\n"
