"""Window Q-Former and Whisper encoder against the official tensors."""

import torch
from tests.helpers.golden import assert_close

from salmonn_pl.model.checkpoint import map_official_key
from salmonn_pl.model.whisper import load_whisper_encoder
from salmonn_pl.model.window_qformer import QFormerSettings, WindowQFormer, frames_per_window


def connector_from_golden(golden) -> WindowQFormer:
    cfg = golden.model_config
    official = torch.load(golden.file("ckpt"), map_location="cpu")["model"]
    state = {}
    for key, value in official.items():
        mapped = map_official_key(key)
        if mapped is not None and mapped.startswith("connector."):
            state[mapped[len("connector."):]] = value
    connector = WindowQFormer(
        whisper_width=state["ln_speech.weight"].numel(),
        beats_width=state["ln_audio.weight"].numel() if golden.has_beats else None,
        llm_width=state["proj.weight"].shape[0],
        num_query_tokens=cfg["num_speech_query_token"],
        second_per_window=cfg["second_per_window"],
        second_stride=cfg["second_stride"],
        window_level=cfg["window_level_Qformer"],
        qformer=golden.qformer_settings(),
    )
    missing, unexpected = connector.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return connector.eval()


def test_frames_per_window_matches_official_rounding():
    assert frames_per_window(0.333333) == 17
    assert frames_per_window(0.5) == 25


def test_whisper_encoder_parity(golden):
    encoder = load_whisper_encoder(golden.file("whisper_path"))
    for i, _ in enumerate(golden.wavs):
        with torch.no_grad():
            out = encoder(golden[f"wav{i}.input_features"]).last_hidden_state
        assert_close(out, golden[f"wav{i}.whisper_encoder_out"], f"wav{i}.whisper_encoder_out")


def test_window_qformer_parity(golden):
    connector = connector_from_golden(golden)
    n_windows = golden.variant["n_windows"]
    for i, _ in enumerate(golden.wavs):
        beats = golden[f"wav{i}.beats_features"] if golden.has(f"wav{i}.beats_features") else None
        with torch.no_grad():
            out = connector(golden[f"wav{i}.whisper_encoder_out"], beats)
        assert_close(out["qformer_out"], golden[f"wav{i}.qformer_out"], f"wav{i}.qformer_out")
        assert_close(out["audio_tokens"], golden[f"wav{i}.speech_embeds"], f"wav{i}.speech_embeds")
        assert connector.tokens_for_frames() == golden.variant["speech_tokens"] == n_windows * connector.num_query_tokens


def test_beats_padding_mask_zeroes_tokens_after_layernorm():
    torch.manual_seed(0)
    connector = WindowQFormer(8, 4, 6, qformer=QFormerSettings(hidden_size=8, num_attention_heads=2, intermediate_size=16)).eval()
    with torch.no_grad():
        connector.ln_audio.bias.fill_(0.5)  # a non-zero LayerNorm output for any input
    whisper = torch.randn(2, 1500, 8)
    beats = torch.randn(2, 1496, 4)
    mask = torch.zeros(2, 1496, dtype=torch.bool)
    mask[1, 700:] = True
    fused = connector.fuse(whisper, beats, mask)
    assert fused.shape == (2, 1500, 12)
    assert torch.all(fused[1, 700:, 8:] == 0) and torch.all(fused[:, 1496:, 8:] == 0)
    assert torch.all(fused[0, :1496, 8:] != 0)
