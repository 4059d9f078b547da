"""Feature-extraction throughput: our batched Whisper log-mel (and BEATs fbank) against transformers.

Two measurements on the same SAKURA clips, in one run so that their ratios are comparable:

1. **features alone** (waveforms already in memory, one process, ``threads`` torch threads):
   (a) transformers' ``WhisperFeatureExtractor`` called per clip, as the official SALMONN data path
   does; (b) our batched :func:`~salmonn_pl.audio.features.whisper_log_mel`; (c) (b) plus the BEATs
   Kaldi fbank in float64 as the model computes it (on the CPU here; on a GPU when one is present,
   an extra row). Both as the clips are released and padded to ``pad_seconds``.
2. **full data path** through ``torch.utils.data.DataLoader`` with 0, 1, 2 worker processes: reading
   the wav, the padding variant and the features of (a), (b) or (c) at collation, exactly as
   :class:`~salmonn_pl.data.datamodule.SakuraDataModule` serves them. Every pass includes starting
   its workers, like a real run, and is extrapolated to the full benchmark's 4000 questions.

Run from the repository root (``--help`` lists every size)::

    python bench/features.py --results bench/RESULTS.md    # the recorded figures, 5-8 min on 2 cores
    python bench/features.py --pad_fill noise --workers '[]'   # features alone, with noise padding
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jsonargparse import CLI
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from transformers import WhisperFeatureExtractor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SHARED,
    Timing,
    load_average,
    machine_header,
    markdown_table,
    time_interleaved,
    write_section,
)

from salmonn_pl.audio.load import SAMPLE_RATE, prepare_official  # noqa: E402
from salmonn_pl.data.collate import Batch, Example, SpeechCollator  # noqa: E402
from salmonn_pl.data.datamodule import SakuraDataModule  # noqa: E402
from salmonn_pl.audio.features import whisper_log_mel  # noqa: E402
from salmonn_pl.data.sakura import load_question_audio, read_sakura  # noqa: E402
from salmonn_pl.data.variants import PadFill, PadPosition, Variant  # noqa: E402
from salmonn_pl.model.beats import INT16_SCALE, NUM_MEL_BINS  # noqa: E402
from salmonn_pl.audio.fbank import kaldi_fbank_batch  # noqa: E402

DEFAULT_ROOT = SHARED / "sakura-mini"
FULL_BENCHMARK_QUESTIONS = 4000  # 4 tracks x 500 clips x 2 hops, each question read and featurised once
# Our float32 log-mel against transformers' float32 extractor; the same budget as the parity tests.
MAX_ABS_DIFF = 1e-4
TARGET_SPEEDUP = 3.0
TARGET_FULL_RUN_SECONDS = 60.0

TRANSFORMERS = "(a) transformers WhisperFeatureExtractor, per clip"
LOG_MEL = "(b) whisper_log_mel, batched"
LOG_MEL_FBANK = "(c) whisper_log_mel + BEATs fbank (float64 CPU), batched"
FBANK_GPU = "BEATs fbank alone (float64 GPU), batched"


@dataclass(frozen=True)
class Row:
    """One measured method: ``clips`` clips per pass, ``timing`` over the passes."""

    section: str  # "features" (in memory) or "data path" (DataLoader)
    condition: str
    method: str
    workers: int | None
    clips: int
    timing: Timing

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.timing.best


@dataclass(frozen=True)
class FeaturesReport:
    rows: list[Row]
    max_abs_diff: dict[str, float]  # condition -> max |(b) - (a)| over the distinct clips
    markdown: str = ""

    def row(self, section: str, condition: str, method: str, workers: int | None = None) -> Row:
        for row in self.rows:
            if (row.section, row.condition, row.method, row.workers) == (section, condition, method, workers):
                return row
        raise KeyError(f"no row {section!r} / {condition!r} / {method!r} / workers={workers}")

    def speedup(self, row: Row) -> float:
        """How many times faster than (a) on the same section, condition and worker count."""
        reference = self.row(row.section, row.condition, TRANSFORMERS, row.workers)
        return reference.timing.best / (row.timing.best * reference.clips / row.clips)


def main(
    root: Path = DEFAULT_ROOT,
    clips: int = 288,
    batch_size: int = 8,
    pad_seconds: float = 30.0,
    pad_fill: PadFill = "zero",
    pad_position: PadPosition = "early",
    workers: list[int] = [0, 1, 2],
    threads: int = 1,
    warmup: int = 1,
    repeats: int = 3,
    results: Path | None = None,
) -> FeaturesReport:
    """Measure feature extraction on SAKURA clips and print a markdown section.

    Args:
        root: SAKURA root (release layout or local Hugging Face copy); its clips are repeated in
            order until there are ``clips`` of them.
        clips: clips per measured pass.
        batch_size: clips per batch for the batched methods and the DataLoader.
        pad_seconds: length of the padded condition (the study's pad variant).
        pad_fill: padding of the padded condition (``zero`` or ``noise``).
        pad_position: where the clip sits in the padded condition.
        workers: DataLoader worker counts of the full data path (an empty list skips it).
        threads: torch threads of the main process (DataLoader workers always use one).
        warmup: untimed batches before the in-memory timings.
        repeats: timed passes per measurement; the best one is reported.
        results: markdown file whose ``## features`` section is replaced with this run's figures.
    """
    if clips < 1 or batch_size < 1:
        raise ValueError(f"clips and batch_size must be positive, got clips={clips}, batch_size={batch_size}")
    load_at_start = load_average()
    torch.set_num_threads(threads)
    extractor = WhisperFeatureExtractor()  # its defaults are Whisper's: 80 mels, 30 s, 16 kHz
    variant = Variant(pad_seconds=pad_seconds, pad_fill=pad_fill, pad_position=pad_position)
    released = read_clips(root)
    conditions = {
        "as released": released,
        f"padded to {pad_seconds:g} s ({pad_fill}, {pad_position})": [
            variant.apply_audio(wav, f"clip{i}").wav for i, wav in enumerate(released)
        ],
    }

    rows: list[Row] = []
    max_abs_diff: dict[str, float] = {}
    for condition, distinct in conditions.items():
        prepared = [prepare_official(wav) for wav in distinct[:clips]]
        max_abs_diff[condition] = check_against_transformers(prepared, extractor, batch_size)
        repeated = [prepared[i % len(prepared)] for i in range(clips)]
        rows += feature_rows(condition, repeated, extractor, batch_size, warmup, repeats)

    padded_condition = list(conditions)[1]
    for worker_count in workers:
        rows += data_path_rows(padded_condition, root, variant, clips, extractor, batch_size, worker_count, repeats)

    report = FeaturesReport(rows=rows, max_abs_diff=max_abs_diff)
    markdown = render(report, clips, batch_size, threads, warmup, repeats, len(released), load_at_start)
    report = replace(report, markdown=markdown)
    print(report.markdown)
    if results is not None:
        write_section(results, "features", report.markdown)
    return report


def read_clips(root: Path) -> list[np.ndarray]:
    """Every distinct clip of the benchmark, once (each clip carries a single- and a multi-hop question)."""
    questions, _ = read_sakura(root, hops=["single"])
    if not questions:
        raise ValueError(f"{root}: no SAKURA questions found")
    return [load_question_audio(question) for question in questions]


def stack(wavs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 [B, Nmax] right-padded with zeros and the valid lengths, as the collator builds them."""
    lengths = torch.tensor([len(wav) for wav in wavs], dtype=torch.long)
    batch = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float64)
    for row, wav in enumerate(wavs):
        batch[row, : len(wav)] = torch.from_numpy(wav)
    return batch, lengths


