"""Analyzer options: validation (one clear OptionError naming the option and what it takes)
and their JSON form (``jsonable``, for saved configurations and summaries).

Used on creation and, through the constructors, on ``load_npz``: a saved configuration is
checked exactly like one typed by the user.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

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
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise OptionError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum:,}" if maximum is not None else ""
        raise OptionError(f"{name} must be >= {minimum}{upper}, got {value:,}")
    return value


def check_number(name: str, value: Any, minimum: float | None = None) -> float:
    """``value`` as a finite float (>= minimum when given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise OptionError(f"{name} must be a finite number{bound}, got {value!r}")
    return value


def check_range(name: str, value: Any) -> tuple[float, float]:
    """A ``(low, high)`` pair of finite numbers with low <= high."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise OptionError(f"{name} must be a pair (low, high), got {value!r}")
    low, high = (check_number(name, v) for v in value)
    if low > high:
        raise OptionError(f"{name} must have low <= high, got {value!r}")
    return low, high


def jsonable(value: Any, fallback: Callable[[Any], Any] | None = None) -> Any:
    """Options as JSON values: dicts, lists (tuples too), numbers, strings, booleans and None;
    arrays and tensors as nested lists, objects with ``get_config`` (rules) as their config.
    Anything else is ``fallback(value)`` (e.g. ``repr`` for a summary a person reads), or,
    without one, a TypeError: an option that cannot be saved."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, fallback) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, fallback) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return np.asarray(
            value.detach().cpu() if isinstance(value, torch.Tensor) else value
        ).tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "get_config"):
        return value.get_config()
    if fallback is not None:
        return fallback(value)
    raise TypeError(
        f"analyzer option of type {type(value).__name__} cannot be saved; pass names or numbers"
    )
