"""Analyzer options in JSON form (``jsonable``, for saved configurations and summaries).

Their validation is ``innspect.util.checks`` (used by the rules too), on creation and, through
the constructors, on ``load_npz``: a saved configuration is checked like one typed by a user.
"""

from __future__ import annotations

import functools
import hashlib
import types
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


def stable_repr(value: Any) -> str:
    """``repr(value)`` that is the same in every process for the same function.

    A function's repr holds its memory address, so a run header that names one (a metric's
    ``perturb_func``, ``complexity_func``) could never be resumed from another process. A
    function is named by its module, qualified name and a digest of what it computes: its
    code (nested code included), defaults and the values its closure holds; another body or
    another captured value gives another name. Other objects keep their ``repr``.
    """
    if isinstance(value, types.FunctionType):
        parts = (
            _code_identity(value.__code__),
            stable_repr(value.__defaults__),
            stable_repr(value.__kwdefaults__),
            tuple(stable_repr(cell.cell_contents) for cell in value.__closure__ or ()),
        )
        digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
        return f"<function {value.__module__}.{value.__qualname__} {digest}>"
    if isinstance(value, functools.partial):
        return (
            f"<partial {stable_repr(value.func)} {stable_repr(value.args)} "
            f"{stable_repr(value.keywords)}>"
        )
    if isinstance(value, list | tuple):
        return repr(type(value)(stable_repr(v) for v in value))
    if isinstance(value, dict):
        return repr({k: stable_repr(v) for k, v in value.items()})
    return repr(value)


def _code_identity(code: types.CodeType) -> tuple:
    consts = tuple(
        _code_identity(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts
    )
    return (code.co_code, consts, code.co_names, code.co_varnames)
