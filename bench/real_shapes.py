"""Load a SALMONN at the released shapes through ``salmonn-pl test`` on the CPU, and measure what loading costs.

The model is written with random weights in the official on-disk formats, at the released shapes:
a Hugging Face Whisper directory holding the large-v2 encoder (fp32 safetensors shards), the
official BEATs iter3+ AS2M checkpoint layout (``{'cfg', 'model'}``), a Hugging Face LLaMA directory
at Vicuna-7B's shapes (bf16 safetensors shards, a 32000-piece SentencePiece ``tokenizer.model``), and
an official SALMONN checkpoint (window Q-Former: BERT-base with 2 layers and cross-attention in each,
1 query; LayerNorms; projection; LoRA rank 8 on q/v). Then ``salmonn-pl test`` runs as its own
process (LLM in bfloat16, bfloat16 autocast, greedy, a few new tokens) on two SAKURA questions.

Measured and written to ``bench/RESULTS.md`` (``## real_shapes <size>``): the write time, the load time
(model construction, Lightning's ``setup`` to ``on_test_start``), the peak resident memory of the
test process (``ru_maxrss``) against the bytes of the weight files (goal: below 1.3x, i.e. no second
full copy while loading, casting or wrapping with LoRA), and the parameter count of every part,
asserted equal to the released model's. Printed too: the predicted GPU memory of 7B/13B at fp16,
bf16 and 8-bit for batch 16 x 4 beams x 200 new tokens, to pick a card.

By hand (not in CI; about 17 GB of free RAM and 17 GB of disk for ``--size 7b``)::

    python bench/real_shapes.py --size 7b --results bench/RESULTS.md
    python bench/real_shapes.py --size 1b          # real encoders, a 1.1B LLaMA (TinyLlama's shapes)
    python bench/real_shapes.py --size toy         # the CI test's size
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import CLI
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder, sinusoids

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, SHARED, beats_cfg, machine_header, markdown_table, write_section  # noqa: E402

from salmonn_pl.model.beats import BEATs, BEATsConfig  # noqa: E402
from salmonn_pl.generation.prefix_kv_cache import GENERATED_CHUNK  # noqa: E402
from salmonn_pl.model.checkpoint import to_official_key  # noqa: E402
from salmonn_pl.model.tiny import train_tokenizer  # noqa: E402
from salmonn_pl.model.window_qformer import QFormerSettings, WindowQFormer  # noqa: E402

GIB = 1024**3
SHARD_BYTES = 1 * GIB  # safetensors shards: the writer never holds more than one
LORA_RANK, LORA_TARGETS = 8, ("q_proj", "v_proj")
SAKURA_VOCAB = 32000  # LLaMA's SentencePiece pieces; SALMONN adds [PAD] as row 32000
PEAK_RATIO_GOAL = 1.3


# ------------------------------------------------------------------------------------------ shapes


WHISPER_LARGE_V2 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        num_mel_bins=80, max_source_positions=1500)


@dataclass(frozen=True)
class RealShapes:
    whisper: dict
    beats: dict
    qformer: QFormerSettings
    llm: dict  # LlamaConfig keyword arguments (vocab_size without [PAD])


def _llama(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    return dict(vocab_size=SAKURA_VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096, rms_norm_eps=1e-5)


SIZES: dict[str, RealShapes] = {
    # lmsys/vicuna-7b-v1.5 (LLaMA-2 7B)
    "7b": RealShapes(WHISPER_LARGE_V2, beats_cfg(), QFormerSettings(), _llama(4096, 32, 32, 11008)),
    # lmsys/vicuna-13b-v1.1 (LLaMA 13B)
    "13b": RealShapes(WHISPER_LARGE_V2, beats_cfg(), QFormerSettings(), _llama(5120, 40, 40, 13824)),
    # The released encoders and Q-Former around a 1.1B LLaMA (TinyLlama's widths, full attention).
    "1b": RealShapes(WHISPER_LARGE_V2, beats_cfg(), QFormerSettings(), _llama(2048, 22, 32, 5632)),
    "toy": RealShapes(
        dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=80,
             max_source_positions=1500),
        beats_cfg(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4, embed_dim=16),
        QFormerSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        _llama(64, 2, 4, 128),
    ),
}


# -------------------------------------------------------------------------------- parameter counts
# Counted from the architectures' definitions (independently of the modules that are built), so a
# loaded part whose count differs is not the released part.


def whisper_encoder_params(d: int, layers: int, ffn: int, mels: int, positions: int) -> int:
    convs = mels * d * 3 + d + d * d * 3 + d
    attention = 4 * d * d + 3 * d  # q, k, v, out; k_proj has no bias
    layer = attention + 2 * 2 * d + (d * ffn + ffn) + (ffn * d + d)
    return convs + positions * d + layers * layer + 2 * d


def beats_params(cfg: dict) -> int:
    e, f, p = cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"], cfg["input_patch_size"]
    heads, emb = cfg["encoder_attention_heads"], cfg["embed_dim"]
    patch = emb * p * p + 2 * emb + (emb * e + e)  # patch conv (no bias), LayerNorm, projection to e
    pos_conv = e * (e // cfg["conv_pos_groups"]) * cfg["conv_pos"] + cfg["conv_pos"] + e  # weight_norm v, g; bias
    rel_bias = cfg["num_buckets"] * heads  # one table, shared by every layer
    gru = (e // heads) * 8 + 8 + heads  # grep_linear and grep_a of the gated relative position bias
    layer = 4 * (e * e + e) + gru + 2 * 2 * e + (e * f + f) + (f * e + e)
    head = e * cfg["predictor_class"] + cfg["predictor_class"]
    return patch + pos_conv + 2 * e + rel_bias + cfg["encoder_layers"] * layer + head


def qformer_params(q: QFormerSettings, encoder_width: int) -> int:
    """LAVIS' BERT Q-Former without word/position embeddings and with only the query FFN."""
    h, i = q.hidden_size, q.intermediate_size
    self_attention = 3 * (h * h + h) + (h * h + h) + 2 * h
    cross_attention = (h * h + h) + 2 * (encoder_width * h + h) + (h * h + h) + 2 * h
    ffn = (h * i + i) + (i * h + h) + 2 * h
    return 2 * h + q.num_hidden_layers * (self_attention + cross_attention + ffn)


