"""What ``salmonn-pl test`` runs around generation: skip, judge, store, score, report.

:class:`SakuraEvaluator` skips questions a previous run already answered, judges and stores each
batch as it comes (a crash loses at most the batch in flight), and at the end writes
``metrics.json``, ``report.md``, the position plot, the benchmark's own per-track result files and
(optionally) W&B logs. Inside a LightningModule::

    def on_test_start(self):
        self.evaluator.start(self.global_rank, self.trainer.world_size, self.device)

    def test_step(self, batch, batch_idx):
        todo = self.evaluator.pending(batch["id"], batch["meta"])
        if todo:
            responses = self.generate(select(batch, todo))
            self.evaluator.add([batch["id"][i] for i in todo], [batch["meta"][i] for i in todo], responses)

    def on_test_epoch_end(self):
        counts = self.evaluator.finish(logger=self.loggers)  # every rank calls it: it synchronises them
        self.log_dict(self.evaluator.log_dict(counts))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from salmonn_pl.eval.judge_rule import Judge, JudgeItem, RuleJudge
from salmonn_pl.eval.files import write_json_atomic
from salmonn_pl.eval.metrics import (
    ERROR,
    SakuraAccuracy,
    SliceCounts,
    error_entries,
    flat_metrics,
    is_error,
    metrics_document,
)
from salmonn_pl.eval.predictions import (
    PREDICTIONS_FILE,
    SAKURA_RESULTS_DIR,
    PredictionStore,
    Record,
    example_key,
    make_record,
    sakura_label,
    write_sakura_results,
)
from salmonn_pl.eval.report import DEFAULT_MODEL_FAMILY, METRICS_FILE, POSITION_PLOT, Run, log_to_wandb, write_report


def judge_records(judge: Judge, records: Sequence[Mapping[str, Any]]) -> list[Record]:
    """Copies of the records with ``judgement``, ``judge_explanation`` and ``judge`` filled in.

    Error records (``judgement: "error"``: the model gave no answer, see :func:`make_error_record`)
    are never judged: they are returned as they are, so no judge turns a broken output into a verdict.
    """
    todo = [i for i, r in enumerate(records) if not is_error(r)]
    items = [
        # The golden answer in the release's spelling: SakuraJudge's prompt then matches the release's.
        JudgeItem(r["instruction"], sakura_label(r), r["response"], (r.get("meta") or {}).get("original_instruction"))
        for r in (records[i] for i in todo)
    ]
    judged = [dict(r) for r in records]
    for i, judgement in zip(todo, judge.judge_many(items)):
        judged[i].update(judgement=judgement.verdict, judge_explanation=judgement.explanation, judge=judgement.judge)
    return judged


def make_error_record(example_id: str, meta: Mapping[str, Any], error: str, response: str = "") -> Record:
    """A record for a question the model could not answer: ``judgement: "error"`` with the reason in
    ``error``. It is stored (a resumed run does not ask again), listed in ``metrics.json`` and never
    judged or counted in the accuracy."""
    return {**make_record(example_id, meta, response), "judgement": ERROR, "judge_explanation": None, "error": error}


def _wandb_targets(logger: Any) -> list[Any]:
    """The W&B loggers (or wandb runs) among a logger, a list of loggers or None."""
    candidates = logger if isinstance(logger, (list, tuple)) else [logger]
    return [c for c in candidates if isinstance(c, WandbLogger) or type(c).__module__.startswith("wandb")]


def write_run_outputs(
    output_dir: str | Path,
    records: Sequence[Record],
    run_name: str | None = None,
    model_name: str = "salmonn",
    skipped: Sequence[Any] = (),
    logger: Any = None,
    model_family: str = DEFAULT_MODEL_FAMILY,
) -> list[SliceCounts]:
    """``metrics.json``, ``report.md`` (+ plot), the SAKURA-format result files and W&B logs of a run.

    ``model_family`` (e.g. ``SALMONN``, ``Qwen2-Audio``) goes into ``metrics.json``, so that reports
    over runs of several families label each run with its own.

    ``logger`` may be a logger, a list of them (``LightningModule.loggers``) or None; W&B loggers
    among them get the metrics, tables and plots, the others are left alone.
    """
    output_dir = Path(output_dir)
    run = Run(run_name or output_dir.name, list(records), skipped=list(skipped), model_family=model_family)
    document = metrics_document(run.counts, run.name, ",".join(run.judges) or None, model_family=model_family,
                                predictions=PREDICTIONS_FILE, skipped=list(skipped), errors=error_entries(records))
    write_json_atomic(output_dir / METRICS_FILE, document)
    # Error records hold no answer: the benchmark's judge script would count them as wrong answers.
    write_sakura_results([r for r in records if not is_error(r)], output_dir / SAKURA_RESULTS_DIR, model_name)
    write_report([run], output_dir)
    plot = output_dir / POSITION_PLOT
    for target in _wandb_targets(logger):
        log_to_wandb(target, run, images={"position_accuracy": plot} if plot.exists() else None)
    return run.counts


def _skipped_entry(item: Any) -> Any:
    if isinstance(item, Mapping):
        return dict(item)
    if hasattr(item, "id") and hasattr(item, "reason"):
        return {"id": item.id, "reason": item.reason}
    return str(item)


class SakuraEvaluator:
    """Judging, storing and scoring of generated answers during ``salmonn-pl test``.

    Args:
        output_dir: the run's output directory; re-using it resumes an interrupted run.
        judge: judge applied to each batch as it is stored (default: the offline rule judge).
        run_name: name of the run in reports (default: the directory name).
        model_name: model name in the SAKURA-format result file names.
        model_family: the kind of model that answers (``SALMONN``, ``Qwen2-Audio``, ...), written to
            ``metrics.json`` as ``model_family``; reports over several families label runs with it.
    """

    def __init__(
        self,
        output_dir: str,
        judge: Judge | None = None,
        run_name: str | None = None,
        model_name: str = "salmonn",
        model_family: str = DEFAULT_MODEL_FAMILY,
    ) -> None:
        if not isinstance(model_family, str) or not model_family.strip():
            raise ValueError(f"SakuraEvaluator: model_family must name the model's family (e.g. 'SALMONN'), got {model_family!r}")
        self.output_dir = Path(output_dir)
        self.judge = judge if judge is not None else RuleJudge()
        self.run_name = run_name
        self.model_name = model_name
        self.model_family = model_family
        self.store: PredictionStore | None = None
        self.metric: SakuraAccuracy | None = None

    def start(self, rank: int = 0, world_size: int = 1, device: Any = "cpu") -> None:
        """Open the store; answers already on disk count towards the metric (resume)."""
        self.store = PredictionStore(self.output_dir, rank=rank, world_size=world_size)
        self.metric = SakuraAccuracy().to(device)
        self.metric.update(self.store.records)

    @property
    def answered(self) -> int:
        """Questions this process knows to be answered (on disk when started, plus its own)."""
        return len(self._require_start().records)

    def _require_start(self) -> PredictionStore:
        if self.store is None:
            raise RuntimeError("SakuraEvaluator.start() must be called before the first batch")
        return self.store

    def pending(self, ids: Sequence[str], metas: Sequence[Mapping[str, Any]]) -> list[int]:
        """Positions in the batch of the questions still to answer."""
        return self._require_start().pending([example_key(example_id, meta) for example_id, meta in zip(ids, metas)])

    def add(self, ids: Sequence[str], metas: Sequence[Mapping[str, Any]], responses: Sequence[str],
            answers: Sequence[str] | None = None, errors: Sequence[str | None] | None = None) -> list[Record]:
        """Judge, store (durably) and count a batch of answers; returns the judged records.

        ``errors[i]``, when set, says why row ``i`` has no answer: it is stored as an error record
        (never judged, not counted in the accuracy, listed in ``metrics.json``).
        """
        store = self._require_start()
        if not len(ids) == len(metas) == len(responses):
            raise ValueError(f"add: {len(ids)} ids, {len(metas)} metas and {len(responses)} responses")
        errors = errors if errors is not None else [None] * len(ids)
        records = [
            make_error_record(example_id, meta, errors[i], response) if errors[i] is not None
            else make_record(example_id, meta, response, None if answers is None else answers[i])
            for i, (example_id, meta, response) in enumerate(zip(ids, metas, responses))
        ]
        judged = judge_records(self.judge, records)
        store.append(judged)
        self.metric.update(judged)
        return judged

    def finish(self, logger: Any = None, skipped: Sequence[Any] = ()) -> list[SliceCounts]:
        """Slice counts over every rank; rank 0 also merges the shards and writes the run's outputs.

        Every rank must call it: gathering the metric is the point where all ranks have stored
        their last batch, so rank 0 can merge the shards safely after it.
        """
        store = self._require_start()
        counts = self.metric.compute()
        store.close()
        if store.rank != 0:
            return counts
        records = store.merge_shards()
        return write_run_outputs(self.output_dir, records, self.run_name, self.model_name,
                                 [_skipped_entry(s) for s in skipped], logger, model_family=self.model_family)

    def log_dict(self, counts: Sequence[SliceCounts], prefix: str = "test") -> dict[str, float]:
        """Scalars for ``LightningModule.log_dict`` (already reduced across ranks)."""
        return flat_metrics(counts, prefix)
