"""``salmonn-pl fit`` runs of the tiny SALMONN on a tiny synthetic multiple-choice task.

Runs are configured by YAML and started through the CLI (in this process, or as a separate process
for DDP), so what the tests show holds for ``salmonn-pl fit --config ...``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from salmonn_pl.data.annotation_datamodule import AnnotationDataModule
from salmonn_pl.data.synthetic import SyntheticTaskPaths
from salmonn_pl.model.tiny import tiny_qformer_settings

REPO = Path(__file__).resolve().parents[2]


class RecordTraining(L.Callback):
    """Writes each rank's trainable weights and the ids of the examples it trained on to ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.ids: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ids += list(batch["id"])

    def on_train_end(self, trainer, pl_module) -> None:
        from salmonn_pl.model.checkpoint import trainable_state_dict

        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": trainable_state_dict(pl_module.salmonn), "ids": self.ids},
                   self.out_dir / f"rank{trainer.global_rank}.pt")


class PoisonLoraAfterStep(L.Callback):
    """Puts a NaN into the first LoRA weight once ``step`` optimiser steps are done (a diverged update)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            weight = next(p for n, p in pl_module.salmonn.named_parameters() if "lora_A" in n)
            with torch.no_grad():
                weight.view(-1)[0] = float("nan")


def write_fit_config(
    path: Path,
    tiny_files: dict[str, Path],
    task: SyntheticTaskPaths,
    output_dir: Path,
    max_steps: int,
    objectives: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    callbacks: list[dict[str, Any]] | None = None,
    batch_size: int = 2,
) -> Path:
    """A ``salmonn-pl fit`` config: the tiny model in fp32, a high learning rate with a short warm-up,
    option shuffling, validation every 2 steps. Returns ``path``."""
    datamodule = AnnotationDataModule
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "logger": False,
                    "enable_model_summary": False, "enable_progress_bar": False, "val_check_interval": 2,
                    "gradient_clip_val": 1.0, "callbacks": callbacks or [], **(trainer or {})},
        "model": {
            "model": {**{k: str(v) for k, v in tiny_files.items()}, "qformer": asdict(tiny_qformer_settings()),
                      "llm_dtype": "float32"},
            "objectives": objectives or {},
            "optim": {"lr": 1e-2, "min_lr": 1e-3, "warmup_start_lr": 1e-3, "warmup_steps": 2},
            "output_dir": str(output_dir),
        },
        "data": {
            "class_path": f"{datamodule.__module__}.{datamodule.__name__}",
            "init_args": {"train_annotation": str(task.train_annotation), "val_annotation": str(task.val_annotation),
                          "prompt_path": str(task.prompt_path), "audio_root": str(task.root),
                          "batch_size": batch_size, "shuffle_options": True},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def checkpoint_callback(dirpath: Path, every_n_train_steps: int) -> dict[str, Any]:
    return {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(dirpath), "every_n_train_steps": every_n_train_steps, "save_top_k": -1,
                          "filename": "{step}"}}


def run_fit(config: Path, *overrides: str):
    """``salmonn-pl fit --config config [overrides]`` in this process; returns the CLI."""
    from salmonn_pl.cli import build_cli

    return build_cli(["fit", "--config", str(config), *overrides])


def run_fit_subprocess(config: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The same run as a separate process (what a user types), with ``tests.helpers`` importable for the callbacks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "salmonn_pl.cli", "fit", "--config", str(config), *overrides]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"salmonn-pl fit failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    return done