def llama_params(llm: dict, vocab: int) -> int:
    h, i, layers = llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]
    return 2 * vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


def expected_counts(shapes: RealShapes) -> dict[str, int]:
    whisper_width, beats_width = shapes.whisper["d_model"], shapes.beats["encoder_embed_dim"]
    h, layers = shapes.llm["hidden_size"], shapes.llm["num_hidden_layers"]
    return {
        "whisper encoder": whisper_encoder_params(whisper_width, shapes.whisper["encoder_layers"], shapes.whisper["encoder_ffn_dim"],
                                                  shapes.whisper["num_mel_bins"], shapes.whisper["max_source_positions"]),
        "BEATs": beats_params(shapes.beats),
        "Q-Former": qformer_params(shapes.qformer, whisper_width + beats_width),
        "query token + LayerNorms": shapes.qformer.hidden_size + 2 * whisper_width + 2 * beats_width,
        "projection": shapes.qformer.hidden_size * h + h,
        "LLaMA (+ [PAD] row)": llama_params(shapes.llm, shapes.llm["vocab_size"] + 1),
        "LoRA": layers * len(LORA_TARGETS) * 2 * LORA_RANK * h,
    }


# The released SALMONN-7B's parts; expected_counts() of the 7b shapes must give exactly these.
RELEASED_7B_COUNTS = {
    "whisper encoder": 636_784_640,  # openai/whisper-large-v2's encoder (637M)
    "BEATs": 90_717_055,  # BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt, with its AudioSet head
    "Q-Former": 22_837_248,
    "query token + LayerNorms": 4_864,
    "projection": 3_149_824,
    "LLaMA (+ [PAD] row)": 6_738_415_616 + 2 * 4096,  # LLaMA-7B 6.74B, one more row in embed and lm_head
    "LoRA": 4_194_304,  # rank 8 on q_proj and v_proj of 32 layers
}


