"""Turning report values (numpy scalars, infinities, option objects) into what JSON can hold."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """Dicts, lists, strings, finite numbers, booleans and None; infinities and NaN as strings.

    JSON has no infinity (an SQNR of identical outputs is one), and `json.dump` would write the
    non-standard `Infinity`; anything else unknown becomes its `str()`.
    """
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
