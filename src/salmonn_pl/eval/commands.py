"""``salmonn-pl-eval``: work on finished runs without the model.

``rejudge`` (another judge, e.g. an LLM judge behind an OpenAI-compatible endpoint), ``compare``
(consistency of two runs, agreement of two judges) and ``report`` (tables over runs).

``rejudge --judge_config configs/judge/<preset>.yaml`` takes the judge presets that ``salmonn-pl
test --config`` composes (``model.judge`` in the file); ``--judge.*`` options after it override
the preset's settings, e.g. ``--judge.init_args.base_url http://host:8000/v1``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import yaml

from jsonargparse import auto_cli, lazy_instance

from salmonn_pl.eval.consistency import compare_predictions, consistency_markdown
from salmonn_pl.eval.evaluator import judge_records, write_run_outputs
from salmonn_pl.eval.judge_llm import LLMJudge  # noqa: F401  (selectable as --judge LLMJudge)
from salmonn_pl.eval.judge_sakura import SakuraJudge  # noqa: F401  (selectable as --judge SakuraJudge)
from salmonn_pl.eval.judge_rule import Judge, RuleJudge
from salmonn_pl.eval.predictions import (
    PREDICTIONS_FILE,
    read_predictions,
    write_jsonl,
)
from salmonn_pl.eval.report import (
    TEXT_ONLY_ABLATION,
    load_run,
    model_family_of,
    write_report,
)


# ---------------------------------------------------------------------------------------------
# salmonn-pl-eval subcommands


def _judge_slug(judge: Judge) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", judge.name).strip("-")


def rejudge(
    predictions: str,
    judge: Judge = lazy_instance(RuleJudge),
    output: str | None = None,
    only_unjudged: bool = False,
    model_name: str = "salmonn",
) -> str:
    """Judge the answers of a finished run again, without running the model.

    Args:
        predictions: a run directory or its predictions.jsonl.
        judge: the judge, e.g. ``RuleJudge``, ``LLMJudge`` or ``SakuraJudge`` with its options, or
            a preset: ``--judge_config configs/judge/sakura_gpt4o.yaml``.
        output: directory for the re-judged run (default: ``<run>/rejudged-<judge>``); it gets
            its own predictions.jsonl, metrics.json, report.md and SAKURA-format files.
        only_unjudged: keep existing correct/incorrect judgements and judge only the rest.
        model_name: model name in the SAKURA-format result file names.
    """
    source = Path(predictions)
    run_dir = source if source.is_dir() else source.parent
    records = read_predictions(source)
    out = Path(output) if output else run_dir / f"rejudged-{_judge_slug(judge)}"
    out.mkdir(parents=True, exist_ok=True)
    if only_unjudged:
        todo = [i for i, r in enumerate(records) if r.get("judgement") not in ("correct", "incorrect")]
        for i, record in zip(todo, judge_records(judge, [records[i] for i in todo])):
            records[i] = record
    else:
        records = judge_records(judge, records)
    write_jsonl(out / PREDICTIONS_FILE, records)
    counts = write_run_outputs(out, records, run_name=out.name, model_name=model_name,
                               model_family=model_family_of(run_dir))
    total = sum(c.questions for c in counts)
    correct = sum(c.correct for c in counts)
    unjudged = sum(c.unjudged for c in counts)
    print(f"{out}: {total} answers judged by {judge.name}: {correct} correct, {unjudged} unjudged")
    return str(out)


def compare(a: str, b: str, output: str | None = None, examples: int = 10) -> dict:
    """Compare two runs: consistency of their responses and agreement of their judges.

    Consistency counts equal responses and the accuracy delta per slice; when the same answers
    were judged twice, the judges' agreement (percent and Cohen's kappa) is reported too.

    Args:
        a: first run directory or predictions.jsonl.
        b: second run directory or predictions.jsonl.
        output: directory to write consistency.md and consistency.json to (default: print only).
        examples: how many unequal responses to list.
    """
    result = compare_predictions(read_predictions(a), read_predictions(b), examples=examples)
    text = consistency_markdown(result, str(a), str(b))
    print(text)
    document = result.as_dict()
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "consistency.md").write_text(text, encoding="utf-8")
        (out / "consistency.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return document


def report(
    runs: list[str],
    baseline: str | None = None,
    baseline_variant: str | None = None,
    text_only: str | None = None,
    text_only_ablation: str = TEXT_ONLY_ABLATION,
    output: str | None = None,
) -> str:
    """Write report.md over several runs, with deltas vs a baseline and the audio-grounding gap.

    Rows are run / variant, columns track-hop as in the study; the accuracy-vs-position plot is
    added when the runs have positional variants.

    Args:
        runs: run directories (or predictions.jsonl files).
        baseline: run to subtract (per variant, or from ``baseline_variant``); may be one of ``runs``.
        baseline_variant: compare every row with this variant of the baseline run.
        text_only: run evaluated without audio, for the grounding gap; variants with the ablation
            ``text_only_ablation`` inside the runs are used too.
        text_only_ablation: name of the ablation that zeroes every audio token.
        output: directory for report.md and the plot (default: ``sakura_report`` beside the runs, in
            the runs' closest common directory).
    """
    loaded = {path: load_run(path) for path in runs}
    extra = {path: load_run(path) for path in (baseline, text_only) if path and path not in loaded}
    everything = {**loaded, **extra}
    if output is None:
        directories = [str(Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent) for p in everything]
        output = str(Path(os.path.commonpath(directories)).parent / "sakura_report") if len(directories) == 1 \
            else str(Path(os.path.commonpath(directories)) / "sakura_report")
    path = write_report(
        list(loaded.values()),
        output,
        baseline=everything[baseline] if baseline else None,
        baseline_variant=baseline_variant,
        text_only_run=everything[text_only] if text_only else None,
        text_only_ablation=text_only_ablation,
    )
    print(path.read_text())
    return str(path)


JUDGE_CONFIG_OPTION = "--judge_config"


def judge_preset(path: str | Path) -> dict:
    """The judge (``class_path`` / ``init_args``) of a preset file shaped like a run config's
    ``model: {judge: ...}`` (or a bare ``judge:``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{JUDGE_CONFIG_OPTION} {path}: no such file")
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    spec = (document.get("model") or {}).get("judge") if isinstance(document.get("model"), dict) else document.get("judge")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{JUDGE_CONFIG_OPTION} {path}: expected model.judge.class_path (a judge preset as in configs/judge/)")
    return spec


def expand_judge_config(args: list[str]) -> list[str]:
    """``--judge_config FILE`` replaced by ``--judge <the preset's judge>`` in place, so that
    ``--judge.*`` options after it override the preset."""
    expanded: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == JUDGE_CONFIG_OPTION or arg.startswith(JUDGE_CONFIG_OPTION + "="):
            path = arg.split("=", 1)[1] if "=" in arg else next(rest, None)
            if path is None:
                raise SystemExit(f"{JUDGE_CONFIG_OPTION} needs a preset file, e.g. configs/judge/sakura_gpt4o.yaml")
            expanded += ["--judge", json.dumps(judge_preset(path))]
        else:
            expanded.append(arg)
    return expanded


def main(args: list[str] | None = None) -> None:
    args = expand_judge_config(sys.argv[1:] if args is None else list(args))
    auto_cli([rejudge, compare, report], args=args, as_positional=False)


if __name__ == "__main__":
    main()
