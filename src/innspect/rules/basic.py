"""Mappings shared by many methods: the gradient, pass-through, and the ReLU variants."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from innspect.engine.reverse import Mapping, NodeContext
from innspect.graph.kinds import Kind


class Gradient(Mapping):
    """The node's vector-Jacobian product (the chain rule)."""

    needs_autograd = True

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return ctx.vjp()


class RecomputedGradient(Mapping):
    """The node's vector-Jacobian product, from running the node again during the walk.

    For max pooling: a local autograd graph would keep the pooling's input (a full-size
    ReLU output on VGG-style networks) and its int64 indices through the whole walk; without
    one, the record can drop that ReLU output and rebuild it when the walk gets here.
    """

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return ctx.recomputed_vjp()


GRADIENT = Gradient()
RECOMPUTED_GRADIENT = RecomputedGradient()


def gradient_mapping(kind: Kind) -> Mapping:
    """The gradient mapping of a node: max pooling is run again in the walk (no local
    autograd graph in the record), every other kind maps by its recorded VJP."""
    return RECOMPUTED_GRADIENT if kind is Kind.MAX_POOL else GRADIENT


class LinearGradient(Mapping):
    """The gradient of a linear layer module as its transposed operation (no autograd).

    The same numbers as :class:`Gradient`, but the node needs no local autograd graph, so
    the forward record can drop and rebuild the ReLU outputs that feed it.
    """

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        op = ctx.graph.linear_op(ctx.info)
        inputs = ctx.inputs
        signal = op.transpose(ctx.signal, op.weight.detach(), inputs[0].detach())
        return [signal] + [None] * (len(inputs) - 1)


class PassThrough(Mapping):
    """The signal goes to the node's (single) input unchanged: element-wise activations in LRP."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        signal = ctx.signal
        inputs = ctx.inputs
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].shape != signal.shape:
            # e.g. x * c with a broadcast constant: the signal keeps the input's shape.
            signal = signal.sum_to_size(inputs[0].shape)
        return [signal] + [None] * (len(inputs) - 1)


class DeconvnetReLU(Mapping):
    """Deconvnet at a ReLU: rectify the backward signal, ignore the forward mask."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return [torch.relu(ctx.signal)]


class GuidedReLU(Mapping):
    """Guided backprop at a ReLU: rectified signal times the forward mask (x > 0)."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        (x,) = ctx.inputs
        # In place on the rectified copy: one full-size temporary instead of three.
        return [torch.relu(ctx.signal).masked_fill_(~(x > 0), 0)]
