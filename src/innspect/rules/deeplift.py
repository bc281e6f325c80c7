"""DeepLIFT's mappings (Shrikumar et al. 2017, arXiv 1704.02685): multipliers from differences.

The walk carries DeepLIFT's multipliers ``m = dt / dx`` of the explained output ``t``; the
attribution is ``m * (x - x_ref)`` at the input. Nodes read their values on the input and on
the reference from a record made by the engine's reference pass.

- Linear nodes (layers, sums, concatenations, reshapes...): the linear rule (sec. 3.5.1),
  which for one multiplier per neuron is the node's transpose, i.e. its gradient.
- Element-wise non-linearities ``y = f(x)``: the rescale rule (sec. 3.5.2)
  ``m_in = m_out * (f(x) - f(x_ref)) / (x - x_ref)``, or reveal-cancel (sec. 3.5.3).
- Max pooling: the gradient at x, or Captum's rule that keeps summation-to-delta.

Where ``|x - x_ref| < DELTA_THRESHOLD`` the secant is replaced by the local derivative at x
(the limit of the secant; Captum uses the same 1e-10).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from innspect.engine.forward import run_node
from innspect.engine.reverse import Mapping, NodeContext

DELTA_THRESHOLD = 1e-10


def _secant(
    signal: torch.Tensor,
    delta_out: torch.Tensor,
    delta_in: torch.Tensor,
    derivative: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """``signal * delta_out / delta_in``, or ``derivative()`` where ``delta_in`` is tiny."""
    result = signal * delta_out / delta_in
    tiny = delta_in.abs() < DELTA_THRESHOLD
    if bool(tiny.any()):
        result = torch.where(tiny, derivative(), result)
    return result


def _pad(signal: torch.Tensor, ctx: NodeContext) -> list[torch.Tensor | None]:
    return [signal] + [None] * (len(ctx.info.signal_inputs) - 1)


class Rescale(Mapping):
    """The rescale rule at an element-wise non-linearity (Shrikumar et al. 2017, sec. 3.5.2)."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        x, r = ctx.inputs[0], ctx.reference_inputs[0]
        multiplier = _secant(
            ctx.signal,
            ctx.output - ctx.reference_output,
            x - r,
            lambda: ctx.recomputed_vjp()[0],
        )
        return _pad(multiplier, ctx)


def positive_negative_parts(
    ctx: NodeContext, linear: NodeContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dz+, dz-)``: the sums of the positive and of the negative terms ``w_i * da_i`` of a
    linear layer's difference from the reference (sec. 3.5.1; the bias cancels)."""
    op = ctx.graph.linear_op(linear.info)
    a, a_ref = linear.inputs[0], linear.reference_inputs[0]
    delta = a - a_ref
    up, down = delta.clamp(min=0), delta.clamp(max=0)
    weight = op.weight.detach()
    w_up, w_down = weight.clamp(min=0), weight.clamp(max=0)
    positive = op(up, w_up, None) + op(down, w_down, None)
    negative = op(down, w_up, None) + op(up, w_down, None)
    return positive, negative


class RevealCancel(Mapping):
    """The reveal-cancel rule at an element-wise non-linearity fed by a linear layer
    (Shrikumar et al. 2017, sec. 3.5.3).

    With ``dx+``, ``dx-`` the positive and negative parts of the input's difference (from the
    linear layer below) and ``x0`` the reference input,
    ``dy+ = (f(x0 + dx+) - f(x0)) / 2 + (f(x) - f(x0 + dx-)) / 2``,
    ``dy- = (f(x0 + dx-) - f(x0)) / 2 + (f(x) - f(x0 + dx+)) / 2`` (so ``dy+ + dy- = dy``),
    and the multipliers ``dy+ / dx+`` and ``dy- / dx-`` go to the linear layer as a pair
    (a signal stacked on a new first axis), which :class:`LinearSplit` maps.
    """

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        source = ctx.info.signal_inputs[0]
        linear = NodeContext(ctx.graph, ctx.graph.infos[source], ctx.record, None)
        positive, negative = positive_negative_parts(ctx, linear)
        r = ctx.reference_inputs[0]
        y, y_ref = ctx.output, ctx.reference_output

        def f(value: torch.Tensor) -> torch.Tensor:
            return run_node(ctx.info, ctx.record.values, [value])

        y_up, y_down = f(r + positive), f(r + negative)
        dy_up = 0.5 * (y_up - y_ref) + 0.5 * (y - y_down)
        dy_down = 0.5 * (y_down - y_ref) + 0.5 * (y - y_up)
        derivative: list[torch.Tensor] = []

        def local() -> torch.Tensor:  # the signal times f'(x), computed once if needed
            if not derivative:
                derivative.append(ctx.recomputed_vjp()[0])
            return derivative[0]

        signal = ctx.signal
        up = _secant(signal, dy_up, positive, local)
        down = _secant(signal, dy_down, negative, local)
        return _pad(torch.stack([up, down]), ctx)


class LinearSplit(Mapping):
    """The linear rule with separate positive and negative multipliers (sec. 3.5.1).

    A plain signal maps through the layer's transpose. A pair ``(m+, m-)`` from
    :class:`RevealCancel` maps, per input element ``i`` with difference ``da_i``, to
    ``W+^T m+ + W-^T m-`` where ``da_i > 0``, ``W-^T m+ + W+^T m-`` where ``da_i < 0`` (the
    sign of ``w_ij da_i`` picks the stream) and the mean of both where ``da_i = 0``
    (the original DeepLIFT code's choice).
    """

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        op = ctx.graph.linear_op(ctx.info)
        a = ctx.inputs[0].detach()
        weight = op.weight.detach()
        signal = ctx.signal
        if signal.dim() == ctx.output.dim():
            return _pad(op.transpose(signal, weight, a), ctx)
        w_up, w_down = weight.clamp(min=0), weight.clamp(max=0)
        m_up, m_down = signal[0], signal[1]
        same = op.transpose(m_up, w_up, a) + op.transpose(m_down, w_down, a)
        crossed = op.transpose(m_up, w_down, a) + op.transpose(m_down, w_up, a)
        delta = a - ctx.reference_inputs[0]
        result = torch.where(delta > 0, same, torch.where(delta < 0, crossed, (same + crossed) / 2))
        return _pad(result, ctx)


class MaxPoolDelta(Mapping):
    """Captum's DeepLIFT rule for max pooling, which keeps summation-to-delta.

    With ``y``, ``y0`` the pooled outputs on the input and the reference and ``top =
    max(y, y0)``: ``m_in = (P_x(m (top - y0)) + P_ref(m (y - top))) / (x - x0)``, where
    ``P_x`` / ``P_ref`` put a value back at the window's maximum on the input / the
    reference (the pooling's VJP there); the gradient at x where the difference is tiny.
    """

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        x, r = ctx.inputs[0], ctx.reference_inputs[0]
        y, y_ref = ctx.output, ctx.reference_output
        top = torch.maximum(y, y_ref)
        signal = ctx.signal
        spread = (
            ctx.recomputed_vjp(signal * (top - y_ref))[0]
            + ctx.recomputed_vjp(signal * (y - top), at_reference=True)[0]
        )
        multiplier = _secant(
            torch.ones_like(spread), spread, x - r, lambda: ctx.recomputed_vjp()[0]
        )
        return _pad(multiplier, ctx)
