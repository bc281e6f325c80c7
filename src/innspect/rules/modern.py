"""Relevance rules for the nodes of modern architectures (SPEC "Modern architectures").

Gates, normalisations and attention: element-wise products and matrix products of two
signals, softmax inside the network, LayerNorm / GroupNorm / RMSNorm. The formulas come
from Achtibat et al. 2024, "AttnLRP: Attention-Aware Layer-wise Relevance Propagation for
Transformers" (ICML, arXiv 2402.05602) and Ali et al. 2022, "XAI for Transformers: Better
Explanations through Conservative Propagation" (CP-LRP, ICML). ``R`` is the relevance at
the node's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from innspect.engine.reverse import Mapping, NodeContext
from innspect.errors import NotAnalyzableModelError
from innspect.graph.graph import ModelGraph
from innspect.graph.ops import Kind, family, is_gate, op_name
from innspect.rules.linear_rule import signed_shift, stabilize

# The stabiliser of the products, matrix products and norms of the AttnLRP / CP-LRP rules.
# LXT 2.1's efficient mode has none in its linear layers: at this default innspect differs
# from it by ~1e-2 relative on small models; pass epsilon=1e-12 to compare (tests do).
ATTN_EPSILON = 1e-6


def gate_factor(graph: ModelGraph, node: fx.Node, activations: bool = False) -> bool:
    """Whether ``node`` is a gate or reciprocal, looking back through identities and
    rearrangements (dropout on attention probabilities, a reshape of an SE gate).
    ``activations``: any element-wise activation output is a gate too (CP-LRP's SwiGLU)."""
    while True:
        info = graph.infos.get(node)
        if info is None:
            return False
        if is_gate(node, info.module) or (activations and info.kind is Kind.ACTIVATION):
            return True
        if info.kind not in (Kind.IDENTITY, Kind.REARRANGE) or len(info.signal_inputs) != 1:
            return False
        node = info.signal_inputs[0]


def held_gate(
    graph: ModelGraph, factors: Sequence[fx.Node], activations: bool = False
) -> fx.Node | None:
    """Of two factors, the one gate that is held constant, or None (both or neither).

    A true gate (sigmoid, softmax, a reciprocal) is held before an activation output: with
    ``activations`` (CP-LRP), a squeeze-excitation's ``silu(x) * sigmoid(s)`` has two
    activation outputs and the sigmoid is the gate (splitting in two sent half the relevance
    into the excitation branch); where neither is a true gate, one activation output is
    (SwiGLU's ``silu(x W1)``, linear attention's ReLU kernels)."""
    for as_gates in (False, True) if activations else (False,):
        gates = [f for f in factors if gate_factor(graph, f, as_gates)]
        if len(gates) == 1:
            return gates[0]
    return None


def _factor_args(node: fx.Node) -> list[object]:
    """The operands of a product: ``(a, b)``, or einsum's tensors after the equation."""
    if op_name(node) == "einsum":
        operands = node.args[1:]
        if len(operands) == 1 and isinstance(operands[0], list | tuple):
            operands = operands[0]
        return list(operands)
    return list(node.args[:2])


def _shares(ctx: NodeContext, parts: dict[fx.Node, torch.Tensor | None]) -> list:
    return [parts.get(n) for n in ctx.info.signal_inputs]


def _to_shape(signal: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return signal.sum_to_size(like.shape) if signal.shape != like.shape else signal


class ProductRule(Mapping):
    """Element-wise product (or quotient) ``a * b`` of two signals.

    Gate rule (``gate=True``, where one factor is a gate ``g``: sigmoid, hard sigmoid,
    softmax, or a reciprocal norm such as ``rsqrt``): ``R_x = R``, ``R_g = 0``; the gate
    acts as a weight (conservative; squeeze-excitation, hand-written RMSNorm). Otherwise,
    and always with ``gate=False``, AttnLRP's uniform rule ``R_a = R_b = R / 2`` (Achtibat
    et al. 2024, Prop. 3.2). ``activations=True`` (CP-LRP, as LXT's CP mode on gated MLPs):
    the output of any element-wise activation (SwiGLU's ``silu(x W1)``) is a gate. A quotient ``a / b`` holds ``b`` constant: ``R_a = R``. A
    product with one input-dependent factor is a scaling: ``R_a = R``.
    """

    def __init__(self, gate: bool = True, activations: bool = False) -> None:
        self.gate = gate
        self.activations = activations

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        node, signal = ctx.info.node, ctx.signal
        values = dict(zip(ctx.info.signal_inputs, ctx.inputs, strict=True))
        factors = [a for a in _factor_args(node) if isinstance(a, fx.Node) and a in values]
        if op_name(node).rstrip("_") in ("div", "truediv"):
            numerator = node.args[0]
            # a / b: the divisor is held constant (a norm); c / x is element-wise in x.
            keep = [numerator] if numerator in values else factors[:1]
        elif len(factors) == 2 and self.gate:
            keep = self._signal_factor(ctx, factors)
        else:
            keep = factors
        share = signal / len(keep) if len(keep) > 1 else signal
        parts: dict[fx.Node, torch.Tensor | None] = {}
        for factor in keep:
            part = _to_shape(share, values[factor])
            parts[factor] = part if parts.get(factor) is None else parts[factor] + part
        return _shares(ctx, parts)

    def _signal_factor(self, ctx: NodeContext, factors: list[fx.Node]) -> list[fx.Node]:
        """The factor that takes all the relevance (the other is a gate), or both."""
        gate = held_gate(ctx.graph, factors, self.activations)
        return factors if gate is None else [f for f in factors if f is not gate]

    def __repr__(self) -> str:
        if self.activations:
            return "ProductRule(gate, activations as gates)"
        return "ProductRule(gate)" if self.gate else "ProductRule(uniform)"


class MatmulRule(Mapping):
    """Matrix product ``z = A @ B`` (matmul, bmm, einsum) of two signals: AttnLRP's
    epsilon-uniform rule ``s = R / (2 z + eps)``, ``R_A = A * (s @ B^T)``,
    ``R_B = B * (A^T @ s)`` (Achtibat et al. 2024, Prop. 3.3), ``eps`` with the sign of
    the denominator. With one input-dependent operand it is the epsilon rule of the linear
    map. ``hold_gates=True`` (CP-LRP, Ali et al. 2022): an operand that is a gate (the
    attention probabilities) is a constant, and the other operand gets all the relevance
    by the epsilon rule. Where neither operand is a gate, the output of an element-wise
    activation is held as CP-LRP's ``ProductRule`` holds it: linear attention's kernels
    (EfficientViT's ``relu(q) @ (relu(k)^T @ v)``, Katharopoulos et al. 2020), so that the
    normalised kernel weights act as constant attention and ``v`` gets all the relevance.
    """

    needs_autograd = True

    def __init__(self, epsilon: float = ATTN_EPSILON, hold_gates: bool = False) -> None:
        self.epsilon = epsilon
        self.hold_gates = hold_gates

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        node = ctx.info.node
        inputs = dict(zip(ctx.info.signal_inputs, ctx.inputs, strict=True))
        operands = [a for a in _factor_args(node) if isinstance(a, fx.Node) and a in inputs]
        held = set()
        if self.hold_gates and len(operands) == 2:
            gate = held_gate(ctx.graph, operands, activations=True)
            held = set() if gate is None else {gate}
        n = max(len(operands) - len(held), 1)
        z = ctx.output.detach()
        s = ctx.signal / signed_shift(n * z, self.epsilon)
        grads = ctx.vjp(s)
        return [
            None if g is None or x in held else inputs[x].detach() * g
            for x, g in zip(ctx.info.signal_inputs, grads, strict=True)
        ]

    def __repr__(self) -> str:
        label = ", CP: gates held" if self.hold_gates else ""
        return f"MatmulRule(epsilon={self.epsilon:g}{label})"


def _argument(node: fx.Node, position: int, name: str, default: object = None) -> object:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


# baddbmm(input, batch1, batch2, beta, alpha), addcmul(input, tensor1, tensor2, value): the
# argument names of the function, method and ATen forms.
_ADDED_PRODUCTS = {
    "baddbmm": (("input", "self"), "batch1", "batch2"),
    "addcmul": (("input", "self"), "tensor1", "tensor2"),
}


class AddedProductRule(Mapping):
    """A product with a term added in the same call: ``baddbmm`` computes
    ``beta input + alpha (A @ B)`` (BLOOM's ALiBi scores), ``addcmul``
    ``input + value (a * b)`` (ResMLP's ``Affine``, ``beta + alpha x``).

    The rules of the call written out as a sum and a product. The sum: where both terms
    carry a signal, the z-rule of a sum, ``R_t = t R / z`` (``z`` stabilised as the plain
    z-rule does); where one does (ALiBi's constant bias, ``Affine``'s parameter shift), it
    gets ``R`` (a shift). With ``absorb`` (AttnLRP and CP-LRP, whose sums take
    ``z + eps`` and where a constant addend is a bias), the signal term gets its share
    ``t R / (z + eps)`` in both cases. The
    product with relevance ``R_p``: its constant factor (``alpha``, ``value``) a scaling that
    passes ``R_p``; a matrix product as ``MatmulRule`` (AttnLRP's epsilon-uniform rule over
    its ``n`` signal operands, ``s = R_p / (n A @ B + eps)``, ``R_A = A * (s @ B^T)``,
    ``R_B = B * (A^T @ s)``; with ``hold_gates`` a gate operand held constant, CP-LRP); an
    element-wise product as ``ProductRule`` (a scaling when one factor carries the signal:
    ``R_x = R_p``; else the gate or uniform rule).
    Achtibat et al. 2024 (AttnLRP, Prop. 3.2 and 3.3), Ali et al. 2022 (CP-LRP).
    """

    def __init__(
        self,
        epsilon: float = ATTN_EPSILON,
        gate: bool = True,
        activations: bool = False,
        hold_gates: bool = False,
        absorb: bool = False,
    ) -> None:
        self.epsilon = epsilon
        self.absorb = absorb
        self.gate = gate
        self.activations = activations
        self.hold_gates = hold_gates

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        node = ctx.info.node
        name = op_name(node).rstrip("_")
        (first, alias), left, right = _ADDED_PRODUCTS[name]
        added = node.args[0] if node.args else node.kwargs.get(first, node.kwargs.get(alias))
        a, b = _argument(node, 1, left), _argument(node, 2, right)
        values = ctx.record.values

        def value(arg: object) -> Any:
            # A recorded tensor (or a number computed in the graph), or the call's constant.
            found = values[arg] if isinstance(arg, fx.Node) else arg
            return found.detach() if isinstance(found, torch.Tensor) else found

        signals = set(ctx.info.signal_inputs)
        x, y = value(a), value(b)
        if name == "baddbmm":
            scale, beta = (
                value(_argument(node, 4, "alpha", 1)),
                value(_argument(node, 3, "beta", 1)),
            )
            unscaled = torch.matmul(x, y)
        else:
            scale, beta = value(_argument(node, 3, "value", 1)), 1
            unscaled = x * y
        product = scale * unscaled
        term = beta * value(added)
        relevance = ctx.signal
        factors = [f for f in (a, b) if f in signals]
        parts: dict[fx.Node, torch.Tensor | None] = {}

        def add(target: fx.Node, part: torch.Tensor) -> None:
            part = _to_shape(part, values[target])
            parts[target] = part if parts.get(target) is None else parts[target] + part

        share = relevance
        if (added in signals and factors) or self.absorb:
            denominator = stabilize(term + product, self.epsilon if self.absorb else None)
            if added in signals:
                add(added, term * relevance / denominator)
            share = product * relevance / denominator
        elif added in signals:
            add(added, relevance)
        if not factors:
            return _shares(ctx, parts)
        if name == "baddbmm":
            self._matrix(ctx, (a, b), (x, y), factors, unscaled, share, add)
        else:
            self._elementwise(ctx, factors, share, add)
        return _shares(ctx, parts)

    def _matrix(
        self,
        ctx: NodeContext,
        operands: tuple[Any, Any],
        tensors: tuple[torch.Tensor, torch.Tensor],
        factors: list[fx.Node],
        product: torch.Tensor,
        share: torch.Tensor,
        add: Callable[[fx.Node, torch.Tensor], None],
    ) -> None:
        held = set()
        if self.hold_gates and len(factors) == 2:
            gate = held_gate(ctx.graph, factors, activations=True)  # as MatmulRule
            held = set() if gate is None else {gate}
        active = [f for f in factors if f not in held]
        s = share / signed_shift(len(active) * product, self.epsilon)
        (a, b), (x, y) = operands, tensors
        if a in active:
            add(a, x * torch.matmul(s, y.transpose(-1, -2)))
        if b in active:
            add(b, y * torch.matmul(x.transpose(-1, -2), s))

    def _elementwise(
        self,
        ctx: NodeContext,
        factors: list[fx.Node],
        share: torch.Tensor,
        add: Callable[[fx.Node, torch.Tensor], None],
    ) -> None:
        keep = factors
        if len(factors) == 2 and self.gate:  # as ProductRule
            gate = held_gate(ctx.graph, factors, self.activations)
            keep = factors if gate is None else [f for f in factors if f is not gate]
        for factor in keep:
            add(factor, share / len(keep))

    def __repr__(self) -> str:
        label = (", CP: gates held" if self.hold_gates else "") + (
            ", constants absorb" if self.absorb else ""
        )
        return f"AddedProductRule(epsilon={self.epsilon:g}{label})"


def softmax_dim(ctx: NodeContext) -> int:
    """The softmax axis of a module, function or method node."""
    node, module = ctx.info.node, ctx.info.module
    if isinstance(module, nn.Softmax2d):
        return -3
    if module is not None:
        dim = module.dim
    else:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if not isinstance(dim, int):
        raise NotAnalyzableModelError(
            f"node {ctx.info.describe()}: a softmax inside the network needs an explicit "
            f"integer dim for its relevance rule, got {dim!r}"
        )
    return dim


class SoftmaxRule(Mapping):
    """Softmax inside the network, AttnLRP's rule (Achtibat et al. 2024, Prop. 3.1):
    ``R_in = x * (R - s * sum(R))`` over the softmax axis, with ``-inf`` (masked) inputs
    taken as 0. Not conservative: the loss is ``sum(x * s) * sum(R)`` per softmax row."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        dim = softmax_dim(ctx)
        x = ctx.inputs[0].detach()
        x = torch.where(torch.isinf(x) & (x < 0), torch.zeros_like(x), x)
        s = ctx.output.detach().to(x.dtype)
        relevance = ctx.signal
        return [x * (relevance - s * relevance.sum(dim=dim, keepdim=True))]

    def __repr__(self) -> str:
        return "SoftmaxRule(AttnLRP)"


class SoftmaxConstant(Mapping):
    """CP-LRP (Ali et al. 2022): the attention probabilities are constants, so no relevance
    flows into the ``Q K^T`` branch through the softmax."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return [None] * len(ctx.inputs)

    def __repr__(self) -> str:
        return "SoftmaxConstant(CP-LRP)"


def _constant(ctx: NodeContext, position: int, name: str) -> torch.Tensor | None:
    node = ctx.info.node
    arg = node.args[position] if len(node.args) > position else node.kwargs.get(name)
    if isinstance(arg, fx.Node):
        return ctx.record.values[arg]
    return arg


class NormRule(Mapping):
    """LayerNorm and GroupNorm ``y = (x - mean(x)) / std(x) * w + b``: the standard
    deviation held constant (identity on the division), then the epsilon rule on the linear
    map that remains, ``R_in = x * J^T (R / (y + eps))`` with ``J`` the Jacobian of
    ``x -> (x - mean(x)) / std * w`` at fixed std (Achtibat et al. 2024, section 3.3).
    Conservative when the norm has no bias. GroupNorm: the same per group.
    """

    def __init__(self, epsilon: float = ATTN_EPSILON) -> None:
        self.epsilon = epsilon

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        x = ctx.inputs[0].detach()
        y = ctx.output.detach()
        module = ctx.info.module
        is_group = family(ctx.info.node, module) == "group_norm"
        if module is not None:
            weight, norm_eps = module.weight, module.eps
            shape = module.num_groups if is_group else module.normalized_shape
        else:
            shape = _constant(ctx, 1, "num_groups" if is_group else "normalized_shape")
            weight = _constant(ctx, 2, "weight")
            norm_eps = _constant(ctx, 4, "eps")
            norm_eps = 1e-5 if norm_eps is None else norm_eps
        s = ctx.signal / signed_shift(y, self.epsilon)
        if weight is not None:
            w = weight.detach()
            if is_group:  # per channel, channels on axis 1
                w = w.reshape(-1, *([1] * (x.dim() - 2)))
            s = s * w
        if is_group:
            groups = x.reshape(x.shape[0], int(shape), -1)
            g = s.reshape(groups.shape)
            dims: tuple[int, ...] = (-1,)
        else:
            n = len(shape) if isinstance(shape, list | tuple | torch.Size) else 1
            groups, g = x, s
            dims = tuple(range(-n, 0))
        std = torch.sqrt(groups.var(dim=dims, keepdim=True, unbiased=False) + norm_eps)
        g = g / std
        result = groups * (g - g.mean(dim=dims, keepdim=True))
        return [result.reshape(x.shape)] + [None] * (len(ctx.inputs) - 1)

    def __repr__(self) -> str:
        return f"NormRule(epsilon={self.epsilon:g})"
