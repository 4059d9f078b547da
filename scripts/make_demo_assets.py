"""Regenerate the bundled demo assets: a tiny SALMONN, a tiny random Qwen2-Audio and a small
synthetic SAKURA-layout set.

    python scripts/make_demo_assets.py   # writes assets/tiny-salmonn, assets/tiny-qwen2-audio, assets/demo-sakura

Both are deterministic given the seed; the committed copies are what ``configs/demo.yaml`` uses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jsonargparse import CLI

from salmonn_pl.data.synthetic import write_synthetic_task
from salmonn_pl.model.qwen2_audio_tiny import write_tiny_qwen2_audio
from salmonn_pl.model.tiny import write_tiny_salmonn

ROOT = Path(__file__).resolve().parents[1]


def main(out_dir: Path = ROOT / "assets", seed: int = 0, n_test: int = 12, pretrain_steps: int = 600) -> None:
    """Write ``tiny-salmonn/`` (LLM pretrained on question/answer text for ``pretrain_steps``),
    ``tiny-qwen2-audio/`` (random weights) and ``demo-sakura/``."""
    for name in ("tiny-salmonn", "tiny-qwen2-audio", "demo-sakura"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    write_tiny_salmonn(out_dir / "tiny-salmonn", seed=seed, pretrain_steps=pretrain_steps)
    write_tiny_qwen2_audio(out_dir / "tiny-qwen2-audio", seed=seed)
    task = out_dir / "demo-sakura"
    write_synthetic_task(task, n_train=0, n_val=0, n_test=n_test, seed=seed)
    # The demo evaluates the SAKURA-layout test split only.
    for leftover in ("train.json", "val.json", "prompts.json", "audio"):
        path = task / leftover
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


if __name__ == "__main__":
    CLI(main)
