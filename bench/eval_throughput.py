"""Evaluation throughput: ``salmonn-pl test`` batched against the per-sample loop of the official inference.

Every measured run is one real ``salmonn-pl test`` (:func:`salmonn_pl.cli.build_cli`: the same
module, data module, judge and prediction store as the command line) of the tiny SALMONN
(``assets/tiny-salmonn``) over the sakura-mini clips under the conditions of a study recipe
(a *workload*), a few hundred questions each:

* ``padding``: every question as released and padded to 15 s with noise, clip in the middle (two
  conditions of ``configs/padding_sweep.yaml``): 384 questions, each distinct waveform asked twice
  (the clip's single-hop and multi-hop questions);
* ``ablation``: the six conditions of ``configs/ablation_sweep.yaml`` (read from it): 1152 questions,
  each clip asked 12 times (2 hops x 6 conditions), the audio encoders needed by 3 of the 6.

The runs of a workload differ only in how questions are batched:

* **per-sample loop**: what the official inference does, one question at a time: batch 1, right
  padding (``padding_side="right"``), beam search with 4 beams;
* **batched**: batch 1, 4, 16, 32 with left padding and the same beam search, so that each row
  decodes exactly what it would decode alone (answers are compared with the per-sample loop's);
* optionally greedy decoding (1 beam) at some batch sizes, reported apart, never in a ratio.

A batch encodes each distinct waveform once, runs only the encoders its rows' ablations keep, and
reuses the previous batch's tokens of a clip whose questions straddle the two
(``SalmonnModule.encode``). The per-sample loop encodes every question's audio, as the official
inference does: one question per batch shares nothing, and the carry-over between batches is off
for it (:func:`official_encoding`).

A run's figure is its test loop, from the first batch to the last answer stored: reading and
collating audio, encoders, generation, judging and storing. Loading the model and writing the
report at the end are fixed costs per run and are listed apart.

Where the time goes comes from wall-clock timers wrapped around the stages for the duration of the
run (exclusive times: a stage's own time, without the stages it calls): reading a wav, the
collator's Whisper log-mel, BEATs' fbank and encoder, the Whisper encoder, the Q-Former, prompt
assembly, the LLM prefill, the LLM decode steps, the beam-search bookkeeping between steps, the
judge and the prediction store. What no timer covers is Lightning's loop.

Run from the repository root (``--help`` lists every size)::

    python bench/eval_throughput.py --results bench/RESULTS.md
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import CLI
from lightning.pytorch import Callback
from transformers.models.whisper.modeling_whisper import WhisperEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, Timing, machine_header, markdown_table, write_section  # noqa: E402

import salmonn_pl.data.collate as collate_module  # noqa: E402
import salmonn_pl.eval.evaluator as evaluator_module  # noqa: E402
import salmonn_pl.generation.decode as decode_module  # noqa: E402
import salmonn_pl.model.audio_encoding as audio_encoding_module  # noqa: E402
import salmonn_pl.model.beats as beats_module  # noqa: E402
from salmonn_pl.cli import build_cli  # noqa: E402
from salmonn_pl.data.collate import SpeechCollator  # noqa: E402
from salmonn_pl.data.datamodule import SakuraDataset  # noqa: E402
from salmonn_pl.eval.evaluator import SakuraEvaluator  # noqa: E402
from salmonn_pl.eval.predictions import (  # noqa: E402
    PREDICTIONS_FILE,
    PredictionStore,
    read_predictions,
)
from salmonn_pl.generation.decode import CachedLM  # noqa: E402
from salmonn_pl.lit_module import SalmonnModule  # noqa: E402
from salmonn_pl.model.beats import BEATs  # noqa: E402
from salmonn_pl.model.salmonn import PaddingSide, Salmonn  # noqa: E402
from salmonn_pl.model.tiny import tiny_qformer_settings, write_tiny_salmonn  # noqa: E402
from salmonn_pl.model.window_qformer import WindowQFormer  # noqa: E402

DEFAULT_ROOT = SHARED / "sakura-mini"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OFFICIAL_BEAMS = 4
TARGET_SPEEDUP = 10.0
TARGET_BATCH_SIZE = 16
UNTIMED = "Lightning loop (no timer)"
# Stages whose work is one clip's, whatever the batch: batching cannot divide them.
AUDIO_STAGES = (
    "read wav + variant",
    "collate (rest)",
    "Whisper log-mel (collator)",
    "BEATs fbank",
    "BEATs encoder",
    "Whisper encoder",
    "Q-Former + projection",
    "encode (rest)",
)
# What each stage is made of and what would make it cheaper, quoted for the stages that dominate.
REMEDIES = {
    "Whisper encoder": (
        "compute-bound: attention over the fixed 1500 frames of a 30 s window, however short the clip "
        "(`WhisperEncoder.forward`, called by `encode_audio_shared` in src/salmonn_pl/model/audio_encoding.py), once "
        "per distinct waveform (a clip whose questions straddle two batches reuses the first batch's tokens). The tiny "
        "model's LLM (2 layers, 64 wide) costs less than its Whisper over 1500 frames, unlike the 7B model's "
        "(see `## gpu`); torch threads or a GPU divide it, batching does not."
    ),
    "BEATs fbank": (
        "`kaldi_fbank_batch` (src/salmonn_pl/audio/fbank.py) works in float64, as the official fbank does, on every "
        "row up to the longest clip of the batch."
    ),
    "BEATs encoder": (
        "`BEATs.extract_features_per_clip` (src/salmonn_pl/model/beats.py): each layer's gated relative position "
        "bias is materialised as a `[clips, heads, tokens, tokens]` float tensor (the `aten::mul` and `aten::add` "
        "of the operator table) and passed to SDPA as its mask; that memory traffic grows with the square of the "
        "clip's length and is the same per clip at any batch size."
    ),
    "LLM decode steps": (
        "`llama_decode_step` (src/salmonn_pl/generation/prefix_kv_cache.py): one step of every beam; the prompt's "
        "KV is held once per question and only the generated part moves on a beam reorder. At the tiny model's "
        "width a step is ~40 small kernels per layer (`aten::bmm`, `aten::mm`, elementwise rotary/RMSNorm/SiLU), "
        "so its cost is per-kernel overhead that a larger batch spreads further."
    ),
    "beam search / decode loop (rest)": (
        "`_beam_search` (src/salmonn_pl/generation/decode.py): choosing the next beams of every item in Python from "
        "one `.tolist()` of the candidates per step, plus the logits processors and `topk`."
    ),
    "prediction store (jsonl + fsync)": (
        "`PredictionStore.append` (src/salmonn_pl/eval/predictions.py) fsyncs once per batch: once per question "
        "in the per-sample loop."
    ),
    "Whisper log-mel (collator)": (
        "`whisper_log_mel` (src/salmonn_pl/audio/features.py) in the collator, once per distinct waveform of a "
        "batch, see `## features`; DataLoader workers move it off the main process."
    ),
    "Q-Former + projection": (
        "`WindowQFormer.forward` (src/salmonn_pl/model/window_qformer.py): 88 windows per clip, once per distinct "
        "(waveform, ablation) of a batch."
    ),
    "encode (rest)": (
        "`encode_audio_shared` (src/salmonn_pl/model/audio_encoding.py) around the encoders: grouping rows by "
        "audio and ablation, zeros for skipped encoders, and the sample comparisons that check shared audio."
    ),
    "LLM prefill": "`CachedLM.prefill` (src/salmonn_pl/generation/decode.py): prompt and 88 audio tokens per question.",
    UNTIMED: "Lightning's test loop around the batches.",
}
CLOSING_NOTE_STAGES = 5
PROFILE_LIMIT = 4  # questions per track and hop of the operator-profiled run (32 questions)
PROFILE_TOP_OPS = 12


# ------------------------------------------------------------------------------------------ stages


def stage_targets() -> list[tuple[str, Any, str]]:
    """``(stage, owner, attribute)``: the callables timed as each stage, in pipeline order.

    Several callables may share a stage (BEATs has a batched and a per-clip path). Functions are
    patched where they are looked up: the collator calls ``collate.whisper_log_mel``, BEATs calls
    ``beats.kaldi_fbank_batch``, ``generation.generate.generate`` calls ``decode.generate`` (the decode loop).
    """
    return [
        ("read wav + variant", SakuraDataset, "__getitem__"),
        ("collate (rest)", SpeechCollator, "__call__"),
        ("Whisper log-mel (collator)", collate_module, "whisper_log_mel"),
        ("BEATs fbank", beats_module, "kaldi_fbank_batch"),
        ("BEATs encoder", BEATs, "extract_features_per_clip"),
        ("BEATs encoder", BEATs, "extract_features"),
        ("Whisper encoder", WhisperEncoder, "forward"),
        ("Q-Former + projection", WindowQFormer, "forward"),
        ("encode (rest)", Salmonn, "encode_audio"),
        ("encode (rest)", audio_encoding_module, "encode_audio_shared"),
        ("prompt assembly + embedding", Salmonn, "assemble"),
        ("LLM prefill", CachedLM, "prefill"),
        ("LLM decode steps", CachedLM, "step"),
        ("beam search / decode loop (rest)", decode_module, "generate"),
        ("answer (rest: processors, detokenize)", SalmonnModule, "answer"),
        ("judge", evaluator_module, "judge_records"),
        ("prediction store (jsonl + fsync)", PredictionStore, "append"),
        ("evaluator (rest: records, metric)", SakuraEvaluator, "add"),
    ]


def stage_names() -> list[str]:
    return list(dict.fromkeys(stage for stage, _, _ in stage_targets())) + [UNTIMED]


class StageClock:
    """Exclusive wall-clock seconds per stage: time inside a timed call minus its timed sub-calls."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._children: list[float] = []  # per open call: seconds spent in its timed sub-calls

    def wrap(self, stage: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._children.append(0.0)
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = self.clock() - start
                self.seconds[stage] += elapsed - self._children.pop()
                self.calls[stage] += 1
                if self._children:
                    self._children[-1] += elapsed

        return timed

    @contextmanager
    def patched(self, targets: Sequence[tuple[str, Any, str]]) -> Iterator[StageClock]:
        """Time ``targets`` while the block runs; the originals are restored afterwards."""
        originals = [(owner, name, owner.__dict__[name]) for _, owner, name in targets]
        try:
            for stage, owner, name in targets:
                setattr(owner, name, self.wrap(stage, owner.__dict__[name]))
            yield self
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)


