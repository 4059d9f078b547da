"""Whisper encoder from a Hugging Face Whisper directory, without its decoder.

SALMONN only uses ``WhisperModel.from_pretrained(path).encoder``. Loading the whole model first
would hold the decoder (about a third of whisper-large-v2) in memory for nothing, so the encoder
is built from the config and only the ``model.encoder.*`` / ``encoder.*`` tensors are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder, sinusoids

_PREFIXES = ("model.encoder.", "encoder.")


def _weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin (Hugging Face Whisper directory expected)")


def _read_encoder_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), "pt") as f:
                    for key in f.keys():
                        for prefix in _PREFIXES:
                            if key.startswith(prefix):
                                tensors[key[len(prefix):]] = f.get_tensor(key)
            else:
                # Memory-mapped: only the encoder's tensors are ever read from disk.
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                for key, value in state.items():
                    for prefix in _PREFIXES:
                        if key.startswith(prefix):
                            tensors[key[len(prefix):]] = value
        except Exception as error:  # safetensors/zip/pickle errors: the file is truncated or corrupt
            raise ValueError(f"{file}: cannot read Whisper weights (truncated or corrupt?): {type(error).__name__}: {error}") from error
    return tensors


def load_whisper_encoder(path: str | Path, dtype: torch.dtype = torch.float32) -> WhisperEncoder:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face Whisper directory (config.json missing)")
    config = WhisperConfig.from_pretrained(path)
    # Built without storage and given the file's tensors (assign=True): no random initialisation that
    # the weights then overwrite, so loading holds one copy of the encoder, not two.
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    tensors = _read_encoder_tensors(_weight_files(path))
    missing, unexpected = encoder.load_state_dict(tensors, strict=False, assign=True)
    # Whisper's sinusoidal position table may be omitted by some exports; everything else must be there.
    if "embed_positions.weight" in missing:
        encoder.embed_positions.weight = torch.nn.Parameter(
            sinusoids(config.max_source_positions, config.d_model), requires_grad=False
        )
    missing = [k for k in missing if k != "embed_positions.weight"]
    if missing or unexpected:
        raise ValueError(f"{path}: Whisper encoder weights do not match its config: missing {missing}, unexpected {unexpected}")
    encoder.embed_positions.requires_grad_(False)  # as WhisperEncoder sets it (assign replaced the parameter)
    return encoder.to(dtype).eval()
