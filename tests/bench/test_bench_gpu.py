"""The GPU benchmark at toy size on the CPU: every figure computed, the bytes a decode step reads
counted right, the time budget respected, and the in-memory model equal to the one loaded from files.

Correctness only: no figure is asserted, since CI machines differ in speed.
"""

import dataclasses
import math

import pytest
import torch
from tests.helpers.bench_scripts import load_script

bench = load_script("bench_gpu", "gpu.py")

from salmonn_pl.generation.decode import CachedLM  # noqa: E402
from salmonn_pl.model.salmonn import Salmonn  # noqa: E402

TOY = bench.SHAPES["toy"]


@pytest.mark.slow
def test_toy_run_measures_every_configuration_and_replaces_its_results_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## features\n\nkept\n\n## gpu\n\nstale figures\n")
    batch_sizes, beams, new_tokens = [1, 2], 4, 3

    report = bench.main(size="toy", device="cpu", precisions=["float32", "int8"], batch_sizes=batch_sizes,
                        num_beams=beams, max_new_tokens=new_tokens, clip_seconds=1.0, warmup=0, repeats=1,
                        results=results)

    assert [(m.precision, m.batch_size) for m in report.measurements] == [
        (p, b) for p in ["float32", "int8"] for b in batch_sizes
    ]
    weight_bytes = bench.llm_weight_bytes(bench.build_llm(TOY, "float32", torch.device("cpu")))
    assert report.peak_bandwidth_gb_s is None  # no peak known for a CPU
    measured = [m for m in report.measurements if m.precision == "float32"]
    for m in measured:
        assert not m.skipped
        assert m.rows == m.batch_size * beams and m.decode_steps == new_tokens
        # Every prompt holds <s>, the 88 audio tokens of a clip under 30 s, and its question.
        assert m.batch_size * 90 <= m.real_prompt_tokens <= m.batch_size * m.prompt_tokens
        for figure in (m.questions_per_s, m.prefill_tokens_per_s, m.decode_tokens_per_s, m.encode_s, m.full_pass_s):
            assert math.isfinite(figure) and figure > 0
        assert m.bytes_per_step > weight_bytes  # weights + a KV cache
        assert m.bandwidth_fraction(report.peak_bandwidth_gb_s) is None and m.peak_memory_gib is None
    # 8-bit needs CUDA: reported in the table instead of stopping the run.
    for m in report.measurements[len(batch_sizes):]:
        assert m.skipped.startswith("failed:") and "CUDA" in m.skipped

    text = results.read_text()
    assert "stale figures" not in text and "## features\n\nkept" in text
    section = text.split("## gpu", 1)[1]
    assert "| float32 | 1 | 4 |" in section and "| float32 | 2 | 8 |" in section
    assert "8-bit weights need a CUDA device" in section
    assert "not applicable here (toy shapes on cpu)" in section


def test_exhausted_budget_skips_every_configuration_and_still_prints_the_table():
    report = bench.main(size="toy", device="cpu", precisions=["float32", "bfloat16"], batch_sizes=[1, 8], budget_s=0.0)

    assert len(report.measurements) == 4
    assert all(m.skipped.startswith("skipped: time budget") for m in report.measurements)
    assert report.markdown.count("skipped: time budget") == 4
    assert "nothing measured" in report.markdown


def test_decode_step_bytes_are_the_llm_weights_without_the_embedding_table_plus_the_kv_cache():
    llm = bench.build_llm(TOY, "float32", torch.device("cpu"))
    h, ffn, layers, vocab = (TOY.llm[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    rank = 8  # SALMONN's LoRA: A [rank, h] and B [h, rank] on q_proj and v_proj
    per_layer = 4 * h * h + 3 * h * ffn + 2 * h + 2 * 2 * rank * h
    parameters = layers * per_layer + h + vocab * h  # final norm and lm_head; the input embedding is not read
    weight_bytes = bench.llm_weight_bytes(llm)
    assert 4 * parameters <= weight_bytes <= 4 * parameters + 1024  # + rotary frequency buffers

    # The KV cache a step reads is the cache the model really holds.
    batch, context, beams = 2, 11, 4
    embeds = torch.randn(batch, context, h)
    mask = torch.ones(batch, context, dtype=torch.long)
    mask[0, :3] = 0  # left padding is cached too
    lm = CachedLM(llm.eval(), need_hidden=False)
    with torch.no_grad():
        lm.prefill(embeds, mask)
    lm.repeat_rows(beams)
    held = sum(t.numel() * t.element_size() for t in (*lm.cache.prompt_keys, *lm.cache.prompt_values))
    assert bench.kv_cache_bytes(llm.config, batch, context, 4) == held  # the prompt is held once per item


def test_peak_bandwidth_is_looked_up_by_the_most_specific_device_name():
    assert bench.peak_bandwidth_gb_s("NVIDIA H100 80GB HBM3") == bench.PEAK_BANDWIDTH_GB_S["H100"]
    assert bench.peak_bandwidth_gb_s("NVIDIA H100 PCIe") == bench.PEAK_BANDWIDTH_GB_S["H100 PCIe"]
    assert bench.peak_bandwidth_gb_s("NVIDIA H100 NVL") == bench.PEAK_BANDWIDTH_GB_S["H100 NVL"]
    assert bench.peak_bandwidth_gb_s("NVIDIA H200") == bench.PEAK_BANDWIDTH_GB_S["H200"]
    assert bench.peak_bandwidth_gb_s("NVIDIA A100-SXM4-80GB") == bench.PEAK_BANDWIDTH_GB_S["A100-SXM4-80GB"]
    assert bench.peak_bandwidth_gb_s("Tesla T4") is None
    assert bench.peak_bandwidth_gb_s("cpu") is None


def test_salmonn_from_modules_equals_the_model_loaded_from_files(tiny_salmonn, tiny_config):
    # No file is read: the paths may point nowhere.
    config = dataclasses.replace(tiny_config, llm_path="/nonexistent", whisper_path="/nonexistent", beats_path="",
                                 ckpt="/nonexistent")
    m = tiny_salmonn
    rebuilt = Salmonn.from_modules(config, m.tokenizer, m.llm, m.whisper, m.beats)
    assert rebuilt.llm is m.llm and rebuilt.whisper is m.whisper and rebuilt.beats is m.beats
    assert rebuilt.connector is not m.connector
    rebuilt.connector.load_state_dict(m.connector.state_dict())  # same shapes, checked strictly
    rebuilt.connector.eval()

    wav = 0.1 * torch.randn(2, 16000 * 3, dtype=torch.float64)
    lengths = torch.tensor([16000 * 3, 16000 * 2])
    wav[1, 16000 * 2 :] = 0
    from salmonn_pl.audio.features import whisper_log_mel
    from salmonn_pl.data.collate import AudioBatch

    spectrogram = whisper_log_mel(wav, lengths)
    with torch.no_grad():
        expected = m.encode_audio(AudioBatch(spectrogram, wav, None, lengths))["audio_tokens"]
        got = rebuilt.encode_audio(AudioBatch(spectrogram, wav, None, lengths))["audio_tokens"]
    assert torch.equal(got, expected)
    assert [p.requires_grad for p in rebuilt.connector.parameters()] == [
        p.requires_grad for p in m.connector.parameters()
    ]
