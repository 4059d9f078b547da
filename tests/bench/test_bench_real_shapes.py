"""The released-shapes loading benchmark at toy size: the model it writes loads through
`salmonn-pl test`, every part has the count its formula gives, and the formulas give the released
SALMONN-7B's counts (checked on parts built without storage, at full size)."""

import json

import pytest

import torch
from tests.helpers.bench_scripts import load_script
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

bench = load_script("real_shapes", "real_shapes.py")

from salmonn_pl.model.beats import BEATs, BEATsConfig  # noqa: E402
from salmonn_pl.model.llm import LoraSettings, apply_lora  # noqa: E402
from salmonn_pl.model.window_qformer import WindowQFormer  # noqa: E402


def test_count_formulas_give_the_released_7b_and_the_modules_at_full_size():
    shapes = bench.SIZES["7b"]
    assert bench.expected_counts(shapes) == bench.RELEASED_7B_COUNTS

    def count(module):
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        whisper = WhisperEncoder(WhisperConfig(**shapes.whisper))
        beats = BEATs(BEATsConfig.from_dict(shapes.beats))
        connector = WindowQFormer(whisper_width=1280, beats_width=768, llm_width=4096, num_query_tokens=1,
                                  second_per_window=0.333333, second_stride=0.333333, window_level=True,
                                  qformer=shapes.qformer)
        llm = LlamaForCausalLM(LlamaConfig(**shapes.llm, tie_word_embeddings=False))
    llm = apply_lora(llm, LoraSettings())
    lora = sum(p.numel() for n, p in llm.named_parameters() if ".lora_" in n)
    base = count(llm) - lora
    expected = bench.RELEASED_7B_COUNTS
    assert count(whisper) == expected["whisper encoder"] and count(beats) == expected["BEATs"]
    assert count(connector.qformer) == expected["Q-Former"] and count(connector.proj) == expected["projection"]
    assert lora == expected["LoRA"] and base + 2 * 4096 == expected["LLaMA (+ [PAD] row)"]


@pytest.mark.slow
def test_toy_run_loads_through_salmonn_pl_test_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## gpu\n\nkept\n")
    report = bench.main(size="toy", work_dir=str(tmp_path / "work"), max_new_tokens=2, results=results, keep=True)

    assert report.counts == bench.expected_counts(bench.SIZES["toy"])
    assert report.dtypes == {"llm": "torch.bfloat16", "whisper": "torch.float32"}
    assert len(report.answers) == 2 and {a["id"].split("/")[1] for a in report.answers} == {"single", "multi"}
    assert all(a["response"] for a in report.answers)
    # The files are what a user points salmonn-pl at: sharded safetensors with an index, 32000 pieces.
    llama = tmp_path / "work" / "model" / "llama"
    index = json.loads((llama / "model.safetensors.index.json").read_text())
    assert all((llama / f).is_file() for f in set(index["weight_map"].values()))
    assert report.total_weight_bytes > 0 and report.peak_rss >= report.peak_rss_loaded > 0
    assert 0 < report.load_s < report.run_s

    text = results.read_text()
    assert "## gpu\n\nkept" in text and "## real_shapes toy" in text
    assert "| 7B | int8 |" in text and "| 13B | float16 |" in text


def test_gpu_memory_prediction_adds_up():
    m = bench.predict_gpu_memory("7b", bench.SIZES["7b"], "float16")
    # 6.74B LLaMA weights at 2 bytes, LoRA at 4; KV (2 x 32 layers x 4096 x 2 bytes per position): the
    # 160-token prompt once per question (16), 224 generated positions (7 chunks of 32) per beam (64).
    assert m.llm_weights == bench.RELEASED_7B_COUNTS["LLaMA (+ [PAD] row)"] * 2 + bench.RELEASED_7B_COUNTS["LoRA"] * 4
    assert m.kv_cache == 2 * 32 * 4096 * 2 * (16 * 160 + 64 * 224)
    int8 = bench.predict_gpu_memory("7b", bench.SIZES["7b"], "int8")
    assert 0.5 * m.llm_weights < int8.llm_weights < 0.6 * m.llm_weights  # embeddings and lm_head stay 16-bit
    assert bench.predict_gpu_memory("13b", bench.SIZES["13b"], "float16").total > m.total
