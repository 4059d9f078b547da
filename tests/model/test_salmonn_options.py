"""Options of the official config beyond tiny-v1's: no BEATs, several queries, other windows, precision."""

import dataclasses

import numpy as np
import pytest
import torch

from salmonn_pl.data.collate import AudioBatch, SpeechCollator
from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.model.salmonn import Salmonn
from salmonn_pl.model.tiny import tiny_qformer_settings, write_tiny_salmonn
from salmonn_pl.generation.generate import generate

PROMPT = "USER: <Speech><SpeechHere></Speech> Which sound is it? (a) tone (b) noise\nASSISTANT:"


def _batch():
    rng = np.random.default_rng(0)
    return SpeechCollator()([
        {"id": str(i), "audio": rng.standard_normal(int(s * 16000)) * 0.1, "prompt": PROMPT, "text": "(a) tone", "meta": {}}
        for i, s in enumerate([2.0, 6.5])
    ])


def _run(model: Salmonn) -> torch.Tensor:
    batch = _batch()
    with torch.no_grad():
        tokens = model.encode_audio(AudioBatch.of(batch))["audio_tokens"]
        result = generate(model, batch["prompt"], tokens, GenerationSettings(max_new_tokens=3, num_beams=2))
        loss = model.lm_loss(model.assemble(batch["prompt"], tokens, batch["text"]))
    assert len(result.sequences) == 2 and torch.isfinite(loss)
    return tokens


def test_whisper_only_model(tmp_path):
    files = write_tiny_salmonn(tmp_path, with_beats=False)
    assert "beats_path" not in files
    from salmonn_pl.model.salmonn import SalmonnConfig

    model = Salmonn(SalmonnConfig(**{k: str(v) for k, v in files.items()}, qformer=tiny_qformer_settings(), llm_dtype="float32")).eval()
    assert model.beats is None and model.connector.ln_audio is None
    assert model.connector.qformer.config.encoder_hidden_size == model.whisper.config.d_model
    assert _run(model).shape == (2, 88, model.llm.config.hidden_size)


@pytest.mark.parametrize("queries, window, expected", [(2, 0.333333, 176), (1, 0.5, 60), (3, 1.0, 90)])
def test_query_tokens_and_window_lengths(tiny_config, queries, window, expected):
    config = dataclasses.replace(tiny_config, ckpt="", num_speech_query_token=queries, second_per_window=window, second_stride=window)
    model = Salmonn(config).eval()
    assert model.connector.tokens_for_frames() == expected
    assert _run(model).shape[1] == expected


def test_non_window_qformer(tiny_config):
    model = Salmonn(dataclasses.replace(tiny_config, ckpt="", window_level_qformer=False, num_speech_query_token=4)).eval()
    assert _run(model).shape[1] == 4


def test_precision_knobs(tiny_config):
    model = Salmonn(dataclasses.replace(tiny_config, llm_dtype="bfloat16", autocast_dtype="bfloat16")).eval()
    assert model.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.whisper.conv1.weight.dtype == torch.float32  # encoders keep float32 weights
    _run(model)
    # float16 weights without autocast: the study's "fp16 weights, fp32 autocast" setting.
    model = Salmonn(dataclasses.replace(tiny_config, llm_dtype="float16", autocast_dtype="float32")).eval()
    assert model.llm.get_input_embeddings().weight.dtype == torch.float16
    if torch.cuda.is_available():
        _run(model.cuda())


def test_8bit_needs_cuda(tiny_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for CPU-only machines")
    with pytest.raises(ValueError, match="8-bit needs a CUDA GPU|needs a CUDA GPU"):
        Salmonn(dataclasses.replace(tiny_config, load_in_8bit=True))


@pytest.mark.parametrize("seconds", [-1, 0, 29.5, float("nan"), float("inf")])
def test_max_audio_seconds_below_whisper_window_is_rejected(seconds: float):
    # -1 used to cut the last second of every clip; 0 failed later with a misleading message.
    from salmonn_pl.model.salmonn import SalmonnConfig

    with pytest.raises(ValueError, match=rf"max_audio_seconds must be >= 30 .*got {seconds!r}"):
        SalmonnConfig(llm_path="llm", whisper_path="whisper", max_audio_seconds=seconds)
    assert SalmonnConfig(llm_path="llm", whisper_path="whisper", max_audio_seconds=30).max_audio_seconds == 30
