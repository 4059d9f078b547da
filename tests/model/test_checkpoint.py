"""Official checkpoint key map, loud failures, and lossless trainable-only checkpoints."""

import copy
import re
import shutil
import dataclasses
from pathlib import Path

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


def test_checkpoint_lacking_connector_or_lora_weights_is_an_error_naming_them(tiny_salmonn, tiny_files, tmp_path):
    model = copy.deepcopy(tiny_salmonn)
    empty = tmp_path / "empty.pth"
    torch.save({"model": {}}, empty)
    with pytest.raises(ValueError, match=r"empty.pth: lacks \d+ of the weights.*connector\.query_tokens.*allow_missing"):
        load_salmonn_checkpoint(model, empty)

    state = torch.load(tiny_files["ckpt"], map_location="cpu")["model"]
    no_lora = {k: v for k, v in state.items() if "lora_B" not in k}
    partial = tmp_path / "no_lora_b.pth"
    torch.save({"model": no_lora}, partial)
    with pytest.raises(ValueError) as error:
        load_salmonn_checkpoint(model, partial)
    lacking = [k for k in state if "lora_B" in k]
    assert f"lacks {len(lacking)} of the weights" in str(error.value) and "lora_B.default.weight" in str(error.value)
    assert "connector." not in str(error.value)


def test_allow_missing_loads_what_is_there_and_keeps_the_rest(tiny_salmonn, tiny_config, tiny_files, tmp_path, caplog):
    state = torch.load(tiny_files["ckpt"], map_location="cpu")["model"]
    partial = tmp_path / "proj_only.pth"
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("speech_llama_proj.")}}, partial)
    with caplog.at_level("INFO", logger="salmonn_pl.model.checkpoint"):
        model = Salmonn(dataclasses.replace(tiny_config, ckpt=str(partial), allow_missing=True))
    assert torch.equal(model.connector.proj.weight, state["speech_llama_proj.weight"])
    assert any("allow_missing" in r.getMessage() and "randomly initialised" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="proj_only.pth: lacks"):
        Salmonn(dataclasses.replace(tiny_config, ckpt=str(partial)))
    # No checkpoint at all is a deliberate choice too: the connector stays random without complaint.
    Salmonn(dataclasses.replace(tiny_config, ckpt=""))


def test_truncated_or_corrupt_weight_files_are_errors_naming_the_file(tiny_config, tiny_files, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(tiny_files["ckpt"]).read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"truncated.pth: not a readable checkpoint"):
        Salmonn(dataclasses.replace(tiny_config, ckpt=str(truncated)))

    for part, weights_name in (("llm_path", "model.safetensors"), ("whisper_path", "model.safetensors")):
        folder = tmp_path / part
        shutil.copytree(tiny_files[part], folder)
        data = (folder / weights_name).read_bytes()
        (folder / weights_name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=rf"{re.escape(str(folder / weights_name))}: cannot (load|read)"):
            Salmonn(dataclasses.replace(tiny_config, **{part: str(folder)}))
