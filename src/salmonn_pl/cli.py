"""``salmonn-pl``: LightningCLI with the subcommands fit / validate / test / predict.

Everything is configured by the typed ``__init__`` arguments of :class:`SalmonnModule` and of the
chosen LightningDataModule (``data.class_path``); YAML recipes live in ``configs/``.
``salmonn-pl test --config configs/sakura_eval.yaml --print_config`` shows the resolved config.
"""

from __future__ import annotations

import logging

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from salmonn_pl.cli_settings import SettingsCheckingParser, exit_on_setting_error
from salmonn_pl.lit_module import SalmonnModule


class SalmonnCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Reports and W&B name the run after its output directory unless told otherwise.
        parser.link_arguments("model.output_dir", "trainer.default_root_dir")
        # The audio the data keeps is the audio the model encodes: set once, as model.model.max_audio_seconds.
        parser.link_arguments("model.model.max_audio_seconds", "data.init_args.max_audio_seconds")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # A bad setting ends the command here, in one line, before anything is built or run.
        subcommand = self.config.get("subcommand")
        exit_on_setting_error((self.config[subcommand] if subcommand else self.config).get("model"))


def build_cli(args: list[str] | None = None, run: bool = True) -> SalmonnCLI:
    """Parse ``args`` (default: the command line), instantiate, and run the subcommand unless ``run=False``."""
    return SalmonnCLI(
        SalmonnModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # The module owns its optimizer recipe (official AdamW + warm-up/cosine), see `optim`.
        auto_configure_optimizers=False,
        args=args,
        run=run,
        parser_class=SettingsCheckingParser,
    )


def main() -> None:
    """Entry point of the ``salmonn-pl`` console script."""
    # What a checkpoint load matched, skipped judges, etc. are INFO messages researchers need to see.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    package_log = logging.getLogger("salmonn_pl")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    build_cli()


if __name__ == "__main__":
    main()
