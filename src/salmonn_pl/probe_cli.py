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
Trainer settings other than ``accelerator`` are accepted and not used. The probe itself is
:func:`salmonn_pl.probes.run.probe_attention`.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Union

from jsonargparse import ActionConfigFile, ArgumentParser
from lightning import LightningDataModule

from salmonn_pl.cli import configure_messages, take_verbose_flag
from salmonn_pl.lit_module import SalmonnModule
from salmonn_pl.probes.attention import AnswerSource
from salmonn_pl.probes.run import probe_attention


def build_parser() -> ArgumentParser:
    """The probe's command line: a ``salmonn-pl test`` config's sections plus the probe's options."""
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
    args, verbose = take_verbose_flag(sys.argv[1:] if args is None else list(args))
    configure_messages(verbose)
    config = build_parser().parse_args(args)
    path = run_from_config(config)
    # Console scripts pass main()'s return value to sys.exit, so the path is printed, not returned.
    print(f"attention profile written to {path}")


if __name__ == "__main__":
    main()
