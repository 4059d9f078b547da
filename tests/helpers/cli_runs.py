"""``salmonn-pl test`` runs of the tiny SALMONN on the bundled SAKURA-layout demo data.

Each run is configured by a YAML file and started through the CLI, exactly as a user runs it, so
what the tests show holds for ``salmonn-pl test --config ...``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from salmonn_pl.model.tiny import tiny_qformer_settings

REPO = Path(__file__).resolve().parents[2]
DEMO_SAKURA = REPO / "assets" / "demo-sakura"


def write_config(
    path: Path,
    tiny_files: dict[str, Path],
    output_dir: Path,
    batch_size: int = 4,
    limit: int | None = 3,
    hops: tuple[str, ...] = ("single", "multi"),
    padding_side: str = "left",
    max_new_tokens: int = 6,
    callbacks: list[dict[str, Any]] | None = None,
    progress_bar: bool = False,
) -> Path:
    """A ``salmonn-pl test`` config: the tiny model in fp32 with greedy decoding on ``limit`` clips
    per hop of the demo data (prompts of different lengths). Returns ``path``."""
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_model_summary": False,
                    "enable_progress_bar": progress_bar, "callbacks": callbacks or []},
        "model": {
            "model": {**{k: str(v) for k, v in tiny_files.items()}, "qformer": asdict(tiny_qformer_settings()),
                      "llm_dtype": "float32"},
            "generation": {"num_beams": 1, "max_new_tokens": max_new_tokens},
            "padding_side": padding_side,
            "output_dir": str(output_dir),
            # One name for every run, so metrics.json of different output directories compare equal.
            "run_name": "tiny",
        },
        "data": {
            "class_path": "salmonn_pl.data.datamodule.SakuraDataModule",
            "init_args": {"root": str(DEMO_SAKURA), "tracks": ["Synthetic"], "hops": list(hops), "limit": limit,
                          "batch_size": batch_size},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_test(config: Path, *overrides: str):
    """``salmonn-pl test --config config [overrides]`` in this process; returns the CLI."""
    from salmonn_pl.cli import build_cli

    return build_cli(["test", "--config", str(config), *overrides])


def cli_command(config: Path, *overrides: str) -> list[str]:
    """The same run as a separate process (what a user types, with this interpreter)."""
    return [sys.executable, "-m", "salmonn_pl.cli", "test", "--config", str(config), *overrides]


def subprocess_env() -> dict[str, str]:
    # One thread per process: the DDP ranks share the machine's cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}


def run_subprocess(config: Path, *overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(cli_command(config, *overrides), env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"salmonn-pl test failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def prediction_lines(output_dir: Path) -> list[dict]:
    """Every record line of ``predictions.jsonl`` (duplicates kept, so tests can look for them)."""
    path = output_dir / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def responses(output_dir: Path) -> dict[tuple[str, str], str]:
    """``{(id, variant): response}`` of a finished run."""
    return {(r["id"], r["variant"]): r["response"] for r in prediction_lines(output_dir)}


def metrics(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "metrics.json").read_text())


class FailAfterBatches(L.Callback):
    """Raises after ``batches`` test batches: a crash in the middle of a run."""

    def __init__(self, batches: int = 1) -> None:
        self.batches = batches

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx + 1 >= self.batches:
            raise RuntimeError(f"injected failure after {self.batches} test batches")


class NaNAudioTokens(L.Callback):
    """Makes the audio tokens of one clip (``file``) NaN: the model's output is NaN for that clip's
    questions only, as when a broken input or layer poisons one row."""

    def __init__(self, file: str) -> None:
        self.file = file

    def on_test_start(self, trainer, pl_module) -> None:
        encode, file = pl_module.encode, self.file

        def encode_with_nan(batch, ablation=None):
            tokens = encode(batch, ablation).clone()  # never poison the tokens carried to the next batch
            rows = [i for i, meta in enumerate(batch["meta"]) if meta["file"] == file]
            tokens[rows] = float("nan")
            return tokens

        pl_module.encode = encode_with_nan


class NaNWeights(L.Callback):
    """Sets the LLM's input embeddings to NaN: a model whose every output is NaN."""

    def on_test_start(self, trainer, pl_module) -> None:
        pl_module.salmonn.llm.get_input_embeddings().weight.data.fill_(float("nan"))


def strict_prediction_lines(output_dir: Path) -> list[dict]:
    """Like :func:`prediction_lines`, failing on anything that is not strict JSON (bare NaN/Infinity)."""

    def reject(constant: str):
        raise AssertionError(f"predictions.jsonl holds a bare {constant}")

    path = output_dir / "predictions.jsonl"
    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines() if line.strip()]