@contextmanager
def official_encoding(enabled: bool) -> Iterator[None]:
    """While enabled, no audio tokens are carried from one batch to the next.

    The official inference encodes every question's audio. At batch 1 nothing can be shared within
    a batch, but ``salmonn-pl test`` would still carry a clip's tokens to the next question about it;
    the per-sample loop runs without that, so that it does the official amount of encoder work.
    """
    if not enabled:
        yield
        return
    carrying = audio_encoding_module.encode_audio_shared

    @functools.wraps(carrying)
    def without_carry(model: Salmonn, *args: Any, carry: Any = None, **kwargs: Any) -> Any:
        return carrying(model, *args, **kwargs)

    audio_encoding_module.encode_audio_shared = without_carry
    try:
        yield
    finally:
        audio_encoding_module.encode_audio_shared = carrying


class LoopClock(Callback):
    """Start and end of the test loop (callbacks run before the module's own epoch-end hook, which
    writes the report) and the number of batches."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.batches = 0

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches += 1

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()


# -------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Workload:
    """The study conditions every sakura-mini question is asked under: ``SakuraDataModule`` variants."""

    name: str
    description: str
    variants: tuple[dict[str, Any], ...]


def ablation_sweep_variants() -> tuple[dict[str, Any], ...]:
    """The conditions of ``configs/ablation_sweep.yaml``, as its YAML lists them."""
    config = yaml.safe_load((CONFIGS / "ablation_sweep.yaml").read_text())
    return tuple(config["data"]["init_args"]["variants"])


def workloads() -> dict[str, Workload]:
    return {
        "padding": Workload(
            "padding",
            "every question as released and padded to 15 s with noise, clip in the middle (two conditions of "
            "configs/padding_sweep.yaml); a waveform is shared by a clip's two questions",
            ({}, {"pad_seconds": 15.0, "pad_fill": "noise", "pad_position": "middle"}),
        ),
        "ablation": Workload(
            "ablation",
            "the six conditions of configs/ablation_sweep.yaml (original, zero_beats, zero_whisper, zero_audio, "
            "no_audio, no_options); a clip is asked 12 times, and 3 of the 6 conditions need both encoders",
            ablation_sweep_variants(),
        ),
    }



@dataclass(frozen=True)
class RunSpec:
    """How one ``salmonn-pl test`` run batches and decodes."""

    batch_size: int
    padding_side: PaddingSide
    num_beams: int

    @property
    def name(self) -> str:
        if self.is_per_sample_loop:
            return "per-sample loop (official)"
        decoding = "beam 4" if self.num_beams == OFFICIAL_BEAMS else ("greedy" if self.num_beams == 1 else f"beam {self.num_beams}")
        return f"batch {self.batch_size}, {decoding}"

    @property
    def is_per_sample_loop(self) -> bool:
        return self.batch_size == 1 and self.padding_side == "right" and self.num_beams == OFFICIAL_BEAMS


PER_SAMPLE_LOOP = RunSpec(batch_size=1, padding_side="right", num_beams=OFFICIAL_BEAMS)


@dataclass
class RunResult:
    spec: RunSpec
    questions: int
    batches: int
    loop_seconds: float
    setup_seconds: float  # CLI parsing, model loading
    finish_seconds: float  # metrics, report and result files at the end
    stage_seconds: dict[str, float]
    decode_steps: int
    stage_calls: dict[str, int]  # calls of each timed stage
    responses: dict[tuple[str, str], str] = field(repr=False)

    @property
    def questions_per_s(self) -> float:
        return self.questions / self.loop_seconds


def cli_config(
    spec: RunSpec,
    model_dir: Path,
    root: Path,
    variants: list[dict[str, Any]],
    limit: int | None,
    max_new_tokens: int,
    output_dir: Path,
) -> dict[str, Any]:
    """The ``salmonn-pl test`` configuration of one run, as its YAML would hold it."""
    qformer = tiny_qformer_settings()
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "model": {
                "llm_path": str(model_dir / "llama"),
                "whisper_path": str(model_dir / "whisper"),
                "beats_path": str(model_dir / "beats.pt"),
                "ckpt": str(model_dir / "salmonn.pth"),
                "qformer": {
                    "hidden_size": qformer.hidden_size,
                    "num_hidden_layers": qformer.num_hidden_layers,
                    "num_attention_heads": qformer.num_attention_heads,
                    "intermediate_size": qformer.intermediate_size,
                },
                "llm_dtype": "float32",
            },
            "generation": {"num_beams": spec.num_beams, "max_new_tokens": max_new_tokens},
            "padding_side": spec.padding_side,
            "output_dir": str(output_dir),
        },
        "data": {
            "class_path": "salmonn_pl.data.datamodule.SakuraDataModule",
            "init_args": {
                "root": str(root),
                "limit": limit,
                "variants": variants,
                "batch_size": spec.batch_size,
                "num_workers": 0,
            },
        },
    }


def run_test(
    spec: RunSpec,
    model_dir: Path,
    root: Path,
    variants: list[dict[str, Any]],
    limit: int | None,
    max_new_tokens: int,
    work_dir: Path,
) -> RunResult:
    """One ``salmonn-pl test`` run into a fresh output directory (an existing one would resume)."""
    output_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
    clock, loop = StageClock(), LoopClock()
    start = time.perf_counter()
    with clock.patched(stage_targets()), official_encoding(spec.is_per_sample_loop), warnings.catch_warnings():
        # The benchmark's own command-line arguments are not meant for the CLI it builds.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = build_cli(cli_config(spec, model_dir, root, variants, limit, max_new_tokens, output_dir), run=False)
        cli.trainer.callbacks.append(loop)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    total = time.perf_counter() - start
    loop_seconds = loop.end - loop.start
    stage_seconds = {stage: clock.seconds.get(stage, 0.0) for stage in stage_names()}
    stage_seconds[UNTIMED] = max(0.0, loop_seconds - sum(stage_seconds.values()))
    records = read_predictions(output_dir / PREDICTIONS_FILE)
    return RunResult(
        spec=spec,
        questions=len(records),
        batches=loop.batches,
        loop_seconds=loop_seconds,
        setup_seconds=loop.start - start,
        finish_seconds=total - (loop.end - start),
        stage_seconds=stage_seconds,
        decode_steps=clock.calls.get("LLM decode steps", 0),
        stage_calls=dict(clock.calls),
        responses={(r["id"], r["variant"]): r["response"] for r in records},
    )


# -------------------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class OpProfile:
    """torch.profiler's operators of one untimed run, by self CPU time."""

    spec: RunSpec
    questions: int
    ops: list[tuple[str, float, int]]  # (operator, self CPU seconds, calls), largest first
    total_seconds: float  # self CPU seconds of every operator


