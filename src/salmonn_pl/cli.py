"""``salmonn-pl``: LightningCLI with the subcommands fit / validate / test / predict.

Everything is configured by the typed ``__init__`` arguments of :class:`SalmonnModule` and of the
chosen LightningDataModule (``data.class_path``); YAML recipes live in ``configs/``.
``salmonn-pl test --config configs/sakura_eval.yaml --print_config`` shows the resolved config.

A run lives in one directory, ``model.output_dir``: predictions, metrics, report and plots, the
resolved ``config.yaml``, the logger's files (``wandb/``, CSV logs) and checkpoints whose
``ModelCheckpoint`` has no ``dirpath`` of its own. The CLI points the logger's ``save_dir`` and the
trainer's ``default_root_dir`` there, so ``--model.output_dir X`` moves all of it.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import argparse

import yaml
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

# Imported so that their classes are known subclasses: `--model.judge LLMJudge` resolves the short name.
import salmonn_pl.eval.judge_llm  # noqa: F401
import salmonn_pl.eval.judge_rule  # noqa: F401
from salmonn_pl.callbacks import QuestionProgressBar
from salmonn_pl.cli_settings import SettingsCheckingParser, exit_on_setting_error
from salmonn_pl.lit_module import SalmonnModule

log = logging.getLogger(__name__)

DESCRIPTION = """\
salmonn-pl: evaluate, fine-tune and probe SALMONN-style audio LLMs on the SAKURA benchmark.

  salmonn-pl test --config configs/demo.yaml              evaluate (answers, judge, report.md, W&B)
  salmonn-pl fit  --config configs/synthetic_fit.yaml     fine-tune (LoRA, Q-Former, projection)
  salmonn-pl test --config configs/padding_sweep.yaml --config configs/tiny.yaml
                                                          any recipe on CPU with the bundled tiny model

Companion tools: salmonn-pl-eval {rejudge,compare,report} (work on finished runs) and
salmonn-pl-probe (attention-position probe). Add --verbose to see third-party messages.
"""



class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the description's lines (the command examples) as written."""


# ---------------------------------------------------------------------------------------------
# Errors that say what is wrong first


def _suggestion(message: str, parser: Any) -> str:
    """``did you mean --model.output_dir?`` for an unknown option or config key close to a valid one."""
    unknown = re.findall(r"--[\w.\-]+", message.split("unrecognized arguments:", 1)[1]) \
        if "unrecognized arguments:" in message else []
    unknown += [f"--{key}" for key in re.findall(r'[Kk]ey "([\w.\-]+)" is not expected', message)]
    unknown += [f"--{key}" for key in re.findall(r"Subcommand '[\w\-]+' does not accept option '([\w.\-]+)'", message)]
    unknown += [f"--{group}.{key}" for group, key in
                re.findall(r"Group '([\w.\-]+)' does not accept option '([\w.\-]+)'", message)]
    if not unknown:
        return ""
    valid = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
    valid |= family_options()
    # A subcommand's options live in its own parser.
    for action in parser._actions:
        for sub in (getattr(action, "choices", None) or {}).values() if isinstance(getattr(action, "choices", None), dict) else ():
            valid |= {option for a in getattr(sub, "_actions", []) for option in a.option_strings if option.startswith("--")}
    hints = []
    for option in unknown:
        close = difflib.get_close_matches(option, sorted(valid), n=1, cutoff=0.75)
        if close:
            hints.append(f"{option.removeprefix('--')}: did you mean {close[0].removeprefix('--')}?")
    return "\n".join(hints)


def family_options() -> set[str]:
    """``--model.model.<field>`` of every family's config (jsonargparse lists no options for a union)."""
    import dataclasses
    import typing

    hint = typing.get_type_hints(SalmonnModule.__init__)["model"]
    return {f"--model.model.{field.name}" for arm in typing.get_args(hint) if dataclasses.is_dataclass(arm)
            for field in dataclasses.fields(arm)}


