"""GPU throughput of a 7B-shaped SALMONN with random weights, per precision and batch size.

The model is built in memory at the released shapes (Whisper-large-v2 encoder, BEATs iter3+ AS2M,
the 2-layer BERT-base window Q-Former, Vicuna-7B with LoRA rank 8 on q/v and the ``[PAD]`` row), so
nothing is downloaded; the tokenizer is a small SentencePiece model trained on the spot (its ids
all fall inside Vicuna's 32001-row vocabulary, so the LLM's cost is the real one). Encoders and
the Q-Former keep fp32 weights and run under autocast, as the official inference does; the LLM
holds its weights in fp16, bf16 or 8-bit (bitsandbytes LLM.int8, SALMONN's ``low_resource`` mode,
compute in fp16).

For every precision and batch size (synthetic 16 kHz noise clips of ``clip_seconds`` behind
SAKURA-style questions, collated by the real :class:`~salmonn_pl.data.collate.SpeechCollator`):

* **questions/s**: encoders + Q-Former + :func:`salmonn_pl.generation.generate.generate` (``num_beams`` beams,
  ``max_new_tokens`` tokens; random weights practically never emit ``</s>``, so answers have the
  full length), the path ``salmonn-pl test`` takes for each batch; with its projection to the full
  SAKURA benchmark (4000 questions);
* **prefill tokens/s**: the LLM forward over the prompts (real tokens per second);
* **decode tokens/s**: ``max_new_tokens`` cached decode steps over ``batch x num_beams`` rows;
* **bandwidth**: bytes a decode step must read (the LLM's weights, except the input embedding
  table of which only the new tokens' rows are read, plus the whole KV cache) divided by the
  measured step time and by the device's peak memory bandwidth (known H100/H200/A100 models);
* **peak memory**: ``torch.cuda.max_memory_allocated`` over the configuration (weights included).

The whole run keeps to ``budget_s`` seconds: a configuration that would not fit in what is left
(judged from the ones already measured) is listed as skipped. Run from the repository root::

    python bench/gpu.py                                  # on a GPU: 7B shapes, fp16/bf16/8-bit x batch 1/8/32
    python bench/gpu.py --size toy --device cpu          # the same code path at toy size, for CI
    python bench/gpu.py --results bench/RESULTS.md       # also replace the ``## gpu`` section there
"""

from __future__ import annotations

import gc
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jsonargparse import CLI
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import beats_cfg, machine_header, markdown_table, write_section  # noqa: E402

from salmonn_pl.data.collate import AudioBatch, Example, SpeechCollator  # noqa: E402
from salmonn_pl.data.variants import DEFAULT_PROMPT_TEMPLATE  # noqa: E402
from salmonn_pl.generation.decode import CachedLM, GenerationSettings  # noqa: E402
from salmonn_pl.model.beats import BEATs, BEATsConfig  # noqa: E402
from salmonn_pl.model.llm import LoraSettings, apply_lora  # noqa: E402
from salmonn_pl.model.salmonn import Salmonn, SalmonnConfig  # noqa: E402
from salmonn_pl.model.tiny import train_tokenizer  # noqa: E402
from salmonn_pl.model.tokenizer import SalmonnTokenizer  # noqa: E402
from salmonn_pl.model.window_qformer import QFormerSettings  # noqa: E402
from salmonn_pl.generation.generate import generate  # noqa: E402

# float32 is there for CPU runs at toy size; 8-bit computes in fp16 around its int8 weights.
Precision = Literal["float16", "bfloat16", "int8", "float32"]
COMPUTE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float16, "float32": torch.float32}
Size = Literal["7b", "toy"]

FULL_BENCHMARK_QUESTIONS = 4000  # 4 tracks x 500 clips x 2 hops
TARGET_FULL_PASS_SECONDS = 180.0  # on an H100, answers up to 32 tokens
VICUNA_VOCAB = 32001  # 32000 SentencePiece pieces + SALMONN's [PAD]
SAMPLE_RATE = 16000

