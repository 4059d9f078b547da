"""Checks of numeric settings at construction, with messages naming the setting (``data.batch_size``)."""

from __future__ import annotations

import math


def check_number(name: str, value: float, minimum: float, integer: bool = False) -> None:
    """A finite number (an integer when ``integer``) of at least ``minimum``, or a ValueError naming ``name``."""
    kind = "an integer" if integer else "a number"
    is_number = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not is_number or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be {kind} of at least {minimum:g}, got {value!r}")
