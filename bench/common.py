"""What every benchmark under ``bench/`` shares: timing, the machine/version header, markdown output.

Conventions (also stated at the top of ``bench/RESULTS.md``):

* every timed call is warmed up first and then repeated, in turns with the calls it is compared
  with; a figure is the *best* of the repeats,
  because on a shared machine the fastest run is the one least disturbed by other processes
  (the median is kept next to it to show how noisy the run was);
* figures that are compared with each other (ratios) come from one run of one script;
* each script prints one markdown section and, with ``--results bench/RESULTS.md``, replaces its
  ``## <name>`` section there, headed by the exact command and the machine it ran on.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

VERSIONED_PACKAGES = ("torch", "transformers", "numpy", "soundfile", "soxr", "lightning")


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each repeat of one measured call."""

    seconds: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_it(fn: Callable[[], object], warmup: int = 1, repeats: int = 3) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed."""
    return time_interleaved({"fn": fn}, warmup, repeats)["fn"]


def time_interleaved(fns: Mapping[str, Callable[[], object]], warmup: int = 1, repeats: int = 3) -> dict[str, Timing]:
    """Time several calls in turns (a, b, c, a, b, c, ...), so that a change in machine load hits them alike.

    Figures that are divided by each other should be measured this way.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(values)) for name, values in seconds.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """Short commit of the repository, with ``+changes`` when the working tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+changes" if changed else commit


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def command_line() -> str:
    """The command that is running, as it would be typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_text = str(script)
    return shlex.join(["python", script_text, *sys.argv[1:]])


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy a shared machine was."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine_header(command: str | None = None, load_at_start: str | None = None) -> str:
    """Markdown lines naming the command, date, commit, machine and package versions.

    ``load_at_start`` is :func:`load_average` taken when the measurements began (default: now).
    """
    load = load_at_start or load_average()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    versions = ", ".join(f"{name} {version}" for name, version in package_versions().items())
    lines = [
        f"- command: `{command or command_line()}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {git_revision()}",
        f"- machine: {cpu_model()}, nproc {os.cpu_count()}, GPU {gpu}, load average at start {load}",
        f"- versions: {versions}",
    ]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed with at most 3 significant decimals."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row {list(row)} has {len(row)} cells for {len(headers)} headers")
    cells = [[_cell(value) for value in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_section(results: Path, name: str, body: str) -> None:
    """Replace the ``## name`` section of ``results`` with ``body`` (appended when absent).

    A section runs from its heading to the next ``## `` heading, so other benchmarks' sections and
    the file's introduction are kept as they are.
    """
    text = results.read_text(encoding="utf-8") if results.is_file() else ""
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}[ \t]*\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    results.write_text(text, encoding="utf-8")


def beats_cfg(**overrides: object) -> dict:
    """The cfg stored in BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt."""
    cfg = dict(
        input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
        encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu",
        layer_wise_gradient_decay_ratio=0.6, layer_norm_first=False, deep_norm=True, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.05, dropout_input=0.0, conv_pos=128,
        conv_pos_groups=16, relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True,
        finetuned_model=True, predictor_dropout=0.0, predictor_class=527,
    )
    return {**cfg, **overrides}