# Peak DRAM bandwidth in GB/s by device name (the first key found in the name wins, so the more
# specific names come first). Vendor datasheet figures.
PEAK_BANDWIDTH_GB_S = {
    "H200": 4800.0,
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,  # SXM5, HBM3 ("NVIDIA H100 80GB HBM3")
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100-SXM4-40GB": 1555.0,
    "A100-PCIE-40GB": 1555.0,
}

QUESTIONS = [
    "Given the audio file you've listened to and the list of options provided, which animal do you think is the "
    "most likely match for the sound? (a) crow (b) cat (c) sheep (d) dog",
    "What emotion does the speaker convey in the recording? (a) happy (b) sad (c) angry (d) neutral",
    "Based on the voice in the audio, what is the gender of the speaker? (a) male (b) female",
    "Which language is spoken in the audio clip, and which country has it as an official language? "
    "(a) German, Austria (b) French, Canada (c) Spanish, Mexico (d) Italian, Italy",
]


# ------------------------------------------------------------------------------------------ shapes


@dataclass(frozen=True)
class Shapes:
    """Architecture of every part: keyword arguments of the configs the parts are built from."""

    whisper: dict
    beats: dict
    qformer: QFormerSettings
    llm: dict


SHAPES: dict[str, Shapes] = {
    "7b": Shapes(
        # openai/whisper-large-v2
        whisper=dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                     num_mel_bins=80, max_source_positions=1500),
        beats=beats_cfg(),
        qformer=QFormerSettings(),  # bert-base-uncased, 2 layers
        # lmsys/vicuna-7b-v1.5 (LLaMA-2 7B), resized for [PAD]
        llm=dict(vocab_size=VICUNA_VOCAB, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
    ),
    "toy": Shapes(
        whisper=dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=80,
                     max_source_positions=1500),
        beats=beats_cfg(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                         embed_dim=16),
        qformer=QFormerSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        llm=dict(vocab_size=VICUNA_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5),
    ),
}


