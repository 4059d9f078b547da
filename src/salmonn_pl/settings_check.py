"""Checks of numeric settings, run when the settings are built (``__post_init__``) and so when
``salmonn-pl`` parses a config: a bad value fails at once, with one short message naming the setting
(``generation.num_beams must be >= 1, got 0``), instead of deep inside a run or never."""

from __future__ import annotations

import math
from typing import Any


class SettingError(ValueError):
    """A setting has a value outside its allowed range."""


def require(ok: bool, name: str, value: Any, rule: str) -> None:
    """Raise :class:`SettingError` ``"<name> must be <rule>, got <value>"`` unless ``ok``."""
    if not ok:
        raise SettingError(f"{name} must be {rule}, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(value: Any, low: float) -> bool:
    """A finite number ``>= low`` (NaN and infinities fail)."""
    return _number(value) and value >= low


def above(value: Any, low: float) -> bool:
    """A finite number ``> low``."""
    return _number(value) and value > low


def finite(value: Any) -> bool:
    return _number(value)


def check_number(name: str, value: Any, minimum: float, integer: bool = False) -> None:
    """A finite number (an integer when ``integer``) of at least ``minimum``, or :class:`SettingError` naming ``name``."""
    kind = "an integer" if integer else "a number"
    ok = at_least(value, minimum) and (not integer or isinstance(value, int))
    require(ok, name, value, f"{kind} of at least {minimum:g}")
