"""How the engine computes a mapping: a memory/speed choice, never the method's.

A method's plan says *what* each node gets (the gradient, the z-rule, a relevance rule);
``realize`` picks *how*: the gradient of a linear layer module as its transposed operation,
the gradient of a max pooling by running it again in the walk, the z-rule on a plain sum
without autograd. Each choice gives the same numbers and lets the forward record drop
(and later rebuild) the ReLU outputs such a node reads, because the node then needs no
local autograd graph (see docs/architecture.md, "Forward record").
"""

from __future__ import annotations

from dataclasses import dataclass

from innspect.engine.reverse import Mapping
from innspect.graph.graph import NodeInfo
from innspect.graph.ops import Kind
from innspect.rules.basic import (
    LINEAR_GRADIENT,
    RECOMPUTED_GRADIENT,
    Gradient,
    LinearGradient,
    RecomputedGradient,
)
from innspect.rules.lrp_nodes import ZRuleNoParam, ZRuleSum, is_plain_sum


@dataclass(frozen=True)
class EngineStrategy:
    """Which of the equivalent ways to compute a mapping the engine uses.

    Attributes
    ----------
    transpose_linear
        The gradient of a Linear / ConvNd / BatchNorm module by its transposed operation.
    recompute_max_pool
        The gradient of a max pooling by running it again in the walk.
    sum_without_autograd
        The z-rule on ``a + b`` / ``a - b`` written without autograd.
    """

    transpose_linear: bool = True
    recompute_max_pool: bool = True
    sum_without_autograd: bool = True


DEFAULT_STRATEGY = EngineStrategy()


def realize(mapping: Mapping, info: NodeInfo, strategy: EngineStrategy) -> Mapping:
    """The mapping the walk runs for ``mapping`` (what the plan says) on ``info``."""
    if type(mapping) is Gradient:
        if strategy.recompute_max_pool and info.kind is Kind.MAX_POOL:
            return RECOMPUTED_GRADIENT
        if (
            strategy.transpose_linear
            and info.module is not None
            and info.kind in (Kind.LINEAR, Kind.BATCHNORM)
        ):
            return LINEAR_GRADIENT
    if (
        type(mapping) is ZRuleNoParam
        and strategy.sum_without_autograd
        and info.kind is Kind.LINEAR_NO_PARAM
        and is_plain_sum(info)
    ):
        return ZRuleSum(mapping.stabilizer)
    return mapping


def computes_gradient(mapping: Mapping) -> bool:
    """Whether the mapping is the node's plain VJP, however the engine computes it."""
    return type(mapping) in (Gradient, RecomputedGradient, LinearGradient)