# ------------------------------------------------------------------------------------------- model


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in ``dtype`` (a 7B model never exists in fp32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_tokenizer(work_dir: Path) -> SalmonnTokenizer:
    train_tokenizer(work_dir, vocab_size=1000, seed=0)
    return SalmonnTokenizer(work_dir)


def build_llm(shapes: Shapes, precision: Precision, device: torch.device) -> nn.Module:
    """A frozen random LLaMA at ``shapes.llm`` in ``precision``, with SALMONN's LoRA adapters."""
    dtype = COMPUTE_DTYPES[precision]
    config = LlamaConfig(**shapes.llm, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    with torch.device(device), default_dtype(dtype):
        llm = LlamaForCausalLM(config)
    llm.requires_grad_(False)
    if precision == "int8":
        quantize_linear_8bit(llm, device)
    return apply_lora(llm, LoraSettings())


def quantize_linear_8bit(llm: nn.Module, device: torch.device) -> None:
    """Replace every linear layer but ``lm_head`` by bitsandbytes LLM.int8 (threshold 6.0), in place,
    as ``from_pretrained(..., load_in_8bit=True)`` loads it."""
    if device.type != "cuda":
        raise RuntimeError("8-bit weights need a CUDA device (bitsandbytes LLM.int8)")
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        raise RuntimeError("8-bit weights need bitsandbytes: pip install 'salmonn-pl[gpu]'") from error
    linears = [(name, m) for name, m in llm.named_modules() if type(m) is nn.Linear and not name.endswith("lm_head")]
    for name, linear in linears:
        with torch.device("meta"):
            quantized = bnb.nn.Linear8bitLt(
                linear.in_features, linear.out_features, linear.bias is not None, has_fp16_weights=False, threshold=6.0
            )
        # Int8Params quantizes when moved from the CPU to a CUDA device (as transformers does it).
        quantized.weight = bnb.nn.Int8Params(linear.weight.data.to("cpu"), requires_grad=False, has_fp16_weights=False).to(device)
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        quantized.requires_grad_(False)
        llm.set_submodule(name, quantized)
    llm.is_loaded_in_8bit = True  # peft then wraps these layers with its bitsandbytes LoRA layers


def build_salmonn(shapes: Shapes, precision: Precision, device: torch.device, tokenizer: SalmonnTokenizer) -> Salmonn:
    compute = str(COMPUTE_DTYPES[precision]).removeprefix("torch.")
    # Encoders keep fp32 weights and run under autocast, as the official inference runs them.
    autocast = "none" if precision == "float32" else compute
    config = SalmonnConfig(llm_path="", whisper_path="", qformer=shapes.qformer, llm_dtype=compute, autocast_dtype=autocast)
    llm = build_llm(shapes, precision, device)
    with torch.device(device):
        whisper = WhisperEncoder(WhisperConfig(**shapes.whisper))
        beats = BEATs(BEATsConfig.from_dict(shapes.beats))
        salmonn = Salmonn.from_modules(config, tokenizer, llm, whisper, beats)
    return salmonn.eval()


def llm_weight_bytes(llm: nn.Module) -> int:
    """Bytes of LLM weights a decode step reads: every parameter and buffer, except the input
    embedding table (only the new tokens' rows are gathered)."""
    embedding = llm.get_input_embeddings().weight
    tensors = [t for t in [*llm.parameters(), *llm.buffers()] if t is not embedding]
    return sum(t.numel() * t.element_size() for t in tensors)


def kv_cache_bytes(llm_config: LlamaConfig, rows: int, context: float, element_size: int) -> float:
    """Bytes of keys and values a decode step reads over ``context`` cached positions."""
    heads = llm_config.num_key_value_heads or llm_config.num_attention_heads
    head_dim = llm_config.hidden_size // llm_config.num_attention_heads
    return 2.0 * llm_config.num_hidden_layers * rows * context * heads * head_dim * element_size


def peak_bandwidth_gb_s(device_name: str) -> float | None:
    """The device's peak memory bandwidth from :data:`PEAK_BANDWIDTH_GB_S`, None when unknown."""
    return next((value for key, value in PEAK_BANDWIDTH_GB_S.items() if key in device_name), None)


# ------------------------------------------------------------------------------------------- batch


@dataclass
class QuestionBatch:
    prompts: list[str]
    spectrogram: torch.Tensor
    raw_wav: torch.Tensor
    padding_mask: torch.Tensor
    wav_lengths: torch.Tensor


def question_batch(batch_size: int, clip_seconds: float, device: torch.device, seed: int = 0) -> QuestionBatch:
    """``batch_size`` noise clips behind SAKURA-style prompts, collated as ``salmonn-pl test`` collates them."""
    rng = np.random.default_rng(seed)
    examples = [
        Example(
            id=f"synthetic/{i}",
            audio=0.1 * rng.standard_normal(int(clip_seconds * SAMPLE_RATE)),
            prompt=DEFAULT_PROMPT_TEMPLATE.replace("{question}", QUESTIONS[i % len(QUESTIONS)]),
            text="",
            meta={},
        )
        for i in range(batch_size)
    ]
    batch = SpeechCollator()(examples)
    return QuestionBatch(
        prompts=batch["prompt"],
        spectrogram=batch["spectrogram"].to(device),
        raw_wav=batch["raw_wav"].to(device),
        padding_mask=batch["padding_mask"].to(device),
        wav_lengths=batch["wav_lengths"].to(device),
    )


# ------------------------------------------------------------------------------------------ timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones, the device synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass
class Measurement:
    precision: str
    batch_size: int
    rows: int = 0  # batch x beams during decoding
    prompt_tokens: int = 0  # padded prompt length (audio tokens included)
    answer_s: float = math.nan  # one batch: encoders + Q-Former + generate
    encode_s: float = math.nan
    prefill_s: float = math.nan
    decode_s: float = math.nan  # all decode steps
    real_prompt_tokens: int = 0
    decode_steps: int = 0
    bytes_per_step: float = math.nan
    peak_memory_gib: float | None = None
    skipped: str = ""  # why it was not measured ("skipped: time budget ...", "failed: <error>")

    @property
    def questions_per_s(self) -> float:
        return self.batch_size / self.answer_s

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.real_prompt_tokens / self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.rows * self.decode_steps / self.decode_s

    @property
    def step_ms(self) -> float:
        return 1000 * self.decode_s / self.decode_steps

    def bandwidth_fraction(self, peak_gb_s: float | None) -> float | None:
        if peak_gb_s is None:
            return None
        return self.bytes_per_step / (self.decode_s / self.decode_steps) / (peak_gb_s * 1e9)

    @property
    def rest_s(self) -> float:
        return self.answer_s - self.encode_s - self.prefill_s - self.decode_s

    @property
    def full_pass_s(self) -> float:
        return FULL_BENCHMARK_QUESTIONS / self.questions_per_s


@torch.no_grad()
def measure(
    salmonn: Salmonn,
    precision: Precision,
    batch_size: int,
    device: torch.device,
    clip_seconds: float,
    num_beams: int,
    max_new_tokens: int,
    warmup: int,
    repeats: int,
) -> Measurement:
    batch = question_batch(batch_size, clip_seconds, device)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, num_beams=num_beams)
    result = Measurement(precision, batch_size, rows=batch_size * num_beams, decode_steps=max_new_tokens)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def encode() -> torch.Tensor:
        return salmonn.encode_audio(AudioBatch(batch.spectrogram, batch.raw_wav, batch.padding_mask, batch.wav_lengths))["audio_tokens"]

    def answer() -> None:
        generate(salmonn, batch.prompts, encode(), settings, padding_side="left")

    result.answer_s = best_seconds(answer, device, warmup, repeats)
    result.encode_s = best_seconds(encode, device, warmup, repeats)

    inputs = salmonn.assemble(batch.prompts, encode(), padding_side="left")
    result.prompt_tokens = inputs.attention_mask.shape[1]
    result.real_prompt_tokens = int(inputs.attention_mask.sum())
    lm_holder: list[CachedLM] = []

    def prefill() -> None:
        lm = CachedLM(salmonn.llm, need_hidden=False)
        lm.prefill(inputs.inputs_embeds, inputs.attention_mask)
        lm_holder[:] = [lm]

    def decode() -> None:
        prefill()
        lm = lm_holder[0]
        lm.repeat_rows(num_beams)
        tokens = torch.full((result.rows,), salmonn.tokenizer.eos_token_id + 1, device=device)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(max_new_tokens):
            lm.step(tokens)
        synchronize(device)
        decode_times.append(time.perf_counter() - start)

    decode_times: list[float] = []
    with salmonn.autocast():
        result.prefill_s = best_seconds(prefill, device, warmup, repeats)
        for _ in range(warmup + repeats):
            decode()
    result.decode_s = min(decode_times[warmup:])

    llm_config = salmonn.llm.config
    cache_element = COMPUTE_DTYPES[precision].itemsize
    # CachedLM holds the prompt's keys/values once per question and the generated ones once per beam.
    prompt_kv = kv_cache_bytes(llm_config, batch_size, result.prompt_tokens, cache_element)
    generated_kv = kv_cache_bytes(llm_config, result.rows, (max_new_tokens + 1) / 2, cache_element)
    result.bytes_per_step = llm_weight_bytes(salmonn.llm) + prompt_kv + generated_kv
    if device.type == "cuda":
        result.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return result


# ------------------------------------------------------------------------------------------ budget


@dataclass
class Budget:
    """Seconds left to the run; a step is started only when the like of it has fitted before."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, estimate: float) -> bool:
        return estimate < self.left()


# -------------------------------------------------------------------------------------------- main


@dataclass
class GpuReport:
    device: str
    peak_bandwidth_gb_s: float | None
    measurements: list[Measurement]
    build_seconds: dict[str, float]
    markdown: str = ""


def main(
    size: Size = "7b",
    device: str = "auto",
    precisions: list[Precision] = ["float16", "bfloat16", "int8"],
    batch_sizes: list[int] = [1, 8, 32],
    num_beams: int = 4,
    max_new_tokens: int = 32,
    clip_seconds: float = 5.0,
    warmup: int = 1,
    repeats: int = 2,
    budget_s: float = 420.0,
    results: Path | None = None,
) -> GpuReport:
    """Measure questions/s, prefill and decode tokens/s, decode bandwidth and peak memory; print a markdown section.

    Args:
        size: ``7b`` (Whisper-large-v2 + BEATs + Vicuna-7B shapes) or ``toy`` (tiny, runs on a CPU).
        device: ``auto`` (the GPU when there is one), ``cuda``, ``cuda:1``, ``cpu``.
        precisions: LLM weight precisions to measure (``int8`` needs CUDA and bitsandbytes).
        batch_sizes: questions per batch.
        num_beams: beams per question (4 = the official decoding).
        max_new_tokens: tokens generated per answer (random weights practically always run to it).
        clip_seconds: length of every synthetic clip (SAKURA clips average about 5 s).
        warmup: untimed calls before each timed figure.
        repeats: timed calls per figure; the fastest counts.
        budget_s: the whole run's time limit; configurations that would not fit are skipped.
        results: ``bench/RESULTS.md`` to update (its ``## gpu`` section).
    """
    budget = Budget(budget_s)
    torch_device = resolve_device(device)
    shapes = SHAPES[size]
    measurements: list[Measurement] = []
    build_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        tokenizer = build_tokenizer(Path(work))
        previous: dict[int, float] = {}  # batch size -> seconds its last configuration took
        for precision in precisions:
            estimate = max(build_seconds.values(), default=0.0) + previous.get(min(batch_sizes), 0.0)
            if not budget.allows(estimate):
                measurements += [Measurement(precision, b, skipped=_out_of_time(budget)) for b in batch_sizes]
                continue
            start = time.perf_counter()
            try:
                salmonn = build_salmonn(shapes, precision, torch_device, tokenizer)
            except Exception as error:  # noqa: BLE001 - e.g. 8-bit without CUDA; the other precisions still run
                measurements += [Measurement(precision, b, skipped=_reason(error)) for b in batch_sizes]
                _free_memory(torch_device)
                continue
            build_seconds[precision] = time.perf_counter() - start
            last, last_batch_size = 0.0, 1
            for batch_size in batch_sizes:
                # Unknown sizes: at least twice the last one, or in proportion to the batch when larger.
                estimate = previous.get(batch_size, last * max(2.0, batch_size / last_batch_size))
                if not budget.allows(estimate):
                    measurements.append(Measurement(precision, batch_size, skipped=_out_of_time(budget)))
                    continue
                start = time.perf_counter()
                try:
                    measurements.append(measure(salmonn, precision, batch_size, torch_device, clip_seconds, num_beams,
                                                max_new_tokens, warmup, repeats))
                except Exception as error:  # noqa: BLE001 - e.g. out of memory; the table still gets printed
                    measurements.append(Measurement(precision, batch_size, skipped=_reason(error)))
                    _free_memory(torch_device)
                last = previous[batch_size] = time.perf_counter() - start
                last_batch_size = batch_size
                print(f"{precision} batch {batch_size}: {last:.1f} s, {budget.left():.0f} s left", file=sys.stderr)
            del salmonn
            _free_memory(torch_device)

    device_name = torch.cuda.get_device_properties(torch_device).name if torch_device.type == "cuda" else "cpu"
    report = GpuReport(device_name, peak_bandwidth_gb_s(device_name), measurements, build_seconds)
    report.markdown = render(report, size, num_beams, max_new_tokens, clip_seconds, repeats, budget)
    print(report.markdown)
    if results is not None:
        write_section(results, "gpu", report.markdown)
    return report


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"failed: {type(error).__name__}: {text[:120]}"


def _out_of_time(budget: Budget) -> str:
    return f"skipped: time budget ({max(0.0, budget.left()):.0f} s left)"


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def render(report: GpuReport, size: str, num_beams: int, max_new_tokens: int, clip_seconds: float, repeats: int,
           budget: Budget) -> str:
    peak = report.peak_bandwidth_gb_s
    peak_text = f"{peak:.0f} GB/s" if peak is not None else "unknown (not in the table of known devices)"
    lines = [
        machine_header(),
        f"- model: {size}-shaped SALMONN, random weights; device {report.device}, peak memory bandwidth {peak_text}",
        f"- per question: one {clip_seconds:g} s clip, a SAKURA-style question, {num_beams} beam(s), "
        f"{max_new_tokens} new tokens; fastest of {repeats} timed calls; "
        f"model builds: " + ", ".join(f"{p} {s:.0f} s" for p, s in report.build_seconds.items()),
        f"- run time {budget.seconds - budget.left():.0f} s of a {budget.seconds:.0f} s budget",
        "",
    ]
    headers = ["precision", "batch", "decode rows", "prompt tokens", "questions/s", "4000 q, s", "encode ms",
               "prefill ms", "decode ms", "rest ms", "prefill tok/s", "decode tok/s", "decode ms/step", "bandwidth",
               "peak memory GiB", "note"]
    rows = []
    for m in report.measurements:
        if m.skipped:
            rows.append([m.precision, m.batch_size, *["-"] * (len(headers) - 3), m.skipped])
            continue
        fraction = m.bandwidth_fraction(peak)
        rows.append([
            m.precision, m.batch_size, m.rows, m.prompt_tokens, m.questions_per_s, m.full_pass_s, 1000 * m.encode_s,
            1000 * m.prefill_s, 1000 * m.decode_s, 1000 * m.rest_s, m.prefill_tokens_per_s, m.decode_tokens_per_s,
            m.step_ms,
            f"{fraction:.0%}" if fraction is not None else "unknown",
            f"{m.peak_memory_gib:.1f}" if m.peak_memory_gib is not None else "n/a",
            "",
        ])
    lines += [markdown_table(headers, rows), ""]
    lines += [
        "One batch: encode = Whisper + BEATs + Q-Former; prefill = the LLM over the prompts; decode = the cached "
        "decode steps alone; rest = what else answering the batch took (beam search between steps: candidate "
        "selection, KV-cache reordering), from figures measured apart (a noisy machine can make it negative). "
        "Bandwidth = (LLM weights read per step + KV cache read per step) / "
        "measured step time / device peak.",
        "",
        *targets(report, size),
    ]
    return "\n".join(lines)


def targets(report: GpuReport, size: str) -> list[str]:
    measured = [m for m in report.measurements if not m.skipped]
    if not measured:
        return ["- full SAKURA pass (4000 questions) under 3 min on an H100: nothing measured"]
    best = min(measured, key=lambda m: m.full_pass_s)
    where = f"{best.precision}, batch {best.batch_size}: {best.full_pass_s:.0f} s projected"
    if size != "7b" or "H100" not in report.device:
        return [f"- full SAKURA pass (4000 questions) under 3 min on an H100: not applicable here ({size} shapes on "
                f"{report.device}); fastest configuration {where}"]
    verdict = "met" if best.full_pass_s < TARGET_FULL_PASS_SECONDS else "NOT met"
    return [f"- full SAKURA pass (4000 questions) under 3 min on an H100: {where}, {verdict}"]


if __name__ == "__main__":
    CLI(main, as_positional=False)
