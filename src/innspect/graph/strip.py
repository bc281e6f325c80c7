"""Helpers that return a model without its output activation (the user's model is untouched)."""

from __future__ import annotations

from torch import fx, nn

from innspect.errors import OutputActivationError
from innspect.graph import canonize
from innspect.graph.graph import KEEPS_PROBABILITIES, ModelGraph, NodeInfo, bare_operation
from innspect.graph.ops import Kind


def _strip(model: nn.Module, softmax_only: bool) -> fx.GraphModule:
    graph = ModelGraph(model)
    activation = graph.output_activation()
    if activation is not None:
        _refuse_unstrippable(graph, activation)
    if activation is None or (softmax_only and activation.kind is not Kind.OUTPUT_ACTIVATION):
        what = "softmax" if softmax_only else "output activation"
        raise OutputActivationError(f"the model's output has no final {what} to remove")
    # Several branches may end in one (a cat of softmaxes): remove each.
    for _ in range(64):
        _refuse_unstrippable(graph, activation)
        stripped = canonize.strip_output_activation(graph.module, activation.node)
        graph = ModelGraph(stripped)
        activation = graph.output_activation()
        if activation is None or (softmax_only and activation.kind is not Kind.OUTPUT_ACTIVATION):
            break
    return stripped


def _refuse_unstrippable(graph: ModelGraph, activation: NodeInfo) -> None:
    """Removing these would not leave the logits: a softmin's logits are the negated input,
    a written-out softmax or sigmoid has no single node to remove, and a clamp, log or
    ``where`` after the activation would then apply to the logits."""
    operation = activation.operation.lower()
    between, pending = set(), [graph.output_node]
    while pending:
        node = pending.pop()
        if node is None or node is activation.node or node in between:
            continue
        between.add(node)
        pending.extend(graph.infos[node].signal_inputs)
    after = [
        graph.infos[n]
        for n in between
        if bare_operation(graph.infos[n].operation) in KEEPS_PROBABILITIES
    ]
    if after:
        raise OutputActivationError(
            f"the model's output applies {after[0].operation} (node '{after[0].name}') to its "
            f"final {activation.operation}, so removing the activation would not leave the "
            "logits: return the logits from forward (or explain anyway with "
            "disable_model_checks=True)"
        )
    if "softmin" in operation or (
        activation.kind is not Kind.OUTPUT_ACTIVATION and "sigmoid" not in operation
    ):
        raise OutputActivationError(
            f"the model's output ends in {activation.operation} at node '{activation.name}', "
            "which cannot be removed automatically: return the logits from forward (or "
            "explain anyway with disable_model_checks=True)"
        )


def model_wo_softmax(model: nn.Module) -> fx.GraphModule:
    """Return a model computing ``model`` without its final softmax / log-softmax.

    The result is a torch.fx GraphModule sharing the model's layers (no weights are copied).
    """
    return _strip(model, softmax_only=True)


def model_wo_output_activation(model: nn.Module) -> fx.GraphModule:
    """Return a model without its final output activation (softmax, log-softmax or sigmoid)."""
    return _strip(model, softmax_only=False)