def profile_ops(
    spec: RunSpec,
    model_dir: Path,
    root: Path,
    variants: list[dict[str, Any]],
    limit: int,
    max_new_tokens: int,
    work_dir: Path,
) -> OpProfile:
    """Operator-level profile of one run (the profiler slows it down: shares matter, not seconds)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        result = run_test(spec, model_dir, root, variants, limit, max_new_tokens, work_dir)
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in events[:PROFILE_TOP_OPS]]
    return OpProfile(spec, result.questions, ops, sum(e.self_cpu_time_total for e in events) / 1e6)


@dataclass
class WorkloadReport:
    workload: Workload
    runs: dict[RunSpec, list[RunResult]]  # every repeat of every run
    op_profile: OpProfile | None = None

    def best(self, spec: RunSpec) -> RunResult:
        return min(self.runs[spec], key=lambda r: r.loop_seconds)

    def timing(self, spec: RunSpec) -> Timing:
        return Timing(tuple(r.loop_seconds for r in self.runs[spec]))

    def speedup(self, spec: RunSpec) -> float:
        return self.timing(PER_SAMPLE_LOOP).best / self.timing(spec).best

    def agreement(self, spec: RunSpec) -> float:
        """Fraction of questions answered exactly as the per-sample loop answered them."""
        reference = self.best(PER_SAMPLE_LOOP).responses
        responses = self.best(spec).responses
        return sum(responses.get(key) == text for key, text in reference.items()) / max(1, len(reference))


@dataclass
class ThroughputReport:
    workloads: dict[str, WorkloadReport]
    markdown: str = ""


def main(
    root: Path = DEFAULT_ROOT,
    model_dir: Path | None = None,
    workload: list[str] = ["padding", "ablation"],
    limit: int | None = None,
    batch_sizes: list[int] = [1, 4, 16, 32],
    greedy_batch_sizes: list[int] = [16],
    max_new_tokens: int = 32,
    threads: int = 1,
    warmup: bool = True,
    repeats: int = 2,
    op_profile: bool = True,
    results: Path | None = None,
) -> ThroughputReport:
    """Measure ``salmonn-pl test`` questions/s, batched against the per-sample loop, and print a markdown section.

    Args:
        root: SAKURA-layout benchmark root (all four tracks, both hops).
        model_dir: a tiny SALMONN written by ``salmonn_pl.model.tiny.write_tiny_salmonn`` with its default
            sizes; by default one is written (seed 0) for this run, so every run loads the same weights.
        workload: the study conditions to measure, each on its own (``padding``, ``ablation``; see the
            module docstring).
        limit: at most this many questions per track and hop (default: all).
        batch_sizes: batch sizes of the batched runs (left padding, 4 beams).
        greedy_batch_sizes: batch sizes also run with greedy decoding (reported apart).
        max_new_tokens: longest answer, in tokens.
        threads: torch threads of the process (the data is read in the same process).
        warmup: run every configuration once on 8 questions before measuring.
        repeats: measured runs per configuration, in turns; a figure is the fastest run's.
        op_profile: also profile the operators of one batched run of the first workload (batch 16 when
            measured, else the largest batch) on 32 questions per condition, untimed.
        results: ``bench/RESULTS.md`` to update (its ``## eval_throughput`` section).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    known = workloads()
    unknown = [name for name in workload if name not in known]
    if unknown or not workload:
        raise ValueError(f"workload must name one or more of {sorted(known)}, got {workload}")
    paths = [root] if model_dir is None else [root, model_dir / "llama", model_dir / "whisper", model_dir / "beats.pt"]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (see --root / --model_dir)")
    torch.set_num_threads(threads)
    model = "tiny SALMONN written by write_tiny_salmonn(seed=0)" if model_dir is None else f"tiny SALMONN from {model_dir}"
    specs = [PER_SAMPLE_LOOP]
    specs += [RunSpec(b, "left", OFFICIAL_BEAMS) for b in batch_sizes]
    specs += [RunSpec(b, "left", 1) for b in greedy_batch_sizes]
    reports: dict[str, WorkloadReport] = {}
    with tempfile.TemporaryDirectory(prefix="eval-throughput-") as work:
        work_dir = Path(work)
        if model_dir is None:
            model_dir = work_dir / "tiny-salmonn"
            write_tiny_salmonn(model_dir, seed=0)
        for name in workload:
            load = known[name]
            variants = [dict(v) for v in load.variants]
            if warmup:
                for spec in specs:
                    run_test(spec, model_dir, root, variants, 1, max_new_tokens, work_dir)
            runs: dict[RunSpec, list[RunResult]] = {spec: [] for spec in specs}
            for _ in range(repeats):  # in turns, so that a change in machine load hits every run alike
                for spec in specs:
                    result = run_test(spec, model_dir, root, variants, limit, max_new_tokens, work_dir)
                    runs[spec].append(result)
                    print(f"{name} / {spec.name}: {result.questions} questions in {result.loop_seconds:.1f} s",
                          file=sys.stderr)
            profiled = None
            if op_profile and batch_sizes and not reports:
                size = TARGET_BATCH_SIZE if TARGET_BATCH_SIZE in batch_sizes else max(batch_sizes)
                profile_limit = PROFILE_LIMIT if limit is None else min(limit, PROFILE_LIMIT)
                profiled = profile_ops(RunSpec(size, "left", OFFICIAL_BEAMS), model_dir, root, variants,
                                       profile_limit, max_new_tokens, work_dir)
            reports[name] = WorkloadReport(load, runs, profiled)
    report = ThroughputReport(reports)
    report.markdown = render(report, model, threads, max_new_tokens)
    print(report.markdown)
    if results is not None:
        write_section(results, "eval_throughput", report.markdown)
    return report


def render(report: ThroughputReport, model: str, threads: int, max_new_tokens: int) -> str:
    first = next(iter(report.workloads.values()))
    lines = [
        machine_header(),
        f"- sizes: answers up to {max_new_tokens} tokens, {model} in fp32, {threads} torch thread(s), DataLoader "
        f"in the main process, rule judge, no logger or progress bar; best of "
        f"{len(first.runs[PER_SAMPLE_LOOP])} runs per configuration, taken in turns",
        "- per-sample loop = the official inference: batch 1, right padding, 4 beams; batched runs: left "
        "padding, 4 beams (greedy rows are not compared)",
        "- loop = first batch to last stored answer. Setup (parse, load the model) and finish (metrics, "
        "report) are fixed costs per run, not in the loop.",
        "",
    ]
    for load in report.workloads.values():
        lines += render_workload(load)
    lines += ["### Targets", "", *targets(report)]
    return "\n".join(lines)


def render_workload(load: WorkloadReport) -> list[str]:
    specs = list(load.runs)
    reference = load.best(PER_SAMPLE_LOOP)
    lines = [
        f"### Workload `{load.workload.name}`: {reference.questions} questions",
        "",
        f"sakura-mini, {load.workload.description}.",
        "",
    ]
    rows = []
    for spec in specs:
        best, timing = load.best(spec), load.timing(spec)
        rows.append([
            spec.name,
            spec.batch_size,
            spec.padding_side,
            spec.num_beams,
            timing.best,
            timing.median,
            best.questions_per_s,
            f"x{load.speedup(spec):.2f}" if spec.num_beams == OFFICIAL_BEAMS else "-",
            f"{load.agreement(spec):.0%}" if spec.num_beams == OFFICIAL_BEAMS else "-",
            best.decode_steps / max(1, best.batches),
            best.setup_seconds,
            best.finish_seconds,
        ])
    headers = ["run", "batch", "padding", "beams", "loop best s", "loop median s", "questions/s",
               "vs per-sample", "same answers", "decode steps/batch", "setup s", "finish s"]
    lines += [markdown_table(headers, rows), ""]
    lines += [f"Where the time goes in `{load.workload.name}` (ms per question, exclusive times of the fastest run):", ""]
    stage_rows = []
    for stage in stage_names():
        cells: list[object] = [stage]
        for spec in specs:
            best = load.best(spec)
            cells.append(1000 * best.stage_seconds[stage] / best.questions)
        stage_rows.append(cells)
    stage_rows.append(["**total (loop)**", *[1000 * load.best(s).loop_seconds / load.best(s).questions for s in specs]])
    lines += [markdown_table(["stage", *[s.name for s in specs]], stage_rows), ""]
    if load.op_profile is not None:
        profile = load.op_profile
        lines += [
            f"Operators of the {profile.spec.name} run of `{load.workload.name}` (torch.profiler, "
            f"{profile.questions} questions, untimed):",
            "",
        ]
        op_rows = [[f"`{name}`", 1000 * seconds / profile.questions, calls, f"{seconds / profile.total_seconds:.0%}"]
                   for name, seconds, calls in profile.ops]
        lines += [markdown_table(["operator", "self CPU ms per question", "calls", "share of all operators"], op_rows), ""]
    return lines


def targets(report: ThroughputReport) -> list[str]:
    target = RunSpec(TARGET_BATCH_SIZE, "left", OFFICIAL_BEAMS)
    lines = []
    for load in report.workloads.values():
        name = load.workload.name
        if target not in load.runs:
            lines.append(f"- `{name}`: batched >= {TARGET_SPEEDUP:g}x the per-sample loop at batch {TARGET_BATCH_SIZE}: "
                         "not measured")
            continue
        speedup = load.speedup(target)
        verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
        lines.append(f"- `{name}`: batched >= {TARGET_SPEEDUP:g}x the per-sample loop at batch {TARGET_BATCH_SIZE}: "
                     f"x{speedup:.2f}, {verdict}")
    for load in report.workloads.values():
        if target not in load.runs:
            continue
        reference, batched = load.best(PER_SAMPLE_LOOP), load.best(target)
        per_question = 1000 * reference.loop_seconds / reference.questions
        audio = 1000 * sum(batched.stage_seconds[s] for s in AUDIO_STAGES) / batched.questions
        lines += [
            "",
            f"### Closing note: `{load.workload.name}`",
            "",
            f"- bound from the audio stages (read, features, BEATs, Whisper, Q-Former): {audio:.1f} ms per question "
            f"at batch {TARGET_BATCH_SIZE} against {per_question:.1f} ms per question in the per-sample loop, so "
            f"even free generation could not exceed x{per_question / audio:.1f}",
            "",
            f"Where batch {TARGET_BATCH_SIZE} spends its time (the largest stages, ms per question, share of its loop):",
            "",
        ] + dominant_stages(batched)
    return lines


def dominant_stages(run: RunResult) -> list[str]:
    ranked = sorted(run.stage_seconds.items(), key=lambda item: item[1], reverse=True)[:CLOSING_NOTE_STAGES]
    lines = []
    for rank, (stage, seconds) in enumerate(ranked, start=1):
        remedy = REMEDIES.get(stage, "")
        lines.append(f"{rank}. **{stage}**: {1000 * seconds / run.questions:.1f} ms, "
                     f"{seconds / run.loop_seconds:.0%}. {remedy}".rstrip())
    return lines


if __name__ == "__main__":
    CLI(main, as_positional=False)
