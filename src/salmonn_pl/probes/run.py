"""``salmonn-pl-probe``: the attention-position probe over a benchmark, written to a folder.

Its config has the layout of a ``salmonn-pl test`` config, so one file serves both: ``model`` is
:class:`~salmonn_pl.lit_module.SalmonnModule`'s section (``model.model`` the SALMONN files,
``model.generation``, ``model.lora_scale``, ``model.output_dir`` where the probe writes), ``data``
a data module, ``trainer.accelerator`` picks the device and ``seed_everything`` the seed; the
probe's own options (``answers``, ``max_batches``, ``device``, ``wandb_*``) are top-level keys::

    salmonn-pl-probe --config configs/attention_probe.yaml
    salmonn-pl-probe --config configs/padding_sweep.yaml --config configs/tiny.yaml --answers reference
    salmonn-pl-probe --config configs/sakura_eval.yaml --data.init_args.limit 20 \\
        --data.init_args.sweep.pad_seconds '[30]' --data.init_args.sweep.pad_position '[early, middle, late]' \\
        --model.output_dir outputs/probe-position

writes ``attention_profile.json`` (per-variant means and one record per question) and the PNG plots
of :mod:`salmonn_pl.probes.plots` into ``model.output_dir``, and logs the plots to W&B when asked.
Trainer settings other than ``accelerator`` are accepted and not used.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Union

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning import LightningDataModule
from rich.progress import track

from salmonn_pl.generation.decode import GenerationSettings
from salmonn_pl.model.llm import set_lora_scale
from salmonn_pl.model.salmonn import Salmonn, SalmonnConfig
from salmonn_pl.probes.attention import AnswerSource, AttentionAggregator, VariantProfile, profile_batch
from salmonn_pl.probes.plots import clip_spans_by_variant, write_plots

PROFILE_FILE = "attention_profile.json"


def probe_attention(
    model: SalmonnConfig,
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
        model: the SALMONN files and architecture options.
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
    salmonn = Salmonn(model).eval().to(target)
    if lora_scale != 1.0:
        set_lora_scale(salmonn.llm, lora_scale)

    data.setup("test")
    loader = data.test_dataloader()
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    aggregator = AttentionAggregator()
    for batch in track(itertools.islice(loader, total), total=total, description="attention probe"):
        aggregator.add(profile_batch(salmonn, batch, answers=answers, generation=generation))

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "answers": answers,
        "generation": asdict(generation or GenerationSettings()) if answers == "generated" else None,
        "lora_scale": lora_scale,
        "model": asdict(model),
        "qformer_kernel_frames": salmonn.connector.kernel,
        "qformer_stride_frames": salmonn.connector.stride,
        "num_query_tokens": salmonn.connector.num_query_tokens,
    }
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


def build_parser() -> ArgumentParser:
    """The probe's command line: a ``salmonn-pl test`` config's sections plus the probe's options."""
    from salmonn_pl.lit_module import SalmonnModule

    parser = ArgumentParser(prog="salmonn-pl-probe", description=(
        "salmonn-pl-probe: where does a SALMONN model listen? Attention of the answer tokens to each second "
        "of audio, per layer and variant. Reads the same config files as `salmonn-pl test`."))
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a salmonn-pl config file (YAML)")
    parser.add_class_arguments(SalmonnModule, "model")
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    parser.add_argument("--seed_everything", type=Union[bool, int], default=0, help="torch seed (sampled answers)")
    parser.add_argument("--trainer", type=Optional[dict], default=None,
                        help="a salmonn-pl trainer section; only trainer.accelerator (cpu / gpu / auto) is read")
    parser.add_argument("--answers", type=AnswerSource, default="generated",
                        help="generated: teacher-force the model's own answer; reference: the golden one")
    parser.add_argument("--max_batches", type=Optional[int], default=None, help="stop after this many batches")
    parser.add_argument("--device", type=Optional[str], default=None,
                        help="cpu, cuda, cuda:1, ... (default: from trainer.accelerator, else CUDA when available)")
    parser.add_argument("--wandb_project", type=Optional[str], default=None, help="log plots and a table to W&B")
    parser.add_argument("--wandb_online", type=bool, default=False, help="sync to W&B right away")
    parser.add_argument("--run_name", type=str, default="", help="W&B run name (default: the output directory's name)")
    return parser


ACCELERATOR_DEVICES = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "auto": "auto"}


def run_from_config(config: Any) -> Path:
    """Instantiate a parsed probe config and run the probe."""
    device = config.device
    if device is None:
        accelerator = str((config.trainer or {}).get("accelerator") or "auto")
        device = ACCELERATOR_DEVICES.get(accelerator, accelerator)
    seed = config.seed_everything
    parser = build_parser()
    objects = parser.instantiate_classes(config)
    module = objects.model
    return probe_attention(
        module.model_config, objects.data, output_dir=str(module.output_dir), answers=config.answers,
        generation=module.generation, lora_scale=module.lora_scale, max_batches=config.max_batches,
        device=device, seed=0 if seed is True or seed is False else int(seed),
        wandb_project=config.wandb_project, wandb_online=config.wandb_online, run_name=config.run_name,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``salmonn-pl-probe`` console script."""
    from salmonn_pl.cli import configure_messages, take_verbose_flag

    args, verbose = take_verbose_flag(sys.argv[1:] if args is None else list(args))
    configure_messages(verbose)
    config = build_parser().parse_args(args)
    path = run_from_config(config)
    # Console scripts pass main()'s return value to sys.exit, so the path is printed, not returned.
    print(f"attention profile written to {path}")


if __name__ == "__main__":
    main()
