"""Analyzer options in JSON form (``jsonable``, for saved configurations and summaries).

Their validation is ``innspect.util.checks`` (used by the rules too), on creation and, through
the constructors, on ``load_npz``: a saved configuration is checked like one typed by a user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


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
