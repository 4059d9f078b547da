"""Discovery and loading of golden fixture directories (official-SALMONN reference tensors).

Golden directories are every subdirectory of ``../shared/golden/`` next to the repository plus every
directory listed in ``SALMONN_PL_GOLDEN`` (``:``-separated). Each holds a ``manifest.json`` and an
``expected.safetensors``; see ``../shared/README.md``.

Golden sets differ in architecture (widths, depths, LoRA rank and alpha, query tokens, windows, BEATs
or not, stereo WAVs): a test reads every such setting from the set's own files through
:class:`Golden` (``config.yaml``, ``qformer_bert_config.json``, the Hugging Face ``config.json`` files,
the manifest), never from tiny-v1's values. ``scripts/make_golden_like.py`` writes sets of other
architectures to check that.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"
SAKURA_MINI = SHARED / "sakura-mini"

FLOAT_ATOL = 1e-4


def golden_dirs() -> list[Path]:
    dirs: list[Path] = []
    root = SHARED / "golden"
    if root.is_dir():
        dirs += sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())
    for entry in os.environ.get("SALMONN_PL_GOLDEN", "").split(":"):
        if entry.strip():
            p = Path(entry).expanduser().resolve()
            if not (p / "manifest.json").is_file():
                raise FileNotFoundError(f"SALMONN_PL_GOLDEN lists {p}, which has no manifest.json")
            dirs.append(p)
    return dirs


@dataclass
class Golden:
    path: Path

    @cached_property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    @cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "expected.safetensors"))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def variant(self) -> dict:
        return self.manifest["info"]["variants"]["main"]

    @property
    def wavs(self) -> list[dict]:
        return self.manifest["wavs"]

    @cached_property
    def official_config(self) -> dict:
        """The official ``config.yaml`` (``model``, ``generate`` and the harness's ``golden`` section)."""
        return yaml.safe_load((self.path / "config.yaml").read_text())

    @property
    def model_config(self) -> dict:
        """The ``model`` section of the official ``config.yaml``."""
        return self.official_config["model"]

    def file(self, key: str) -> Path | None:
        """The file a ``model`` path option names (``beats_path``, ``ckpt``, ...); None when it is empty."""
        value = self.model_config.get(key)
        return self.path / value if value else None

    @property
    def has_beats(self) -> bool:
        """Whether this SALMONN has a BEATs encoder (official config: an empty ``beats_path`` means none)."""
        return self.file("beats_path") is not None

    def require_beats(self) -> Path:
        """The BEATs checkpoint; skips the test for a Whisper-only golden set."""
        if not self.has_beats:
            pytest.skip(f"golden set {self.name} has no BEATs (beats_path is empty in its config.yaml)")
        return self.file("beats_path")

    @cached_property
    def llm_config(self) -> dict:
        """The Hugging Face ``config.json`` of the LLaMA directory."""
        return json.loads((self.file("llama_path") / "config.json").read_text())

    @property
    def llm_hidden_size(self) -> int:
        return self.llm_config["hidden_size"]

    def lora_settings(self, **overrides):
        """LoRA settings of the official config (rank, alpha, dropout); ``overrides`` replace fields."""
        from salmonn_pl.model.llm import LoraSettings

        cfg = self.model_config
        if not cfg.get("lora", True):
            return None
        settings = dict(rank=cfg["lora_rank"], alpha=cfg["lora_alpha"], dropout=cfg["lora_dropout"])
        return LoraSettings(**(settings | overrides))

    @cached_property
    def qformer_bert_config(self) -> dict:
        name = self.official_config.get("golden", {}).get("qformer_bert_config", "qformer_bert_config.json")
        return json.loads((self.path / name).read_text())

    def qformer_settings(self):
        """The Q-Former shape: the BERT config the harness patched in, with the layer count it used."""
        from salmonn_pl.model.window_qformer import QFormerSettings

        bert = self.qformer_bert_config
        layers = self.official_config.get("golden", {}).get("qformer_num_hidden_layers", bert["num_hidden_layers"])
        return QFormerSettings(
            hidden_size=bert["hidden_size"],
            num_hidden_layers=layers,
            num_attention_heads=bert["num_attention_heads"],
            intermediate_size=bert["intermediate_size"],
            layer_norm_eps=bert["layer_norm_eps"],
        )

    def prompt(self, i: int) -> str:
        """The full prompt of WAV ``i`` as the official code built it (template and prompt file applied)."""
        return self.variant["wavs"][self.wavs[i]["name"]]["prompt"]

    def official_wav(self, i: int) -> torch.Tensor:
        """WAV ``i`` as the official SALMONN reads it (see :func:`load_official_wav`)."""
        return load_official_wav(self.path / self.wavs[i]["file"])

    def file_samples(self, i: int) -> np.ndarray:
        """WAV ``i``'s file as float64 ``[frames, channels]``; its ``stereo`` flag is checked against the file."""
        audio, _ = sf.read(self.path / self.wavs[i]["file"], dtype="float64", always_2d=True)
        channels = 2 if self.wavs[i].get("stereo") else 1
        assert audio.shape[1] == channels, f"{self.wavs[i]['file']}: {audio.shape[1]} channels, manifest says stereo={self.wavs[i].get('stereo')}"
        return audio

    def has(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def golden_params():
    """pytest params over golden directories; a single skipped param when there are none."""
    dirs = golden_dirs()
    if not dirs:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no golden fixtures at {SHARED / 'golden'}"))]
    return [pytest.param(Golden(d), id=d.name) for d in dirs]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, atol: float = FLOAT_ATOL):
    actual = actual.detach().cpu()
    assert tuple(actual.shape) == tuple(expected.shape), f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.dtype.is_floating_point:
        diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
        assert diff <= atol, f"{name}: max abs diff {diff:.3g} > {atol}"
    else:
        assert torch.equal(actual.to(expected.dtype), expected), f"{name}: {actual.tolist()} != {expected.tolist()}"


def load_official_wav(path: Path) -> torch.Tensor:
    """Audio as the official SALMONN reads it: float64, channel 0, padded to >= 1 s, cut to 30 s."""
    audio, _ = sf.read(path, dtype="float64")
    if audio.ndim == 2:
        audio = audio[:, 0]
    if len(audio) < 16000:
        audio = np.concatenate([audio, np.zeros(16000 - len(audio))])
    return torch.from_numpy(audio[: 30 * 16000].copy())