def measured_counts(salmonn: torch.nn.Module) -> dict[str, int]:
    def count(params) -> int:
        return sum(p.numel() for p in params)

    connector = salmonn.connector
    llm = dict(salmonn.llm.named_parameters())
    return {
        "whisper encoder": count(salmonn.whisper.parameters()),
        "BEATs": count(salmonn.beats.parameters()),
        "Q-Former": count(connector.qformer.parameters()),
        "query token + LayerNorms": count([connector.query_tokens, *connector.ln_speech.parameters(), *connector.ln_audio.parameters()]),
        "projection": count(connector.proj.parameters()),
        "LLaMA (+ [PAD] row)": count(p for n, p in llm.items() if ".lora_" not in n),
        "LoRA": count(p for n, p in llm.items() if ".lora_" in n),
    }


# ------------------------------------------------------------------------------------------ writing


def _random_like(name: str, shape: torch.Size, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Random weights that keep activations sane: N(0, 0.02) matrices, unit norm scales, zero biases."""
    if len(shape) == 1:
        return (torch.ones if name.endswith("weight") else torch.zeros)(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def write_sharded(folder: Path, shapes: dict[str, torch.Size], make, dtype: torch.dtype) -> int:
    """Write tensors ``make(name, shape)`` as safetensors shards of about SHARD_BYTES, holding one
    shard at a time, plus ``model.safetensors.index.json``; returns the bytes written."""
    element = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * element
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for index, names in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: make(name, shapes[name]).contiguous() for name in names}
        save_file(tensors, str(folder / filename), metadata={"format": "pt"})
        total += (folder / filename).stat().st_size
        weight_map.update(dict.fromkeys(names, filename))
        del tensors
        gc.collect()
    index = {"metadata": {"total_size": sum(math.prod(s) * element for s in shapes.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def pad_tokenizer(folder: Path, pieces: int) -> None:
    """Grow the trained ``tokenizer.model`` to exactly ``pieces`` pieces, as LLaMA's 32000: the
    embedding then has LLaMA's row count. The added pieces are never produced (lowest scores)."""
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    for index in range(len(proto.pieces), pieces):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"<unused_{index}>", -1e9, model_pb2.ModelProto.SentencePiece.USER_DEFINED
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    assert SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size() == pieces


def write_model(out: Path, shapes: RealShapes, llm_dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict[str, object]:
    """Write the random SALMONN at ``shapes`` under ``out``; returns its paths and bytes per file kind."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sizes: dict[str, int] = {}

    whisper_dir = out / "whisper"
    whisper_dir.mkdir(parents=True)
    whisper_config = WhisperConfig(**shapes.whisper, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
                                   vocab_size=100, max_target_positions=64, decoder_start_token_id=98, pad_token_id=99,
                                   bos_token_id=99, eos_token_id=99)
    whisper_config.save_pretrained(whisper_dir)
    with torch.device("meta"):
        encoder_shapes = {f"model.encoder.{k}": v.shape for k, v in WhisperEncoder(whisper_config).state_dict().items()}

    def whisper_tensor(name: str, shape: torch.Size) -> torch.Tensor:
        if name.endswith("embed_positions.weight"):
            return sinusoids(*shape)
        return _random_like(name, shape, torch.float32, generator)

    sizes["whisper (fp32)"] = write_sharded(whisper_dir, encoder_shapes, whisper_tensor, torch.float32)

    beats = BEATs(BEATsConfig.from_dict(shapes.beats))
    torch.save({"cfg": shapes.beats, "model": beats.state_dict()}, out / "beats.pt")
    sizes["BEATs (fp32)"] = (out / "beats.pt").stat().st_size
    del beats

    llm_dir = out / "llama"
    llm_dir.mkdir()
    train_tokenizer(llm_dir, vocab_size=1000, seed=seed)
    pad_tokenizer(llm_dir, shapes.llm["vocab_size"])
    llm_config = LlamaConfig(**shapes.llm, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                             dtype=str(llm_dtype).removeprefix("torch."))
    llm_config.save_pretrained(llm_dir)
    with torch.device("meta"):
        llm_shapes = {k: v.shape for k, v in LlamaForCausalLM(llm_config).state_dict().items()}
    sizes[f"LLaMA ({str(llm_dtype).removeprefix('torch.')})"] = write_sharded(
        llm_dir, llm_shapes, lambda n, s: _random_like(n, s, llm_dtype, generator), llm_dtype)

    # The official checkpoint: connector and LoRA under the official key names.
    whisper_width, beats_width = shapes.whisper["d_model"], shapes.beats["encoder_embed_dim"]
    connector = WindowQFormer(whisper_width=whisper_width, beats_width=beats_width, llm_width=shapes.llm["hidden_size"],
                              num_query_tokens=1, second_per_window=0.333333, second_stride=0.333333, window_level=True,
                              qformer=shapes.qformer)
    state = {to_official_key(f"connector.{n}"): p.detach() for n, p in connector.named_parameters()}
    h = shapes.llm["hidden_size"]
    for layer in range(shapes.llm["num_hidden_layers"]):
        for target in LORA_TARGETS:
            prefix = f"llama_model.base_model.model.model.layers.{layer}.self_attn.{target}"
            state[f"{prefix}.lora_A.default.weight"] = torch.randn(LORA_RANK, h, generator=generator) * 0.02
            state[f"{prefix}.lora_B.default.weight"] = torch.randn(h, LORA_RANK, generator=generator) * 0.02
    torch.save({"model": state}, out / "salmonn.pth")
    sizes["SALMONN checkpoint (fp32)"] = (out / "salmonn.pth").stat().st_size
    return {"llm_path": llm_dir, "whisper_path": whisper_dir, "beats_path": out / "beats.pt", "ckpt": out / "salmonn.pth",
            "bytes": sizes}


# ----------------------------------------------------------------------------------------- running


class LoadProbe(L.Callback):
    """Inside the ``salmonn-pl test`` process: when model construction starts and ends, the peak
    resident memory then and at the end, and the parameter count of every part (to ``out``)."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.record: dict[str, object] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.record["setup_at"] = time.monotonic()

    def on_test_start(self, trainer, pl_module) -> None:
        salmonn = pl_module.salmonn
        self.record.update(
            loaded_at=time.monotonic(),
            maxrss_loaded=_maxrss_bytes(resource.RUSAGE_SELF),
            counts=measured_counts(salmonn),
            dtypes={"llm": str(next(salmonn.llm.parameters()).dtype), "whisper": str(salmonn.whisper.conv1.weight.dtype)},
        )
        self._write()

    def on_test_end(self, trainer, pl_module) -> None:
        self.record.update(ended_at=time.monotonic(), maxrss_end=_maxrss_bytes(resource.RUSAGE_SELF))
        self._write()

    def _write(self) -> None:
        self.out.write_text(json.dumps(self.record))


def _maxrss_bytes(who: int) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # kilobytes on Linux


def sakura_root() -> tuple[Path, list[str]]:
    """The real SAKURA sample when present (shared/sakura-mini), else the bundled demo data."""
    mini = SHARED / "sakura-mini"
    if (mini / "data" / "Animal").is_dir():
        return mini, ["Animal"]
    return REPO_ROOT / "assets" / "demo-sakura", ["Synthetic"]


def test_config(path: Path, files: dict[str, object], shapes: RealShapes, output_dir: Path, probe: Path, max_new_tokens: int) -> Path:
    root, tracks = sakura_root()
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_model_summary": False,
                    "enable_progress_bar": False,
                    "callbacks": [{"class_path": "real_shapes.LoadProbe", "init_args": {"out": str(probe)}}]},
        "model": {
            "model": {**{k: str(files[k]) for k in ("llm_path", "whisper_path", "beats_path", "ckpt")},
                      "qformer": asdict(shapes.qformer), "llm_dtype": "bfloat16", "autocast_dtype": "bfloat16"},
            "generation": {"num_beams": 1, "max_new_tokens": max_new_tokens},
            "output_dir": str(output_dir),
        },
        "data": {"class_path": "salmonn_pl.data.datamodule.SakuraDataModule",
                 "init_args": {"root": str(root), "tracks": tracks, "hops": ["single", "multi"], "limit": 1,
                               "batch_size": 2, "num_workers": 0}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_test(config: Path, timeout_s: float) -> tuple[int, float, str]:
    """``salmonn-pl test`` as its own process; returns (peak RSS bytes of that process, seconds, log tail)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "salmonn_pl.cli", "test", "--config", str(config)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not every child's
        except BaseException:
            process.kill()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        log.seek(0)
        tail = log.read()[-4000:]
    if process.returncode != 0:
        raise RuntimeError(f"salmonn-pl test failed ({process.returncode}):\n{tail}")
    if seconds > timeout_s:
        print(f"warning: the run took {seconds:.0f} s (> {timeout_s:.0f} s)", file=sys.stderr)
    return usage.ru_maxrss * 1024, seconds, tail


# ------------------------------------------------------------------------------- GPU memory model


@dataclass(frozen=True)
class GpuMemory:
    model: str
    precision: str
    llm_weights: float  # bytes
    encoders: float
    kv_cache: float
    activations: float

    @property
    def total(self) -> float:
        return self.llm_weights + self.encoders + self.kv_cache + self.activations + CUDA_OVERHEAD


CUDA_OVERHEAD = 1.5 * GIB  # CUDA context, cuBLAS workspaces, allocator slack
CARDS_GIB = (24, 40, 48, 80, 141)


def predict_gpu_memory(name: str, shapes: RealShapes, precision: str, batch: int = 16, beams: int = 4,
                       new_tokens: int = 200, prompt_tokens: int = 160) -> GpuMemory:
    """Memory of ``salmonn-pl test`` at ``batch`` questions x ``beams`` beams x ``new_tokens``.

    LLM weights at 2 bytes (fp16/bf16) or, for 8-bit, 1 byte in every decoder linear layer and 2 in
    the embedding, lm_head and norms (bitsandbytes keeps lm_head in 16 bits); LoRA in fp32. Encoders
    and the connector in fp32, as the official inference holds them. KV cache in 16 bits as
    :class:`~salmonn_pl.generation.prefix_kv_cache.PrefixKVCache` holds it: the prompt (``<s>``,
    template, 88 audio tokens, question: about 160 tokens) once per question, the new tokens per
    beam (allocated in chunks of 32). Activations: the prefill of the questions through one decoder
    MLP and the attention projections, plus fp32 logits of the last position per beam twice (scores
    and their log-softmax).
    """
    counts = expected_counts(shapes)
    llm, h, i = shapes.llm, shapes.llm["hidden_size"], shapes.llm["intermediate_size"]
    layers, vocab = llm["num_hidden_layers"], llm["vocab_size"] + 1
    linear = layers * (4 * h * h + 3 * h * i)
    other = counts["LLaMA (+ [PAD] row)"] - linear
    weights = (linear * 1 + other * 2) if precision == "int8" else (linear + other) * 2
    weights += counts["LoRA"] * 4
    encoders = 4 * sum(v for k, v in counts.items() if k not in ("LLaMA (+ [PAD] row)", "LoRA"))
    rows = batch * beams
    generated = math.ceil(new_tokens / GENERATED_CHUNK) * GENERATED_CHUNK
    kv = 2 * layers * h * 2 * (batch * prompt_tokens + rows * generated)
    activations = batch * prompt_tokens * (3 * i + 4 * h) * 2 + 2 * rows * vocab * 4
    return GpuMemory(name, precision, weights, encoders, kv, activations)


def gpu_table() -> str:
    rows = []
    for name in ("7b", "13b"):
        for precision in ("float16", "bfloat16", "int8"):
            m = predict_gpu_memory(name, SIZES[name], precision)
            card = next((f"{c} GB" for c in CARDS_GIB if m.total / GIB <= c * 0.93), "> 141 GB")
            rows.append([name.upper(), precision, m.llm_weights / GIB, m.encoders / GIB, m.kv_cache / GIB,
                         m.activations / GIB, m.total / GIB, card])
    return markdown_table(["model", "LLM weights", "weights GiB", "encoders GiB", "KV cache GiB", "activations GiB",
                           "total GiB", "smallest card"], rows)


# -------------------------------------------------------------------------------------------- main


@dataclass
class Report:
    size: str
    write_s: float
    run_s: float
    load_s: float
    weight_bytes: dict[str, int]
    peak_rss_loaded: int
    peak_rss: int
    counts: dict[str, int]
    expected: dict[str, int]
    dtypes: dict[str, str]
    answers: list[dict]

    @property
    def total_weight_bytes(self) -> int:
        return sum(self.weight_bytes.values())

    @property
    def peak_ratio(self) -> float:
        return self.peak_rss / self.total_weight_bytes


def main(size: str = "7b", work_dir: str | None = None, max_new_tokens: int = 4, results: Path | None = None,
         keep: bool = False, timeout_s: float = 3600.0) -> Report:
    """Write the model at ``size`` (7b, 1b, toy), load it through ``salmonn-pl test`` and measure.

    Args:
        size: the shapes (``7b`` = the released SALMONN-7B).
        work_dir: where the weights are written (default: a temporary directory, removed after).
        max_new_tokens: greedy tokens per answer.
        results: a RESULTS.md whose ``## real_shapes <size>`` section is replaced.
        keep: keep the written weights (with ``work_dir``).
        timeout_s: warn when the test run takes longer.
    """
    shapes = SIZES[size]
    expected = expected_counts(shapes)
    assert expected_counts(SIZES["7b"]) == RELEASED_7B_COUNTS, "the count formulas no longer give the released 7B"
    temp = None if work_dir else tempfile.TemporaryDirectory(prefix=f"real-shapes-{size}-")
    root = Path(work_dir or temp.name)
    try:
        start = time.monotonic()
        files = write_model(root / "model", shapes)
        write_s = time.monotonic() - start
        gc.collect()
        probe = root / "probe.json"
        config = test_config(root / "test.yaml", files, shapes, root / "out", probe, max_new_tokens)
        peak, run_s, _ = run_test(config, timeout_s)
        record = json.loads(probe.read_text())
        answers = [json.loads(line) for line in (root / "out" / "predictions.jsonl").read_text().splitlines() if line.strip()]
    finally:
        if temp is not None and not keep:
            temp.cleanup()
    report = Report(size, write_s, run_s, record["loaded_at"] - record["setup_at"], files["bytes"], record["maxrss_loaded"],
                    peak, record["counts"], expected, record["dtypes"], answers)
    if report.counts != expected:
        raise AssertionError(f"parameter counts differ from the released model's: {report.counts} != {expected}")
    text = render(report)
    print(text)
    if results is not None:
        write_section(Path(results), f"real_shapes {size}", text)
    return report


def render(report: Report) -> str:
    weights = report.total_weight_bytes
    lines = [
        machine_header(),
        "",
        f"SALMONN at the `{report.size}` shapes with random weights in the official formats, loaded by "
        "`salmonn-pl test` on the CPU (LLM bfloat16, encoders fp32 as released, bfloat16 autocast, greedy), "
        f"{len(report.answers)} SAKURA questions.",
        "",
        markdown_table(["file", "GiB"], [[k, v / GIB] for k, v in report.weight_bytes.items()] + [["all weights", weights / GIB]]),
        "",
        markdown_table(
            ["write s", "load s (setup to test start)", "test process s", "peak RSS after load GiB", "peak RSS GiB",
             "peak / weights", f"goal < {PEAK_RATIO_GOAL}"],
            [[report.write_s, report.load_s, report.run_s, report.peak_rss_loaded / GIB, report.peak_rss / GIB,
              report.peak_ratio, "yes" if report.peak_ratio < PEAK_RATIO_GOAL else "no"]],
        ),
        "",
        f"Loaded dtypes: {report.dtypes}. The safetensors shards are memory-mapped: their pages are read on first "
        "use, so part of the reading falls into the test rather than the load time, and the RSS after load counts only "
        "the pages touched by then; the peak RSS (whole test process: imports, weights, generation) is the figure "
        "compared with the bytes of the weight files.",
        "",
        markdown_table(["part", "parameters", "expected", "equal"],
                       [[k, f"{report.counts[k]:,}", f"{v:,}", report.counts[k] == v] for k, v in report.expected.items()]),
        "",
        "Answers (random weights, so only their presence counts): "
        + "; ".join(f"{a.get('id')}: {a.get('response')!r}" for a in report.answers),
        "",
        *([] if report.size == "7b" else [
            "The released 7B shapes: `python bench/real_shapes.py --size 7b --results bench/RESULTS.md` (about 17 GB "
            "of free RAM and disk).", ""]),
        "Predicted GPU memory of `salmonn-pl test`, batch 16 x 4 beams x 200 new tokens (about 160 prompt tokens), "
        f"including {CUDA_OVERHEAD / GIB:.1f} GiB of CUDA context and allocator slack; the smallest card leaves 7% free "
        "(see `predict_gpu_memory`):",
        "",
        gpu_table(),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    CLI(main, as_positional=False)
