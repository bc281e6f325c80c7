"""LRP mappings for the nodes that are not linear layers (SPEC "LRP: the other nodes").

Shared by LRP, Deep Taylor and the Zennit-style composites.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx

from innspect.engine.reverse import Mapping, NodeContext, Unsupported
from innspect.graph.graph import NodeInfo
from innspect.graph.ops import Kind, family, is_difference, is_sum
from innspect.rules.basic import GRADIENT, PassThrough
from innspect.rules.linear_rule import check_stabilizer, stabilize
from innspect.rules.modern import (
    ATTN_EPSILON,
    AddedProductRule,
    MatmulRule,
    NormRule,
    ProductRule,
    SoftmaxConstant,
    SoftmaxRule,
)


class ZRuleNoParam(Mapping):
    """The z-rule on an operation linear in its inputs without weights (add, avg pool, mean...).

    ``R_i = x_i * vjp_i(R / stab(z))``: relevance is split in proportion to each input's
    contribution. ``stabilizer`` as for the linear rules (None: 1e-7 where z == 0).
    """

    needs_autograd = True

    def __init__(self, stabilizer: float | None = None) -> None:
        self.stabilizer = check_stabilizer(stabilizer)

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        z = ctx.output.detach()
        grads = ctx.vjp(ctx.signal / stabilize(z, self.stabilizer))
        return [
            None if g is None else x.detach() * g for x, g in zip(ctx.inputs, grads, strict=True)
        ]

    def __repr__(self) -> str:
        return "ZRule()" if self.stabilizer is None else f"ZRule(stabilizer={self.stabilizer:g})"


class ZRuleSum(Mapping):
    """The z-rule on ``a + b`` or ``a - b`` (residual connections) without autograd.

    ``R_a = a * R / stab(z)`` and ``R_b = +-b * R / stab(z)``, each summed over the axes it
    was broadcast along: what :class:`ZRuleNoParam` computes, but the node needs no local
    autograd graph, so the record can drop and rebuild the ReLU outputs that feed it.
    """

    def __init__(self, stabilizer: float | None = None) -> None:
        self.stabilizer = check_stabilizer(stabilizer)

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        node = ctx.info.node
        s = ctx.signal / stabilize(ctx.output.detach(), self.stabilizer)
        negate_second = is_difference(node)
        parts: dict = dict.fromkeys(ctx.info.signal_inputs)
        values = dict(zip(ctx.info.signal_inputs, ctx.inputs, strict=True))
        for position, arg in enumerate(node.args[:2]):
            if not isinstance(arg, fx.Node) or arg not in parts:
                continue
            x = values[arg].detach()
            part = x * s
            if part.shape != x.shape:
                part = part.sum_to_size(x.shape)
            if negate_second and position == 1:
                part = part.neg_()
            parts[arg] = part if parts[arg] is None else parts[arg] + part
        return [parts[n] for n in ctx.info.signal_inputs]

    def __repr__(self) -> str:
        label = "" if self.stabilizer is None else f"stabilizer={self.stabilizer:g}, "
        return f"ZRule({label}without autograd)"


def is_plain_sum(info: NodeInfo) -> bool:
    """``a + b`` or ``a - b`` of two arguments with no scaling (``alpha``) of the second."""
    node = info.node
    alpha = node.kwargs.get("alpha", 1)
    return (
        is_sum(node)
        and len(node.args) == 2
        and set(node.kwargs) <= {"alpha"}
        and not isinstance(alpha, fx.Node)
        and alpha == 1
    )


def z_rule_no_param(stabilizer: float | None = None) -> Mapping:
    """The z-rule on a parameter-free linear node (the engine runs plain sums without
    autograd, see ``innspect.rules.strategy``)."""
    return ZRuleNoParam(stabilizer) if stabilizer is not None else Z_NO_PARAM


class EmbeddingSum(Mapping):
    """Embedding lookup: the relevance of each looked-up vector, summed over its axis."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return [ctx.signal.sum(dim=-1)] + [None] * (len(ctx.inputs) - 1)

    def __repr__(self) -> str:
        return "EmbeddingSum()"