def transformers_features(extractor: WhisperFeatureExtractor, wavs: Sequence[np.ndarray]) -> torch.Tensor:
    """[B, 80, 3000] the way the official data path gets them: one extractor call per clip."""
    return torch.cat(
        [extractor(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features for wav in wavs]
    )


def beats_fbank(raw_wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The BEATs input fbank of a float64 batch, computed as the model computes it."""
    fbank, _ = kaldi_fbank_batch(raw_wav * INT16_SCALE, lengths, num_mel_bins=NUM_MEL_BINS)
    return fbank


def check_against_transformers(
    prepared: Sequence[np.ndarray], extractor: WhisperFeatureExtractor, batch_size: int
) -> float:
    """Max |(b) - (a)| over the clips; raises above the parity budget, as a speed-up of wrong features is void."""
    diff = 0.0
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        ours = whisper_log_mel(*stack(chunk))
        diff = max(diff, (ours - transformers_features(extractor, chunk)).abs().max().item())
    if diff > MAX_ABS_DIFF:
        raise AssertionError(f"whisper_log_mel differs from WhisperFeatureExtractor by {diff:.2e} > {MAX_ABS_DIFF}")
    return diff


def feature_rows(
    condition: str,
    wavs: list[np.ndarray],
    extractor: WhisperFeatureExtractor,
    batch_size: int,
    warmup: int,
    repeats: int,
) -> list[Row]:
    batches = [wavs[start : start + batch_size] for start in range(0, len(wavs), batch_size)]

    def log_mel(chunk: list[np.ndarray]) -> None:
        whisper_log_mel(*stack(chunk))

    def log_mel_fbank(chunk: list[np.ndarray]) -> None:
        raw_wav, lengths = stack(chunk)
        whisper_log_mel(raw_wav, lengths)
        beats_fbank(raw_wav, lengths)

    methods: dict[str, Callable[[list[np.ndarray]], object]] = {
        TRANSFORMERS: lambda chunk: transformers_features(extractor, chunk),
        LOG_MEL: log_mel,
        LOG_MEL_FBANK: log_mel_fbank,
    }
    if torch.cuda.is_available():
        methods[FBANK_GPU] = fbank_on_gpu

    # One batch warms every first-call cost (filter banks, FFT plans, allocator); a full pass is not needed.
    for per_batch in methods.values():
        for _ in range(warmup):
            per_batch(batches[0])
    passes = {method: _over_batches(per_batch, batches) for method, per_batch in methods.items()}
    timings = time_interleaved(passes, warmup=0, repeats=repeats)
    return [Row("features", condition, method, None, len(wavs), timing) for method, timing in timings.items()]


def _over_batches(
    per_batch: Callable[[list[np.ndarray]], object], batches: list[list[np.ndarray]]
) -> Callable[[], None]:
    def one_pass() -> None:
        for chunk in batches:
            per_batch(chunk)

    return one_pass


def fbank_on_gpu(chunk: list[np.ndarray]) -> None:
    raw_wav, lengths = stack(chunk)
    beats_fbank(raw_wav.to("cuda", non_blocking=True), lengths.to("cuda"))
    torch.cuda.synchronize()


class TransformersCollator:
    """The official data path's batch: the extractor on each padded/truncated clip, plus the padded waveforms.

    The official collater ships the same ``raw_wav`` / ``padding_mask`` as ours (BEATs needs them),
    so both data paths move the same tensors between processes.
    """

    def __init__(self, extractor: WhisperFeatureExtractor) -> None:
        self.extractor = extractor

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        wavs = [prepare_official(np.asarray(example["audio"], dtype=np.float64)) for example in examples]
        raw_wav, lengths = stack(wavs)
        return {
            "spectrogram": transformers_features(self.extractor, wavs),
            "raw_wav": raw_wav,
            "padding_mask": torch.arange(raw_wav.shape[1])[None, :] >= lengths[:, None],
            "wav_lengths": lengths,
        }


class FbankCollator:
    """Our collation followed by the BEATs fbank of the batch, which the model otherwise computes on its device."""

    def __init__(self, collator: SpeechCollator) -> None:
        self.collator = collator

    def __call__(self, examples: list[Example]) -> Batch:
        batch = self.collator(examples)
        batch["fbank"] = beats_fbank(batch["raw_wav"], batch["wav_lengths"])  # type: ignore[typeddict-unknown-key]
        return batch


def data_path_rows(
    condition: str,
    root: Path,
    variant: Variant,
    clips: int,
    extractor: WhisperFeatureExtractor,
    batch_size: int,
    workers: int,
    repeats: int,
) -> list[Row]:
    # One question per clip: the two questions of a clip are adjacent and share one log-mel in the
    # collator, which would halve (b)'s work per served item; these rows measure the work per clip.
    datamodule = SakuraDataModule(root, hops=["single"], variants=[variant], batch_size=batch_size)
    datamodule.setup("test")
    dataset = repeat_dataset(datamodule.dataset, clips)
    collators = {
        TRANSFORMERS: TransformersCollator(extractor),
        LOG_MEL: datamodule.collator,
        LOG_MEL_FBANK: FbankCollator(datamodule.collator),
    }
    passes = {method: _serve(dataset, collate, batch_size, workers, method) for method, collate in collators.items()}
    timings = time_interleaved(passes, warmup=0, repeats=repeats)
    return [Row("data path", condition, method, workers, clips, timing) for method, timing in timings.items()]


def _serve(
    dataset: Dataset, collate: Callable[[list[Example]], object], batch_size: int, workers: int, method: str
) -> Callable[[], None]:
    """One pass over the dataset through a fresh DataLoader, checking that every clip came out once."""

    def one_pass() -> None:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
        served = sum(len(batch["spectrogram"]) for batch in loader)
        if served != len(dataset):
            raise AssertionError(f"{method} with {workers} workers served {served} clips instead of {len(dataset)}")

    return one_pass


def repeat_dataset(dataset: Dataset, size: int) -> Dataset:
    """The dataset's items in order, repeated until there are ``size`` of them."""
    copies = math.ceil(size / len(dataset))
    return Subset(ConcatDataset([dataset] * copies), range(size))


def render(
    report: FeaturesReport,
    clips: int,
    batch_size: int,
    threads: int,
    warmup: int,
    repeats: int,
    distinct: int,
    load_at_start: str,
) -> str:
    feature_table = [
        [
            row.condition,
            row.method,
            row.timing.best,
            row.timing.median,
            row.clips_per_s,
            f"x{report.speedup(row):.2f}" if row.method != FBANK_GPU else "",
        ]
        for row in report.rows
        if row.section == "features"
    ]
    data_table = [
        [
            row.method,
            row.workers,
            row.timing.best,
            row.timing.median,
            row.clips_per_s,
            f"x{report.speedup(row):.2f}",
            FULL_BENCHMARK_QUESTIONS / row.clips_per_s,
        ]
        for row in report.rows
        if row.section == "data path"
    ]
    full_run = f"{FULL_BENCHMARK_QUESTIONS} clips, s"
    data_headers = ["method", "workers", "best s", "median s", "clips/s", "vs (a)", full_run]
    conditions = list(report.max_abs_diff)
    diffs = ", ".join(f"{condition} {diff:.1e}" for condition, diff in report.max_abs_diff.items())
    lines = [
        machine_header(load_at_start=load_at_start),
        f"- sizes: {clips} clips per pass (the {distinct} distinct clips repeated in order), batch size "
        f"{batch_size}, {threads} torch thread(s) in the main process and 1 per DataLoader worker; best of "
        f"{repeats} passes ({warmup} warm-up batch(es) before the in-memory passes), methods timed in turns",
        "- methods: (a) is what the official data path runs; (c) adds the BEATs input the model computes "
        "on its device (see the docstring of `bench/features.py`)",
        "",
        "### Features alone (waveforms in memory, one process)",
        "",
        f"Max |(b) - (a)| over the distinct clips: {diffs}.",
        "",
        markdown_table(["condition", "method", "best s", "median s", "clips/s", "vs (a)"], feature_table),
    ]
    if data_table:
        lines += [
            "",
            f"### Full data path, {conditions[1]}: read wav + pad variant + features at collation",
            "",
            "Each pass starts its DataLoader workers, as a run does. The last column extrapolates the pass "
            f"to the full benchmark's {FULL_BENCHMARK_QUESTIONS} questions.",
            "",
            markdown_table(data_headers, data_table),
        ]
    lines += ["", "### Targets", ""] + targets(report)
    return "\n".join(lines) + "\n"


def targets(report: FeaturesReport) -> list[str]:
    lines = []
    for condition in report.max_abs_diff:
        ratio = report.speedup(report.row("features", condition, LOG_MEL))
        verdict = "met" if ratio >= TARGET_SPEEDUP else "NOT met"
        lines.append(f"- (b) >= {TARGET_SPEEDUP:g}x (a), features alone, {condition}: x{ratio:.2f}, {verdict}")
    data_rows = [row for row in report.rows if row.section == "data path" and row.method == LOG_MEL]
    if data_rows:
        best = max(data_rows, key=lambda row: row.clips_per_s)
        seconds = FULL_BENCHMARK_QUESTIONS / best.clips_per_s
        verdict = "met" if seconds < TARGET_FULL_RUN_SECONDS else "NOT met"
        lines.append(
            f"- {FULL_BENCHMARK_QUESTIONS} clips through the full data path with (b), {best.condition}, "
            f"under {TARGET_FULL_RUN_SECONDS:g} s: {seconds:.1f} s with {best.workers} worker(s), {verdict}"
        )
    return lines


if __name__ == "__main__":
    CLI(main, as_positional=False)
