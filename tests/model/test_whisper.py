"""The Whisper encoder loads only the encoder's tensors, with no storage left unfilled."""

import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers.models.whisper.modeling_whisper import sinusoids

from salmonn_pl.model.whisper import load_whisper_encoder


def test_encoder_holds_the_files_tensors_and_rebuilds_an_omitted_position_table(tiny_files, tmp_path):
    source = tiny_files["whisper_path"]
    state = load_file(str(source / "model.safetensors"))
    encoder = load_whisper_encoder(source)
    assert not any(t.is_meta for t in [*encoder.parameters(), *encoder.buffers()])
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, state[f"model.encoder.{name}"]), name
    assert not encoder.embed_positions.weight.requires_grad

    folder = tmp_path / "whisper"
    shutil.copytree(source, folder)
    save_file({k: v for k, v in state.items() if k != "model.encoder.embed_positions.weight"}, str(folder / "model.safetensors"))
    rebuilt = load_whisper_encoder(folder)
    assert torch.equal(rebuilt.embed_positions.weight, sinusoids(*rebuilt.embed_positions.weight.shape))
    assert not rebuilt.embed_positions.weight.requires_grad
