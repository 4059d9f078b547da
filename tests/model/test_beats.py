"""BEATs parity with the official implementation (golden ``beats_*`` tensors) and batch invariance."""

from pathlib import Path

import pytest
import torch
from tests.helpers.golden import Golden, assert_close, load_official_wav

from salmonn_pl.model.beats import BEATs, BEATsConfig

SAMPLE_RATE = 16000


def golden_wavs(golden: Golden) -> list[torch.Tensor]:
    return [load_official_wav(golden.path / wav["file"]) for wav in golden.wavs]


def right_padded(wavs: list[torch.Tensor], extra: int = 0, fill: torch.Generator | None = None):
    """[B, N] batch, lengths and padding mask (True on padding), like the official collater.

    With ``fill`` the padding holds noise instead of zeros, to show it is never read.
    """
    lengths = torch.tensor([len(w) for w in wavs])
    width = int(lengths.max()) + extra
    batch = torch.zeros(len(wavs), width, dtype=wavs[0].dtype)
    if fill is not None:
        batch = torch.randn(batch.shape, generator=fill, dtype=batch.dtype)
    for row, wav in enumerate(wavs):
        batch[row, : len(wav)] = wav
    padding_mask = torch.arange(width) >= lengths.unsqueeze(1)
    return batch, lengths, padding_mask


@pytest.fixture
def no_grad():
    with torch.no_grad():
        yield


def tiny_config(**overrides) -> BEATsConfig:
    settings = dict(
        input_patch_size=16,
        embed_dim=16,
        encoder_layers=2,
        encoder_embed_dim=16,
        encoder_ffn_embed_dim=32,
        encoder_attention_heads=2,
        conv_pos=16,
        conv_pos_groups=4,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return BEATsConfig(**(settings | overrides))


def test_state_dict_matches_official_checkpoint(golden: Golden):
    checkpoint = torch.load(golden.require_beats(), map_location="cpu", weights_only=True)
    model = BEATs(BEATsConfig.from_dict(checkpoint["cfg"]))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: tuple(v.shape) for k, v in checkpoint["model"].items()}
    assert ours == official

    # Layers 1..N-1 reuse layer 0's relative position table, as upstream; only one copy is a parameter.
    tables = [layer.self_attn.relative_attention_bias.weight for layer in model.encoder.layers]
    assert all(table is tables[0] for table in tables)
    names = {name for name, _ in model.named_parameters()}
    assert "encoder.layers.0.self_attn.relative_attention_bias.weight" in names
    assert "encoder.layers.1.self_attn.relative_attention_bias.weight" not in names


def test_extract_features_matches_golden_per_wav(golden: Golden, no_grad):
    model = BEATs.from_checkpoint(golden.require_beats())
    for i, wav in enumerate(golden_wavs(golden)):
        features, mask = model.extract_features(wav[None], torch.zeros(1, len(wav), dtype=torch.bool))
        assert_close(features, golden[f"wav{i}.beats_features"], f"wav{i}.beats_features")
        assert_close(mask, golden[f"wav{i}.beats_padding_mask_out"], f"wav{i}.beats_padding_mask_out")
        assert features.shape[1] == golden.variant["wavs"][golden.wavs[i]["name"]]["beats_tokens"]


def test_extract_features_reproduces_official_batch_quirk(golden: Golden, no_grad):
    model = BEATs.from_checkpoint(golden.require_beats())
    batch, _, padding_mask = right_padded(golden_wavs(golden))
    assert_close(padding_mask.sum(1), golden["batch.padding_mask_num_true"], "batch.padding_mask_num_true")
    features, mask = model.extract_features(batch, padding_mask)
    assert_close(features, golden["batch.beats_features"], "batch.beats_features")
    assert_close(mask, golden["batch.beats_padding_mask_out"], "batch.beats_padding_mask_out")
    for i, wav in enumerate(golden.wavs):
        expected = golden.variant["wavs"][wav["name"]]["beats_batch_unmasked_tokens"]
        assert int((~mask[i]).sum()) == expected, wav["name"]


def test_per_clip_features_equal_lone_clips(golden: Golden, no_grad):
    model = BEATs.from_checkpoint(golden.require_beats())
    wavs = golden_wavs(golden)
    batch, lengths, _ = right_padded(wavs)
    features, mask = model.extract_features_per_clip(batch, lengths)
    for i in range(len(wavs)):
        expected = golden[f"wav{i}.beats_features"][0]
        tokens = expected.shape[0]
        assert_close(mask[i], torch.arange(mask.shape[1]) >= tokens, f"wav{i} token mask")
        assert_close(features[i, :tokens], expected, f"wav{i} per-clip features")

    # Noise instead of zeros in the padding, and more of it, changes nothing for real tokens.
    noisy, _, _ = right_padded(wavs, extra=SAMPLE_RATE, fill=torch.Generator().manual_seed(0))
    noisy_features, noisy_mask = model.extract_features_per_clip(noisy, lengths)
    assert torch.equal(noisy_mask, mask)
    valid = ~mask.unsqueeze(-1)
    assert_close(noisy_features * valid, features * valid, "per-clip features with noisy padding", atol=1e-5)


