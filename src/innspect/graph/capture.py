"""Capture: turn a user's nn.Module into a torch.fx graph without touching the module.

The graph's inputs are the forward arguments the caller passes (``CallSpec``); arguments
with defaults that the caller leaves out (timm ViT's ``attn_mask=None, is_causal=False``)
are bound to their defaults at capture time, as the model's own call would use them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from innspect.errors import InputError, NotAnalyzableModelError


class _LeafTracer(fx.Tracer):
    """fx tracer keeping every torch.nn layer as one node and tracing through user modules.

    fx's default already treats torch.nn modules (except containers) as leaves; user modules
    and torchvision blocks are traced through, so their additions and concatenations become
    nodes of their own.
    """


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
        ``(name, default)`` for the parameters the caller leaves out; they are not inputs.
    parameters
        Every parameter name of the forward, in order (for messages and placeholders).
    """

    names: tuple[str, ...]
    keyword: bool = False
    bound: tuple[tuple[str, Any], ...] = ()
    parameters: tuple[str, ...] = ()

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


def capture(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[Any] | None = None,
    call: CallSpec | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule that shares (never copies) the model's layers.

    Tries torch.fx symbolic tracing first (arguments in ``call.bound`` fixed to their
    defaults); if that fails and an example input is given (a tensor, or one value per
    name of ``call.names``), torch.export. Raises NotAnalyzableModelError naming both
    failures otherwise.
    """
    if isinstance(model, fx.GraphModule):
        # Already a graph: copy the graph so canonicalisation never edits the user's one.
        return fx.GraphModule(model, _copy_graph(model.graph), class_name=type(model).__name__)
    if isinstance(model, torch.jit.ScriptModule):
        raise NotAnalyzableModelError(
            "TorchScript modules cannot be traced by torch.fx; pass the original nn.Module "
            "(or load its weights into the Python class)."
        )
    concrete = dict(call.bound) if call is not None else None
    try:
        tracer = _LeafTracer()
        graph = tracer.trace(model, concrete_args=concrete or None)
        return fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
    except Exception as fx_error:  # noqa: BLE001 - any tracing failure leads to the fallback
        if example_input is None:
            raise NotAnalyzableModelError(
                f"torch.fx could not trace {type(model).__name__}: {fx_error}"
            ) from fx_error
        values = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
        if call is not None and call.keyword:
            args, kwargs = (), dict(zip(call.names, values, strict=True))
        else:
            args, kwargs = tuple(values), {}
        try:
            exported = torch.export.export(model, args, kwargs, strict=False)
            return exported.module()
        except Exception as export_error:  # noqa: BLE001
            raise NotAnalyzableModelError(
                f"{type(model).__name__} could not be captured: torch.fx failed with "
                f"'{fx_error}', torch.export failed with '{export_error}'. Make the model's "
                "forward free of data-dependent Python control flow, or wrap the untraceable "
                "part in a submodule."
            ) from export_error


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    new_graph = fx.Graph()
    output = new_graph.graph_copy(graph, {})
    new_graph.output(output)
    return new_graph
