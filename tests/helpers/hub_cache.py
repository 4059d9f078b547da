"""A Hugging Face cache laid out by hand, so that weights "by hub name" are tested offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> None:
    """Put ``files`` (name in repo -> local file) into ``cache`` the way huggingface_hub lays out a
    download: ``models--org--name/snapshots/<commit>/...`` and ``refs/main`` naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, snapshot / name)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def dir_files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty huggingface_hub home for this process (the constants huggingface_hub reads at call time)."""
    home = tmp_path / "hf-home"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(home / "assets"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return home