def test_per_clip_survives_clips_without_tokens(golden: Golden, no_grad):
    model = BEATs.from_checkpoint(golden.require_beats())
    wav = golden_wavs(golden)[1]
    short = wav[:1000]  # 4 fbank frames: not one whole 16-frame patch
    batch, lengths, _ = right_padded([wav, short])
    features, mask = model.extract_features_per_clip(batch, lengths)
    assert mask[1].all() and not mask[0].any()
    assert torch.isfinite(features).all()
    assert_close(features[0], golden["wav1.beats_features"][0], "clip next to a token-less clip")


def test_predictor_returns_class_probabilities(golden: Golden, no_grad):
    model = BEATs.from_checkpoint(golden.require_beats())
    classes = model.config.predictor_class
    batch, _, padding_mask = right_padded(golden_wavs(golden))
    probabilities, _ = model.extract_features(batch, padding_mask, feature_only=False)
    assert probabilities.shape == (batch.shape[0], classes)
    assert probabilities.min() >= 0 and probabilities.max() <= 1

    # Without padding the clip-level prediction is the mean predictor logit over tokens.
    single = batch[:1, : golden["wav0.num_samples"].item()]
    probability, _ = model.extract_features(single, feature_only=False)
    features, _ = model.extract_features(single)
    assert_close(probability, torch.sigmoid(model.predictor(features).mean(dim=1)), "predictor probabilities")


def test_checkpoint_errors_name_the_file(golden: Golden, tmp_path: Path):
    checkpoint = torch.load(golden.require_beats(), map_location="cpu", weights_only=True)

    tolerated = tmp_path / "unknown_key.pt"
    torch.save({"cfg": checkpoint["cfg"] | {"some_future_option": 3}, "model": checkpoint["model"]}, tolerated)
    assert BEATs.from_checkpoint(tolerated).config.extra == {"some_future_option": 3}

    wrong_width = tmp_path / "wrong_width.pt"
    torch.save({"cfg": checkpoint["cfg"] | {"encoder_embed_dim": 2 * checkpoint["cfg"]["encoder_embed_dim"]}, "model": checkpoint["model"]}, wrong_width)
    with pytest.raises(ValueError, match="(?s)wrong_width.pt.*do not match") as error:
        BEATs.from_checkpoint(wrong_width)
    assert "size mismatch" in str(error.value)

    no_predictor = tmp_path / "no_predictor.pt"
    torch.save({"cfg": checkpoint["cfg"] | {"finetuned_model": False}, "model": checkpoint["model"]}, no_predictor)
    with pytest.raises(ValueError, match="(?s)no_predictor.pt.*Unexpected.*predictor.weight"):
        BEATs.from_checkpoint(no_predictor)

    not_beats = tmp_path / "not_beats.pt"
    torch.save({"model": checkpoint["model"]}, not_beats)
    with pytest.raises(ValueError, match="not_beats.pt is not a BEATs checkpoint"):
        BEATs.from_checkpoint(not_beats)

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        BEATs.from_checkpoint(tmp_path / "missing.pt")


def test_other_architecture_options_stay_batch_invariant(no_grad):
    """Pre-LN, GLU feed-forward, no relative bias, no post-extract projection: still one clip = one batch row."""
    torch.manual_seed(0)
    config = tiny_config(layer_norm_first=True, activation_fn="glu", relative_position_embedding=False)
    model = BEATs(config).eval()
    keys = model.state_dict().keys()
    assert "encoder.layers.0.fc1.linear.weight" in keys and "post_extract_proj.weight" not in keys

    generator = torch.Generator().manual_seed(0)
    wavs = [torch.randn(n, generator=generator, dtype=torch.float64) * 0.1 for n in (16000, 9000, 24000)]
    batch, lengths, _ = right_padded(wavs)
    features, mask = model.extract_features_per_clip(batch, lengths)
    for row, wav in enumerate(wavs):
        alone, alone_mask = model.extract_features(wav[None])
        assert alone_mask is None
        tokens = alone.shape[1]
        assert int((~mask[row]).sum()) == tokens
        assert_close(features[row, :tokens], alone[0], f"row {row}", atol=1e-5)


def test_layer_wise_gradient_decay_scales_lower_gradients():
    torch.manual_seed(0)
    options = dict(relative_position_embedding=True, gru_rel_pos=True, deep_norm=True)
    plain = BEATs(tiny_config(**options)).train()
    decayed = BEATs(tiny_config(**options, layer_wise_gradient_decay_ratio=0.5)).train()
    decayed.load_state_dict(plain.state_dict())
    source = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    for model in (plain, decayed):
        model.extract_features(source)[0].square().sum().backward()
    # The gradient entering each of the two layers from above is halved.
    plain_layers, decayed_layers = plain.encoder.layers, decayed.encoder.layers
    assert_close(decayed_layers[1].fc1.weight.grad, plain_layers[1].fc1.weight.grad, "last layer", atol=1e-6)
    assert_close(decayed_layers[0].fc1.weight.grad, plain_layers[0].fc1.weight.grad * 0.5, "first layer", atol=1e-6)
    assert_close(decayed.patch_embedding.weight.grad, plain.patch_embedding.weight.grad * 0.25, "patches", atol=1e-6)


def test_bfloat16_autocast_stays_close_to_float32(golden: Golden, no_grad):
    model = BEATs.from_checkpoint(golden.require_beats())
    wav = golden_wavs(golden)[1].float()[None]
    reference, _ = model.extract_features(wav)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision, _ = model.extract_features(wav)
    relative_error = (low_precision.float() - reference).abs().mean() / reference.abs().mean()
    assert relative_error < 0.03, relative_error