def is_signal_sum(info: NodeInfo) -> bool:
    """An addition/subtraction of two input-dependent tensors (e.g. a residual connection)."""
    return len(info.signal_inputs) >= 2 and is_sum(info.node)


def is_average(info: NodeInfo) -> bool:
    """Average pooling (module, functional or ATen) or a mean over axes."""
    return family(info.node, info.module) == "average"


PASS_THROUGH = PassThrough()


def lrp_node_mapping(info: NodeInfo, method: str, stabilizer: float | None = None) -> Mapping:
    """The LRP mapping of a node that is not a linear layer or BatchNorm.

    Parameters
    ----------
    info
        The node.
    method
        The analyzer's name, for error messages.
    stabilizer
        Stabiliser of the z-rule on parameter-free linear operations.
    """
    kind = info.kind
    modern = modern_node_mapping(info)
    if modern is not None:
        return modern
    if kind in (Kind.ACTIVATION, Kind.SCALE):
        return PASS_THROUGH
    if kind in (Kind.MAX_POOL, Kind.REARRANGE, Kind.IDENTITY):
        return GRADIENT
    if kind is Kind.LINEAR_NO_PARAM:
        return z_rule_no_param(stabilizer)
    if kind is Kind.EMBEDDING:
        return EMBEDDING_SUM
    if kind is Kind.OUTPUT_ACTIVATION:
        return Unsupported(
            method,
            "an output activation inside the model cannot carry relevance; explain the "
            "logits (innspect.model_wo_softmax(model))",
        )
    return Unsupported(
        method,
        "LRP has no rule for this operation; rewrite it with supported layers or use 'gradient'",
    )


def modern_node_mapping(
    info: NodeInfo,
    epsilon: float = ATTN_EPSILON,
    cp: bool = False,
    gate: bool = True,
    absorb: bool = False,
) -> Mapping | None:
    """The rule of a node of a modern architecture (SPEC "Modern architectures"), or None.

    Products of two signals (gate or uniform rule), matrix products (epsilon-uniform),
    softmax inside the network (AttnLRP's rule, or CP-LRP's constant attention with
    ``cp=True``), LayerNorm / GroupNorm (std held constant), RMSNorm (identity); a product
    with an added term (``baddbmm``, ``addcmul``) as its written-out sum and product, whose
    constant addend absorbs its share with ``absorb=True`` (AttnLRP's bias).
    """
    fam = family(info.node, info.module)
    if fam == "product" and info.kind is Kind.OTHER:
        if cp:
            return CP_PRODUCT
        return GATE_PRODUCT if gate else UNIFORM_PRODUCT
    if fam == "matmul":
        if cp:
            return MatmulRule(epsilon, hold_gates=True)
        return MatmulRule(epsilon)
    if fam in ("baddbmm", "addcmul"):
        if cp:
            return AddedProductRule(epsilon, activations=True, hold_gates=True, absorb=absorb)
        return AddedProductRule(epsilon, gate=gate, absorb=absorb)
    if fam == "softmax":
        return SOFTMAX_CONSTANT if cp else SOFTMAX_RULE
    if fam in ("layer_norm", "group_norm"):
        return NormRule(epsilon)
    if fam == "rms_norm":
        return PASS_THROUGH
    return None


Z_NO_PARAM = ZRuleNoParam()
UNIFORM_PRODUCT = ProductRule(gate=False)
GATE_PRODUCT = ProductRule(gate=True)
CP_PRODUCT = ProductRule(gate=True, activations=True)
SOFTMAX_RULE = SoftmaxRule()
SOFTMAX_CONSTANT = SoftmaxConstant()
EMBEDDING_SUM = EmbeddingSum()
