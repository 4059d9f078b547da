"""``salmonn-pl`` checks the module's settings as soon as the config is parsed, ``--print_config`` included.

The settings dataclasses check their numbers in ``__post_init__``, but jsonargparse builds them only
when it instantiates the run (after ``--print_config`` has printed them) and reports their errors as a
long traceback. Here each setting is built from the parsed config right away, and a bad value ends the
command with one line naming its config key: ``error: model.generation.num_beams must be >= 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from salmonn_pl.settings_check import SettingError


def _dataclass_of(hint: Any, value: Any = None) -> type | None:
    """The dataclass named by ``hint`` (``X``, ``X | None``, or ``X | Y``: the one ``value`` is, by its
    ``class_path`` or its keys), else ``None``."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arms = [arm for arm in typing.get_args(hint) if dataclasses.is_dataclass(arm)]
        if len(arms) > 1 and isinstance(value, Mapping):
            path = str(value.get("class_path") or "")
            keys = set((value.get("init_args") or {}) if path else value)
            for arm in arms:
                if path and path.rsplit(".", 1)[-1] == arm.__name__:
                    return arm
                if not path and keys <= {f.name for f in dataclasses.fields(arm)}:
                    return arm
        return arms[0] if arms else None
    return None


def build_setting(hint: Any, value: Any) -> Any:
    """``value`` from a parsed config as what ``hint`` names: dataclasses (nested ones too) are built,
    which runs their checks; anything else is returned as it is."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    cls = _dataclass_of(hint, value)
    if cls is None or not isinstance(value, Mapping):
        return value
    if "class_path" in value:  # the long form {class_path, init_args}
        value = value.get("init_args") or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{name: build_setting(hints[name], item) for name, item in value.items() if name in fields})


def check_module_settings(model: Namespace | Mapping | None) -> None:
    """Build every settings argument of :class:`~salmonn_pl.lit_module.SalmonnModule` found in the parsed
    ``model`` section and check its other numeric arguments; raises :class:`SettingError`."""
    from salmonn_pl.lit_module import SalmonnModule, check_family_arguments, check_module_arguments

    if model is None:
        return
    values = model.as_dict() if isinstance(model, Namespace) else dict(model)
    hints = typing.get_type_hints(SalmonnModule.__init__)
    built = {}
    for name, value in values.items():
        if name in hints and _dataclass_of(hints[name], value) is not None:
            try:
                built[name] = build_setting(hints[name], value)
            except TypeError:  # a required field still unset (e.g. printing a config template): nothing to check
                pass
    if "model" in built:
        decoder = values.get("decoder")
        path = decoder.get("class_path") if isinstance(decoder, Mapping) else decoder
        check_family_arguments(
            built["model"], values.get("ablation", "none"), values.get("padding_side", "left"),
            values.get("lora_scale", 1.0), values.get("format_forcing"),
            _decoder(decoder, path),
        )
    _build_decoder(values.get("decoder"))
    names = inspect.signature(check_module_arguments).parameters
    check_module_arguments(**{name: value for name, value in values.items() if name in names and value is not None})


def _build_decoder(value: Any) -> None:
    """Build the parsed ``decoder`` ({class_path, init_args}), which checks its settings; cheap, it holds no model."""
    from salmonn_pl.generation.decoder import Decoder

    if not isinstance(value, Mapping) or not isinstance(value.get("class_path"), str):
        return
    module, _, name = value["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module else None
    if isinstance(cls, type) and issubclass(cls, Decoder):
        try:
            cls(**(value.get("init_args") or {}))
        except TypeError:  # an argument still unset (a config template): nothing to check
            pass


def _class(path: str) -> type | None:
    """The class a parsed ``class_path`` names (``None`` when it cannot be imported here)."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _decoder(value: Any, path: Any) -> Any:
    """The parsed ``decoder`` built (its settings are what the family checks read), else its class."""
    cls = _class(path) if isinstance(path, str) else None
    init_args = value.get("init_args") if isinstance(value, Mapping) else None
    try:
        return cls(**dict(init_args or {})) if cls is not None else None
    except (TypeError, ValueError):  # its own checks report a bad value
        return cls


def exit_on_setting_error(model: Namespace | Mapping | None) -> None:
    """:func:`check_module_settings`, ending the command (status 2) with one line naming the config key."""
    try:
        check_module_settings(model)
    except SettingError as error:
        sys.stderr.write(f"error: model.{error}\n")
        raise SystemExit(2) from error


class SettingsCheckingParser(LightningArgumentParser):
    """Checks the ``model`` settings before a config is printed (``--print_config``) or saved."""

    def dump(self, cfg: Namespace, *args: Any, **kwargs: Any) -> str:
        if isinstance(cfg, Namespace) and isinstance(cfg.get("model"), Namespace):
            exit_on_setting_error(cfg["model"])
        return super().dump(cfg, *args, **kwargs)
