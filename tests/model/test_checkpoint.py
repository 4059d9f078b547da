"""Official checkpoint key map, loud failures, and lossless trainable-only checkpoints."""

import copy
import dataclasses

import pytest
import torch

from salmonn_pl.model.checkpoint import (
    export_official_checkpoint,
    load_salmonn_checkpoint,
    map_official_key,
    save_trainable_checkpoint,
    to_official_key,
)
from salmonn_pl.model.salmonn import Salmonn


def test_every_golden_key_maps_and_round_trips(golden):
    official = torch.load(golden.file("ckpt"), map_location="cpu")["model"]
    placed = 0
    for key in official:
        mapped = map_official_key(key)
        if mapped is None:  # recomputed buffers (rotary inv_freq, Q-Former position_ids)
            assert key.endswith(("inv_freq", "position_ids"))
            continue
        assert to_official_key(mapped) == key
        placed += 1
    assert placed > 0


def test_unplaceable_key_and_shape_mismatch_fail_loudly(tiny_salmonn, tiny_files, tmp_path):
    state = torch.load(tiny_files["ckpt"], map_location="cpu")["model"]
    bad = tmp_path / "unknown.pth"
    torch.save({"model": {**state, "speech_Qformer.cls.predictions.bias": torch.zeros(3)}}, bad)
    model = copy.deepcopy(tiny_salmonn)
    with pytest.raises(ValueError, match=r"unknown.pth: 1 keys cannot be placed.*cls\.predictions"):
        load_salmonn_checkpoint(model, bad)

    wrong = dict(state)
    wrong["speech_llama_proj.weight"] = torch.zeros(3, 3)
    path = tmp_path / "wrong.pth"
    torch.save({"model": wrong}, path)
    with pytest.raises(ValueError, match=r"(?s)wrong.pth: shape mismatches.*connector\.proj\.weight"):
        load_salmonn_checkpoint(model, path)

    with pytest.raises(ValueError, match="neither an official SALMONN checkpoint"):
        torch.save({"weights": state}, tmp_path / "other.pth")
        load_salmonn_checkpoint(model, tmp_path / "other.pth")


def test_trainable_checkpoint_is_lossless_and_holds_only_trainable_weights(tiny_config, tmp_path):
    model = Salmonn(tiny_config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
        model.llm.get_input_embeddings().weight[-1].normal_()
    path = tmp_path / "trainable.pt"
    save_trainable_checkpoint(model, path)
    saved = torch.load(path)["state_dict"]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not any(n in saved for n in frozen)

    fresh = Salmonn(dataclasses.replace(tiny_config, ckpt=str(path)))
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_official_export_loads_back_identically(tiny_salmonn, tiny_config, tmp_path):
    path = tmp_path / "exported.pth"
    export_official_checkpoint(tiny_salmonn, path)
    keys = torch.load(path)["model"].keys()
    assert "speech_llama_proj.weight" in keys and "speech_query_tokens" in keys
    assert any(k.startswith("speech_Qformer.bert.encoder.layer.0.crossattention.self.") for k in keys)
    again = Salmonn(dataclasses.replace(tiny_config, ckpt=str(path)))
    trainable = {n for n, p in tiny_salmonn.named_parameters() if p.requires_grad}
    own = dict(again.named_parameters())
    for name, p in tiny_salmonn.named_parameters():
        if name in trainable:
            assert torch.equal(p, own[name]), name
