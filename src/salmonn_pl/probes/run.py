"""The attention-position probe over a benchmark, written to a folder: ``attention_profile.json``
(per-variant means and one record per question) and the PNG plots of :mod:`salmonn_pl.probes.plots`,
and the plots logged to W&B when asked. Its command line is ``salmonn-pl-probe``
(:mod:`salmonn_pl.probe_cli`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.progress import track

from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.model.llm import set_lora_scale
from salmonn_pl.model.family import family_of, is_family_config
from salmonn_pl.model.qwen2_audio import Qwen2AudioConfig
from salmonn_pl.model.salmonn import Salmonn, SalmonnConfig
from salmonn_pl.probes.attention import (
    AnswerSource,
    AttentionAggregator,
    VariantProfile,
    profile_batch,
    profile_family_batch,
)
from salmonn_pl.probes.plots import clip_spans_by_variant, write_plots

PROFILE_FILE = "attention_profile.json"


def probe_attention(
    model: SalmonnConfig | Qwen2AudioConfig,
    data: LightningDataModule,
    output_dir: str = "outputs/attention_probe",
    answers: AnswerSource = "generated",
    generation: GenerationSettings | None = None,
    lora_scale: float = 1.0,
    max_batches: int | None = None,
    device: str = "auto",
    seed: int = 0,
    wandb_project: str | None = None,
    wandb_online: bool = False,
    run_name: str = "",
) -> Path:
    """Run the attention-position probe over ``data``'s test dataloader; returns the JSON path.

    Args:
        model: the SALMONN files and architecture options, or another family's (``Qwen2AudioConfig``).
        data: a data module serving collated speech batches (e.g. ``SakuraDataModule`` with its
            study variants); variants are told apart by ``meta["variant"]``.
        output_dir: where ``attention_profile.json`` and the plots go.
        answers: ``generated`` teacher-forces the model's own answer, ``reference`` the golden one.
        generation: decoding settings for ``answers="generated"`` (default: the official ones).
        lora_scale: multiplier of the trained LoRA scaling (activation tuning).
        max_batches: stop after this many batches (None: the whole dataloader).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        seed: torch seed, for sampled answers.
        wandb_project: log the plots and a per-variant table to this W&B project.
        wandb_online: sync to W&B right away (default: an offline run for ``wandb sync``).
        run_name: W&B run name (default: the output directory's name).
    """
    torch.manual_seed(seed)
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    family = is_family_config(model)
    if family:
        if lora_scale != 1.0:
            raise ValueError(f"lora_scale is a SALMONN setting, not available with {model.model_class.family}")
        salmonn = model.build().eval().to(target)
    else:
        salmonn = Salmonn(model).eval().to(target)
        if lora_scale != 1.0:
            set_lora_scale(salmonn.llm, lora_scale)
    profile = profile_family_batch if family else profile_batch

    data.setup("test")
    loader = data.test_dataloader()
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    aggregator = AttentionAggregator()
    for batch in track(itertools.islice(loader, total), total=total, description="attention probe"):
        aggregator.add(profile(salmonn, batch, answers=answers, generation=generation))

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "answers": answers,
        "generation": asdict(generation or GenerationSettings()) if answers == "generated" else None,
        "lora_scale": lora_scale,
        "model": asdict(model),
        "model_family": family_of(model),
    }
    if not family:
        settings |= {"qformer_kernel_frames": salmonn.connector.kernel, "qformer_stride_frames": salmonn.connector.stride,
                     "num_query_tokens": salmonn.connector.num_query_tokens}
    path = out / PROFILE_FILE
    path.write_text(json.dumps(aggregator.report(settings), indent=1), encoding="utf-8")
    variants = aggregator.variants()
    plots = write_plots(variants, out, clip_spans_by_variant(aggregator.records))

    if wandb_project:
        import wandb

        run = wandb.init(project=wandb_project, name=run_name or out.name, dir=str(out), config=settings,
                         mode="online" if wandb_online else "offline")
        log_to_wandb(run, variants, plots)
        run.finish()
    return path


SUMMARY_COLUMNS = (
    "variant", "questions", "answered", "answer_audio_mass", "answer_clip_share", "answer_padding_share",
    "answer_beyond_audio_share", "last_prompt_audio_mass", "qformer_first_frame", "qformer_last_frame",
)


def summary_rows(variants: Mapping[str, VariantProfile]) -> list[list[Any]]:
    """One row per variant: how much the answer looks at the audio and at which region of it."""
    rows = []
    for name, variant in variants.items():
        answer = variant.regions.get("answer", {})
        frames = variant.frame_profile_in_audio if variant.frame_profile_in_audio is not None else variant.frame_profile
        first_frame, last_frame = (float(frames[0]), float(frames[-1])) if frames is not None else (None, None)
        rows.append([
            name,
            variant.questions,
            variant.answered,
            float(variant.answer_mass.mean(0).sum()),
            answer.get("clip", {}).get("share"),
            answer.get("padding", {}).get("share"),
            answer.get("beyond_audio", {}).get("share"),
            float(variant.prompt_mass.mean(0).sum()),
            first_frame,
            last_frame,
        ])
    return rows


def log_to_wandb(experiment: Any, variants: Mapping[str, VariantProfile], plots: Mapping[str, Path],
                 prefix: str = "probe") -> None:
    """Log the plots and the per-variant summary table to a W&B run (or anything with ``.log``)."""
    import wandb

    payload: dict[str, Any] = {f"{prefix}/plots/{name}": wandb.Image(str(path)) for name, path in plots.items()}
    payload[f"{prefix}/attention_by_variant"] = wandb.Table(columns=list(SUMMARY_COLUMNS), data=summary_rows(variants))
    experiment.log(payload)