def one_family_error(message: str) -> str:
    """``model.model`` takes either family's config, so jsonargparse reports a bad key or value there
    once per family ("Does not validate against any of the Union subtypes"). Keep the report of the
    family the config is written for: a bad value where one family accepts the key, else the first
    family's unknown key, named by its full config key."""
    union = re.match(r'Parser key "([\w.\-]+)":', message.strip())
    if not union or "Does not validate against any of the Union subtypes" not in message:
        return message
    prefix = union.group(1)
    problems = re.split(r"\n\s*- Problem with given class_path '[\w.]+':\n", message)[1:]
    problems = [re.split(r"\n\s*- |\n\s*Given value", p)[0] for p in problems]
    values = [p for p in problems if re.search(r'Parser key "[\w.\-]+":', p)]
    if values:
        key = re.search(r'Parser key "([\w.\-]+)":', values[0]).group(1)
        detail = " ".join(line.strip() for line in values[0].split("\n")[1:])
        return f"{prefix}.{key}: {detail}"
    unknown = [re.search(r"Option '([\w.\-]+)' is not accepted", p) for p in problems]
    unknown = [m.group(1) for m in unknown if m]
    if unknown:
        return f'Key "{prefix}.{unknown[0]}" is not expected'
    return message


class SalmonnArgumentParser(SettingsCheckingParser):
    """Puts the error (the key, the value, what is allowed, the closest valid key for a typo) on the
    first lines and a one-line pointer to ``--help`` instead of the hundred-line usage dump."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        message = one_family_error(message)
        lines = [f"error: {message.strip()}"]
        hint = _suggestion(message, parser)
        if hint:
            lines.append(hint)
        prog = parser.prog.replace(" [options]", "")
        lines.append(f"(all options: {prog} --help)")
        sys.stderr.write("\n".join(lines) + "\n")
        self.exit(2)


# ---------------------------------------------------------------------------------------------
# One directory per run


class SaveConfigToOutputDir(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` to the run's ``model.output_dir`` (Lightning's default, the
    logger's directory, differs between loggers and would put two runs with one logger setting in
    one place)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        output_dir = Path(getattr(pl_module, "output_dir", trainer.default_root_dir))
        if trainer.is_global_zero:
            output_dir.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(output_dir / self.config_filename), skip_none=False,
                             overwrite=True, multifile=self.multifile)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


def _class_name(spec: Any) -> str:
    return str(getattr(spec, "class_path", "") or "").rsplit(".", 1)[-1]


def place_run_in_output_dir(config: Namespace) -> None:
    """Point every logger's ``save_dir`` and every ``ModelCheckpoint`` without a ``dirpath`` at
    ``model.output_dir``: one setting decides where a run lives."""
    output_dir = config.get("model.output_dir")
    if not output_dir:
        return
    loggers = config.get("trainer.logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "save_dir" in init_args:
            init_args.save_dir = str(output_dir)
    for callback in config.get("trainer.callbacks") or []:
        init_args = getattr(callback, "init_args", None)
        if _class_name(callback) == "ModelCheckpoint" and init_args is not None and not init_args.get("dirpath"):
            init_args.dirpath = str(Path(output_dir) / "checkpoints")


# ---------------------------------------------------------------------------------------------
# CPU runs


HALF_PRECISION = ("float16", "bfloat16")


def cpu_warnings(config: Namespace, cuda_available: bool, cpu_count: int | None) -> list[str]:
    """What would make a CPU run slow or fail; the settings are the user's and are kept as they are."""
    accelerator = str(config.get("trainer.accelerator") or "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda_available)
    if not on_cpu:
        return []
    messages = []
    llm_dtype = config.get("model.model.llm_dtype")
    autocast = config.get("model.model.autocast_dtype")
    half = [f"model.model.{key}={value}" for key, value in (("llm_dtype", llm_dtype), ("autocast_dtype", autocast))
            if value in HALF_PRECISION]
    if half:
        messages.append(
            f"running on CPU with {', '.join(half)}: half precision is slow on CPUs (and answers differ from float32). "
            "For CPU runs use --model.model.llm_dtype float32 --model.model.autocast_dtype none, "
            "or add --config configs/tiny.yaml for the bundled tiny model.")
    workers = config.get("data.init_args.num_workers")
    if isinstance(workers, int) and cpu_count and workers > cpu_count:
        messages.append(f"data.init_args.num_workers={workers} is more than this machine's {cpu_count} CPU cores; "
                        f"--data.init_args.num_workers {max(0, cpu_count - 1)} avoids the contention.")
    return messages


def max_audio_seconds(model: Any) -> float:
    """``model.model.max_audio_seconds`` of whichever family's config ``model.model`` holds (a dataclass,
    or its parsed form: a mapping, possibly ``{class_path, init_args}``)."""
    if hasattr(model, "max_audio_seconds"):
        return model.max_audio_seconds
    values = model.as_dict() if isinstance(model, Namespace) else dict(model or {})
    values = values.get("init_args", values)
    return values.get("max_audio_seconds", 30.0)


FAMILY_FIELD = "--model.model."
# Options that act while parsing (print, help); left out of the first pass of merge_family_overrides.
_ACTING = ("--print_config", "--help", "-h")


def merge_family_overrides(parser: Any, args: list[str]) -> list[str]:
    """``--model.model.<field> value`` given on the command line, as one ``--model.model`` value.

    ``model.model`` takes either family's config (a union of dataclasses), and jsonargparse merges a
    command-line field into the config file's value only for the union's first family: for any other
    it would start from that family's defaults and drop the file's other fields. So the arguments
    are parsed once without these fields, the fields are set on the family config found there, and
    the whole config is passed on as the last ``--model.model`` argument.
    """
    fields, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(FAMILY_FIELD) and not arg.startswith(FAMILY_FIELD + "help"):
            key, has_value, value = arg[len(FAMILY_FIELD):].partition("=")
            if not has_value:
                i += 1
                value = args[i] if i < len(args) else ""
            fields.append((key.removeprefix("init_args."), value))
        else:
            rest.append(arg)
        i += 1
    if not fields:
        return args
    first_pass = [a for a in rest if not a.split("=")[0] in _ACTING]
    config = parser.parse_args(first_pass, _skip_validation=True)  # the real parse checks everything
    subcommand = config.get("subcommand")
    section = config[subcommand] if subcommand else config
    family = section.get("model.model")
    if not isinstance(family, Namespace):
        return args  # no family config to merge into: jsonargparse reports what is wrong
    if "class_path" in family:
        class_path, init_args = family["class_path"], family["init_args"].as_dict()
    else:  # given as fields: the family whose fields they are
        import typing

        from salmonn_pl.cli_settings import _dataclass_of

        init_args = family.as_dict()
        arm = _dataclass_of(typing.get_type_hints(SalmonnModule.__init__)["model"], init_args)
        class_path = f"{arm.__module__}.{arm.__qualname__}"
    for key, value in fields:
        target = init_args
        *parents, leaf = key.split(".")
        for parent in parents:
            if not isinstance(target.get(parent), dict):  # unset (null) settings group: its defaults apply
                target[parent] = {}
            target = target[parent]
        target[leaf] = yaml.safe_load(value) if value else value
    merged = json.dumps({"class_path": class_path, "init_args": init_args})
    return rest + [FAMILY_FIELD.rstrip("."), merged]


class SalmonnCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Reports and W&B name the run after its output directory unless told otherwise.
        parser.link_arguments("model.output_dir", "trainer.default_root_dir")
        # The audio the data keeps is the audio the model encodes: set once, as model.model.max_audio_seconds.
        parser.link_arguments("model.model", "data.init_args.max_audio_seconds", compute_fn=max_audio_seconds)

    def parse_arguments(self, parser, args) -> None:
        if args is None or isinstance(args, list):
            args = merge_family_overrides(parser, list(sys.argv[1:] if args is None else args))
        super().parse_arguments(parser, args)
        # A bad setting ends the command here, in one line, before anything is built or run.
        subcommand = self.config.get("subcommand")
        exit_on_setting_error((self.config[subcommand] if subcommand else self.config).get("model"))

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        place_run_in_output_dir(config)
        import torch

        for message in cpu_warnings(config, torch.cuda.is_available(), os.cpu_count()):
            log.warning(message)


    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        # QuestionProgressBar prints the accuracy per variant x track-hop at the end of a test;
        # Lightning's list of metric names (cut short in 80 columns) would repeat it.
        bar = getattr(self.trainer, "progress_bar_callback", None)
        if subcommand == "test" and isinstance(bar, QuestionProgressBar) and bar.print_accuracy:
            kwargs["verbose"] = False
        return kwargs


def build_cli(args: list[str] | None = None, run: bool = True) -> SalmonnCLI:
    """Parse ``args`` (default: the command line), instantiate, and run the subcommand unless ``run=False``."""
    return SalmonnCLI(
        SalmonnModule,
        LightningDataModule,
        subclass_mode_data=True,
        parser_class=SalmonnArgumentParser,
        parser_kwargs={"description": DESCRIPTION, "formatter_class": _HelpFormatter},
        save_config_callback=SaveConfigToOutputDir,
        save_config_kwargs={"overwrite": True},
        # The module owns its optimizer recipe (official AdamW + warm-up/cosine), see `optim`.
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


# ---------------------------------------------------------------------------------------------
# Quiet by default


# Messages of other libraries that a user of salmonn-pl cannot act on (regexes on the message start).
QUIET_WARNINGS = (
    r".*is deprecated",  # deprecations inside transformers / lightning / torch
    r".*will be removed in",
    r"LightningCLI's args parameter",
    r"Found \d+ module\(s\) in eval mode",  # the frozen encoders are in eval mode on purpose
    r"The '\w+_dataloader' does not have many workers",
    r"`isinstance\(treespec, LeafSpec\)`",
    r".*Checkpoint directory .* exists and is not empty",
    r"The number of training batches .* is smaller than the logging interval",
)
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning", "transformers",
                 "wandb", "httpx", "huggingface_hub")


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which test runners and notebooks replace)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_messages(verbose: bool) -> None:
    """Show the project's own messages; silence third-party notices unless ``verbose``."""
    package_log = logging.getLogger("salmonn_pl")
    if not any(getattr(h, "salmonn_pl_console", False) for h in package_log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        handler.salmonn_pl_console = True
        package_log.addHandler(handler)
    # What a checkpoint load matched, skipped judges, etc. are INFO messages researchers need to see.
    package_log.setLevel(logging.INFO)
    if verbose:
        return
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # Third-party warnings the user cannot act on; the project's own (salmonn_pl.*) stay visible.
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!salmonn_pl)")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # W&B prints its notices (anonymous setting, git root, sync hints) unless told to be silent.
    os.environ.setdefault("WANDB_SILENT", "true")
    # transformers' weight-loading progress bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def take_verbose_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Remove a bare ``--verbose`` (the project's flag) from ``argv``. ``--verbose true|false`` with a
    value is Lightning's ``test --verbose`` (print the metrics table) and is left alone."""
    out, verbose = [], False
    for i, arg in enumerate(argv):
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if arg == "--verbose" and following not in ("true", "false"):
            verbose = True
            continue
        out.append(arg)
    return out, verbose or os.environ.get("SALMONN_PL_VERBOSE", "") not in ("", "0")


def main() -> None:
    """Entry point of the ``salmonn-pl`` console script."""
    args, verbose = take_verbose_flag(sys.argv[1:])
    configure_messages(verbose)
    build_cli(args)


if __name__ == "__main__":
    main()
