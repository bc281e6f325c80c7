"""How robustness and randomisation metrics re-explain: a method name, an analyzer, or a
callable ``f(model, x, y) -> attributions``, run in batches of at most ``batch_size`` rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from innspect.analyzers.api import Analyzer
from innspect.analyzers.persistence import Persistent
from innspect.analyzers.registry import create_analyzer
from innspect.errors import InputError

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def analyzer_for(method: str | Analyzer, model: nn.Module, options: Mapping[str, Any]) -> Analyzer:
    """An analyzer of ``method`` on ``model`` explaining chosen classes (index mode): a name
    is created with ``options``; an analyzer is rebuilt from its saved config on ``model``."""
    if isinstance(method, str):
        return create_analyzer(method, model, neuron_selection_mode="index", **dict(options))
    name, state = method.save()
    config = dict(state["config"]["options"])
    config["neuron_selection_mode"] = "index"
    state = {"config": {"options": config}, "arrays": state.get("arrays", {})}
    return Persistent.load(name, state, model)


def explainer(method: Any, options: Mapping[str, Any] | None = None) -> Explain:
    """``f(model, x, y)``: the attributions of ``x`` for classes ``y`` by ``method``."""
    if method is None:
        raise InputError(
            "this metric re-explains inputs: give method= (an analyzer name such as "
            "'gradient', an analyzer, or a callable f(model, x, y) -> attributions)"
        )
    if callable(method) and not isinstance(method, Analyzer):
        return method
    if not isinstance(method, str | Analyzer):
        raise InputError(f"method must be a name, an analyzer or a callable, got {type(method)}")
    made: dict[int, tuple[nn.Module, Analyzer]] = {}

    def explain(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # one analyzer per model object (the user's analyzer is reused on its own model)
        key = id(model)
        if key not in made or made[key][0] is not model:
            if isinstance(method, Analyzer) and method.model is model:
                analyzer = method if method.neuron_selection_mode == "index" else None
            else:
                analyzer = None
            made[key] = (model, analyzer or analyzer_for(method, model, options or {}))
        return made[key][1].analyze(x, neuron_selection=y)

    return explain


def explain_rows(
    explain: Explain, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``explain`` over ``x`` in chunks of ``batch_size`` rows, as a tensor of x's shape or
    broadcastable to it."""
    parts = []
    for start in range(0, x.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        a = explain(model, x[rows], y[rows])
        if not isinstance(a, torch.Tensor):
            a = torch.as_tensor(a)
        parts.append(a.detach().to(x.device, x.dtype))
    return torch.cat(parts)
