"""Deep Taylor decomposition (Montavon et al. 2017) for ReLU networks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from innspect.analyzers.base import ReverseAnalyzer
from innspect.analyzers.registry import register
from innspect.engine.reverse import Mapping, Unsupported
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.kinds import Kind
from innspect.rules.basic import GRADIENT, gradient_mapping
from innspect.rules.lrp import Bounded, WSquare, ZPlus
from innspect.rules.lrp_nodes import PASS_THROUGH, is_average, z_rule_no_param

_RELU_ONLY = (
    "Deep Taylor is defined for ReLU networks; replace the activation by nn.ReLU or use an "
    "LRP analyzer"
)


def is_rectifier(info: NodeInfo) -> bool:
    """ReLU or ReLU6: non-negative outputs, as Deep Taylor's z+ rule assumes.

    iNNvestigate accepts Keras' ``ReLU(max_value=6)`` layers too (MobileNetV2).
    """
    return info.is_relu or isinstance(info.module, nn.ReLU6) or info.node.target is F.relu6


@register
class DeepTaylor(ReverseAnalyzer):
    """Deep Taylor: the z+ rule on every linear layer of a ReLU network.

    Starts from max(0, selected output). Follows iNNvestigate's data rather than the letter
    of its code: every Keras layer with a kernel has an ``activation`` attribute, so
    iNNvestigate gives z+ (``Alpha1Beta0IgnoreBias``) to every Dense/Conv layer, also one
    with no ReLU after it; its reference files confirm it. An unfused BatchNorm gets w^2;
    max and average pooling (and ``mean``) get the gradient, as in iNNvestigate; additions
    and bilinear interpolation the z-rule (as in LRP); dropout and reshapes the gradient.
    Activations other than ReLU / ReLU6, scaling and other nodes are refused.
    """

    name = "deep_taylor"
    relevance_start = True
    fuse_batchnorm = True

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._z_plus = ZPlus()
        self._w_square = WSquare()

    def _start_value(self, output: torch.Tensor) -> torch.Tensor:
        return output.detach().clamp(min=0)

    def _input_rule(self) -> Mapping | None:
        return None

    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        kind = info.kind
        if kind is Kind.LINEAR:
            input_rule = self._input_rule()
            if input_rule is not None and info.node in graph.input_layer_nodes():
                return input_rule
            activation = graph.following_activation(info)
            if activation is not None and not is_rectifier(activation):
                return Unsupported(
                    self.name, f"it is followed by {activation.operation}; " + _RELU_ONLY
                )
            return self._z_plus
        if kind is Kind.BATCHNORM:
            return self._w_square  # iNNvestigate: "assume conv layer beforehand -> unbounded"
        if kind is Kind.ACTIVATION:
            return PASS_THROUGH if is_rectifier(info) else Unsupported(self.name, _RELU_ONLY)
        if kind in (Kind.MAX_POOL, Kind.REARRANGE, Kind.IDENTITY):
            return gradient_mapping(kind)
        if kind is Kind.LINEAR_NO_PARAM:
            # iNNvestigate's reference data: average pooling is a plain gradient in Deep
            # Taylor; additions and interpolations keep the (conservative) z-rule.
            return GRADIENT if is_average(info) else z_rule_no_param(info)
        return Unsupported(self.name, "Deep Taylor has no rule for this operation")


@register
class BoundedDeepTaylor(DeepTaylor):
    """Deep Taylor with the z^B rule on the input layer (inputs in [low, high]).

    Parameters
    ----------
    low, high
        Bounds of the input (both required): scalars or tensors broadcastable to the input.
    """

    name = "deep_taylor.bounded"

    def __init__(self, model: nn.Module, *, low: Any = None, high: Any = None, **kwargs: Any):
        if low is None or high is None:
            raise ValueError(
                "deep_taylor.bounded needs both low and high (the input's value range), "
                "e.g. low=0, high=1 for images in [0, 1]"
            )
        super().__init__(model, **kwargs)
        self._bounded = Bounded(low=low, high=high)

    def _input_rule(self) -> Mapping | None:
        return self._bounded
