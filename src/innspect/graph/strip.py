"""Helpers that return a model without its output activation (the user's model is untouched)."""

from __future__ import annotations

from torch import fx, nn

from innspect.errors import OutputActivationError
from innspect.graph import canonize
from innspect.graph.graph import ModelGraph
from innspect.graph.ops import Kind


def _strip(model: nn.Module, softmax_only: bool) -> fx.GraphModule:
    graph = ModelGraph(model)
    activation = graph.output_activation()
    if activation is None or (softmax_only and activation.kind is not Kind.OUTPUT_ACTIVATION):
        what = "softmax" if softmax_only else "output activation"
        raise OutputActivationError(f"the model's output has no final {what} to remove")
    return canonize.strip_output_activation(graph.module, activation.node)


def model_wo_softmax(model: nn.Module) -> fx.GraphModule:
    """Return a model computing ``model`` without its final softmax / log-softmax.

    The result is a torch.fx GraphModule sharing the model's layers (no weights are copied).
    """
    return _strip(model, softmax_only=True)


def model_wo_output_activation(model: nn.Module) -> fx.GraphModule:
    """Return a model without its final output activation (softmax, log-softmax or sigmoid)."""
    return _strip(model, softmax_only=False)
