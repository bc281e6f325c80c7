"""Checks of option values: each returns the value in its canonical type or raises one clear
``OptionError`` naming the option and what it takes. Used by analyzers (their options, on
creation and on ``load_npz``) and by rules (their parameters), which sit in different layers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from innspect.errors import OptionError

MAX_POINTS = 1_000_000
"""Upper bound for ``steps`` / ``augment_by_n``: more points than this is a typo or a tampered
file (10**12 points would run for years), not a request."""


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool; numbers other than 0/1 and strings are refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise OptionError(f"{name} must be True or False, got {value!r}")


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum]; floats with a fraction, bools and strings
    are refused rather than truncated."""
    if isinstance(value, bool):
        # True is an int to Python, but steps=True is a mistake, not one step.
        raise OptionError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise OptionError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum:,}" if maximum is not None else ""
        raise OptionError(f"{name} must be >= {minimum}{upper}, got {value:,}")
    return value


def check_number(
    name: str, value: Any, minimum: float | None = None, *, positive: bool = False
) -> float:
    """``value`` as a finite float (>= minimum when given, > 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if (
        not math.isfinite(value)
        or (minimum is not None and value < minimum)
        or (positive and value <= 0)
    ):
        if positive or minimum is not None:
            bound = "> 0" if positive else f">= {minimum:g}"
            raise OptionError(f"{name} must be {bound} and finite, got {value!r}")
        raise OptionError(f"{name} must be a finite number, got {value!r}")
    return value


def check_range(name: str, value: Any) -> tuple[float, float]:
    """A ``(low, high)`` pair of finite numbers with low <= high."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise OptionError(f"{name} must be a pair (low, high), got {value!r}")
    low, high = (check_number(name, v) for v in value)
    if low > high:
        raise OptionError(f"{name} must have low <= high, got {value!r}")
    return low, high


def check_axis(name: str, value: Any) -> int | None:
    """An axis option: None or an int (not a float such as 1.7, a bool or a string); its
    range is checked against the attribution's rank when that is known."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"{name} must be an int axis (or None), got {value!r}")
    return int(value)
