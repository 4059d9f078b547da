"""JSON values that stay strict: non-finite floats become ``None`` (``null``), at any depth.

Below every package (result files, option scores and run fingerprints all use it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value
