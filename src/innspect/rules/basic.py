"""Mappings shared by many methods: the gradient, pass-through, and the rectifier variants."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from innspect.engine.reverse import Mapping, NodeContext


class Gradient(Mapping):
    """The node's vector-Jacobian product (the chain rule).

    What a plan says; the engine may compute it as :class:`RecomputedGradient` or
    :class:`LinearGradient` instead (``innspect.rules.strategy``).
    """

    needs_autograd = True

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return ctx.vjp()

    def __repr__(self) -> str:
        return "Gradient()"


class RecomputedGradient(Mapping):
    """The node's vector-Jacobian product, from running the node again during the walk.

    For max pooling: a local autograd graph would keep the pooling's input (a full-size
    ReLU output on VGG-style networks) and its int64 indices through the whole walk; without
    one, the record can drop that ReLU output and rebuild it when the walk gets here.
    """

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return ctx.recomputed_vjp()

    def __repr__(self) -> str:
        return "Gradient(recomputed)"


class LinearGradient(Mapping):
    """The gradient of a linear layer module as its transposed operation (no autograd).

    The same numbers as :class:`Gradient`, but the node needs no local autograd graph, so
    the forward record can drop and rebuild the ReLU outputs that feed it.
    """

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        op = ctx.linear_op
        inputs = ctx.inputs
        signal = op.transpose(ctx.signal, op.weight.detach(), inputs[0].detach())
        return [signal] + [None] * (len(inputs) - 1)

    def __repr__(self) -> str:
        return "Gradient(transposed)"


class PassThrough(Mapping):
    """The signal goes to the node's (single) input unchanged: element-wise activations in LRP."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        signal = ctx.signal
        inputs = ctx.inputs
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].shape != signal.shape:
            # e.g. x * c with a broadcast constant: the signal keeps the input's shape.
            signal = signal.sum_to_size(inputs[0].shape)
        return [signal] + [None] * (len(inputs) - 1)

    def __repr__(self) -> str:
        return "PassThrough()"


class DeconvnetReLU(Mapping):
    """Deconvnet (Zeiler & Fergus 2014) at a rectifier: rectify the backward signal, ignore
    the forward mask (ReLU, and the clamps ReLU6 / ``hardtanh(0, t)`` alike)."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return [torch.relu(ctx.signal)] + [None] * (len(ctx.inputs) - 1)

    def __repr__(self) -> str:
        return "DeconvnetReLU()"


class GuidedReLU(Mapping):
    """Guided backprop (Springenberg et al. 2015) at a rectifier: rectified signal times the
    forward mask ``0 < x < bound`` (``bound=inf`` for a ReLU, 6 for ReLU6)."""

    def __init__(self, bound: float = math.inf) -> None:
        self.bound = float(bound)

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        x = ctx.inputs[0]
        # In place on the rectified copy: one full-size temporary instead of three.
        result = torch.relu(ctx.signal).masked_fill_(~(x > 0), 0)
        if math.isfinite(self.bound):
            result.masked_fill_(~(x < self.bound), 0)
        return [result] + [None] * (len(ctx.inputs) - 1)

    def __repr__(self) -> str:
        return "GuidedReLU()" if math.isinf(self.bound) else f"GuidedReLU(bound={self.bound:g})"


class RectifiedGradient(Mapping):
    """innspect's generalisation of guided backprop / Deconvnet to any element-wise
    activation ``f`` (SiLU, GELU, LeakyReLU, Tanh...): the rectified signal times the local
    derivative, ``relu(R) * f'(x)``. iNNvestigate refuses these activations
    (``strict=True`` keeps that refusal)."""

    needs_autograd = True

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return ctx.vjp(torch.relu(ctx.signal))

    def __repr__(self) -> str:
        return "RectifiedGradient()"


GRADIENT = Gradient()
RECOMPUTED_GRADIENT = RecomputedGradient()
LINEAR_GRADIENT = LinearGradient()
