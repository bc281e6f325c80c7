"""LRP mappings for the nodes that are not linear layers (SPEC "LRP: the other nodes").

Shared by LRP, Deep Taylor and the Zennit-style composites.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from innspect.engine.reverse import Mapping, NodeContext, Unsupported
from innspect.graph.graph import NodeInfo
from innspect.graph.kinds import AVG_POOL_MODULES, Kind, op_name
from innspect.rules.basic import Gradient, PassThrough
from innspect.rules.lrp import check_stabilizer, stabilize


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


class EmbeddingSum(Mapping):
    """Embedding lookup: the relevance of each looked-up vector, summed over its axis."""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        return [ctx.signal.sum(dim=-1)] + [None] * (len(ctx.inputs) - 1)


def is_signal_sum(info: NodeInfo) -> bool:
    """An addition/subtraction of two input-dependent tensors (e.g. a residual connection)."""
    return len(info.signal_inputs) >= 2 and op_name(info.node).rstrip("_") in ("add", "sub")


_AVERAGES = {
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "_adaptive_avg_pool2d",
    "_adaptive_avg_pool3d",
    "mean",
}


def is_average(info: NodeInfo) -> bool:
    """Average pooling (module, functional or ATen) or a mean over axes."""
    if info.module is not None:
        return isinstance(info.module, AVG_POOL_MODULES)
    return info.node.op in ("call_function", "call_method") and op_name(info.node) in _AVERAGES


GRADIENT = Gradient()
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
    if kind in (Kind.ACTIVATION, Kind.SCALE):
        return PASS_THROUGH
    if kind in (Kind.MAX_POOL, Kind.REARRANGE, Kind.IDENTITY):
        return GRADIENT
    if kind is Kind.LINEAR_NO_PARAM:
        return ZRuleNoParam(stabilizer) if stabilizer is not None else Z_NO_PARAM
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


Z_NO_PARAM = ZRuleNoParam()
EMBEDDING_SUM = EmbeddingSum()
