"""Discovery and loading of golden fixture directories (official-SALMONN reference tensors).

Golden directories are every subdirectory of ``../shared/golden/`` next to the repository plus every
directory listed in ``SALMONN_PL_GOLDEN`` (``:``-separated). Each holds a ``manifest.json`` and an
``expected.safetensors``; see ``../shared/README.md``.
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
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
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
