"""Which forward arguments are a call's inputs (``CallSpec``, ``bind_call``).

The graph's inputs are the forward arguments the caller passes (a tensor, a tuple by
position, a dict by name); arguments with defaults that the caller leaves out (timm ViT's
``attn_mask=None, is_causal=False``) are bound to their defaults at capture time, as the
model's own call would use them, and Python values the caller passes likewise.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from innspect.errors import InputError


@dataclass(frozen=True)
class CallSpec:
    """How the model is called: which forward arguments are inputs, which keep defaults.

    Attributes
    ----------
    names
        The forward arguments the caller passes, in the order of the forward's parameters.
    keyword
        Whether they are passed by keyword (``analyze({...})``) or by position.
    bound
        ``(name, value)`` for the parameters that are not inputs: those the caller leaves
        out (their defaults) and those it fixes to a Python value (``fixed``).
    parameters
        Every parameter name of the forward, in order (for messages and placeholders).
    fixed
        Names of the parameters the caller passes as Python values (None, numbers,
        strings: ``{"return_dict": False}``); captured as constants, never inputs.
    """

    names: tuple[str, ...]
    keyword: bool = False
    bound: tuple[tuple[str, Any], ...] = ()
    parameters: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()

    def with_fixed(self, values: dict[str, Any]) -> CallSpec:
        """This call with ``values`` (given by the caller) as constants instead of inputs."""
        if not values:
            return self
        bound = {**dict(self.bound), **values}
        return dataclasses.replace(
            self,
            names=tuple(n for n in self.names if n not in values),
            bound=tuple((p, bound[p]) for p in self.parameters if p in bound),
            fixed=tuple(p for p in self.parameters if p in values or p in self.fixed),
        )

    def key(self) -> tuple[Any, ...]:
        """What a capture depends on, comparable without comparing tensors by value."""
        bound = tuple(
            (n, ("tensor", id(v)) if isinstance(v, torch.Tensor) else v) for n, v in self.bound
        )
        return (self.names, self.keyword, bound)

    def describe(self) -> str:
        """'forward(a, b, c=None)' for messages."""
        defaults = dict(self.bound)
        return (
            "forward("
            + ", ".join(f"{p}={defaults[p]!r}" if p in defaults else p for p in self.parameters)
            + ")"
        )


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _forward_parameters(model: nn.Module) -> list[inspect.Parameter] | None:
    """The forward's named parameters (without self, ``*args`` and ``**kwargs``, which are
    never inputs); None when the signature cannot be read or has only ``*args``/``**kwargs``."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    parameters = [p for p in signature.parameters.values() if p.kind not in _VARIADIC]
    return parameters or None


def bind_call(
    model: nn.Module, n_positional: int | None = None, keywords: Sequence[str] | None = None
) -> CallSpec:
    """The CallSpec of calling ``model`` with ``n_positional`` arguments or with ``keywords``.

    With neither, every parameter without a default is an input. Raises InputError for an
    unknown keyword, too many positional inputs or a missing input without default.
    """
    parameters = _forward_parameters(model)
    if parameters is None:  # *args / **kwargs: the inputs are what the caller passes
        if keywords is not None:
            return CallSpec(tuple(keywords), keyword=True, parameters=tuple(keywords))
        names = tuple(f"input{i}" for i in range(n_positional or 1))
        return CallSpec(names, parameters=names)
    all_names = tuple(p.name for p in parameters)
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if keywords is not None:
        unknown = [k for k in keywords if k not in all_names]
        if unknown:
            raise InputError(
                f"unknown input {unknown[0]!r}: the model's forward takes "
                f"{', '.join(all_names) or 'no arguments'}"
            )
        passed = set(keywords)
    elif n_positional is not None:
        if n_positional > len(positional):
            raise InputError(
                f"{n_positional} inputs given but the model's forward takes "
                f"{len(positional)} positional arguments ({', '.join(all_names)})"
            )
        passed = {p.name for p in positional[:n_positional]}
    else:
        passed = {p.name for p in parameters if p.default is inspect.Parameter.empty}
    bound = []
    for p in parameters:
        if p.name in passed:
            continue
        if p.default is inspect.Parameter.empty:
            raise InputError(
                f"input {p.name!r} is missing: the model's forward takes "
                f"{', '.join(all_names)} and {p.name!r} has no default; pass it "
                "(a tuple of inputs by position, or a dict by name)"
            )
        bound.append((p.name, p.default))
    names = tuple(p.name for p in parameters if p.name in passed)
    return CallSpec(names, keyword=keywords is not None, bound=tuple(bound), parameters=all_names)
