"""Deep Taylor decomposition (Montavon et al. 2017) for ReLU networks, as a composite."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from innspect.analyzers.composed import ComposedAnalyzer
from innspect.analyzers.lrp import input_rule_from_spec
from innspect.analyzers.plan import Composite, Predicate, Site, family, input_layer, kind
from innspect.analyzers.presets import Preset
from innspect.engine.reverse import Mapping, Unsupported
from innspect.graph.ops import Kind
from innspect.graph.ops import family as node_family
from innspect.rules.basic import GRADIENT
from innspect.rules.lrp import Bounded, WSquare, ZPlus
from innspect.rules.lrp_nodes import PASS_THROUGH, z_rule_no_param

_RELU_ONLY = (
    "Deep Taylor is defined for ReLU networks; replace the activation by nn.ReLU or use an "
    "LRP analyzer"
)
RECTIFIERS = ("relu", "rectifier")


def _followed_by_other_activation(site: Site) -> bool:
    activation = site.graph.following_activation(site.info)
    return activation is not None and node_family(activation.node, activation.module) not in (
        RECTIFIERS
    )


def deep_taylor_composite(name: str, input_rule: Mapping | None = None) -> Composite:
    """Deep Taylor's rules as data (see ``DeepTaylor``)."""
    linear = kind(Kind.LINEAR)
    first = [] if input_rule is None else [(linear & input_layer(), input_rule)]
    refuse = Unsupported(name, _RELU_ONLY)

    def refuse_layer(site: Site) -> Mapping:
        activation = site.graph.following_activation(site.info)
        return Unsupported(name, f"it is followed by {activation.operation}; " + _RELU_ONLY)

    return Composite(
        [
            *first,
            (
                linear & Predicate(_followed_by_other_activation, "followed_by_non_rectifier"),
                refuse_layer,
            ),
            (linear, ZPlus()),
            # iNNvestigate: "assume conv layer beforehand -> unbounded"
            (kind(Kind.BATCHNORM), WSquare()),
            (kind(Kind.ACTIVATION) & family(*RECTIFIERS), PASS_THROUGH),
            (kind(Kind.ACTIVATION), refuse),
            (kind(Kind.MAX_POOL, Kind.REARRANGE, Kind.IDENTITY), GRADIENT),
            # iNNvestigate's reference data: average pooling is a plain gradient in Deep
            # Taylor; additions and interpolations keep the (conservative) z-rule.
            (kind(Kind.LINEAR_NO_PARAM) & family("average"), GRADIENT),
            (kind(Kind.LINEAR_NO_PARAM), z_rule_no_param()),
        ],
        default=lambda site: Unsupported(name, "Deep Taylor has no rule for this operation"),
        name=name,
    )


class DeepTaylor(ComposedAnalyzer):
    """Deep Taylor: the z+ rule on every linear layer of a ReLU network.

    Starts from max(0, selected output). Follows iNNvestigate's data rather than the letter
    of its code: every Keras layer with a kernel has an ``activation`` attribute, so
    iNNvestigate gives z+ (``Alpha1Beta0IgnoreBias``) to every Dense/Conv layer, also one
    with no ReLU after it; its reference files confirm it. An unfused BatchNorm gets w^2;
    max and average pooling (and ``mean``) get the gradient, as in iNNvestigate; additions
    and bilinear interpolation the z-rule (as in LRP); dropout and reshapes the gradient.
    Activations other than ReLU / ReLU6 (and clamps to [0, t]), scaling and other nodes are
    refused.

    Parameters
    ----------
    input_layer_rule
        A rule for the linear layers that see the input (``deep_taylor.bounded`` gives
        ``Bounded(low, high)``), as LRP's ``input_layer_rule``.
    """

    name = "deep_taylor"
    family = "deep_taylor"
    title = "Deep Taylor"
    summary = (
        "z+ on every layer, starting from the positive part of the score: a first-order "
        "Taylor expansion at a root point; positive relevance only."
    )
    paper = "Montavon et al. 2017, Pattern Recognition 65 (arXiv 1512.02479)"
    innvestigate = "DeepTaylor"
    relevance_start = True
    fuse_batchnorm = True

    def __init__(self, model: nn.Module, *, input_layer_rule: Any = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.composite = deep_taylor_composite(self.name, input_rule_from_spec(input_layer_rule))

    def _start_value(self, output: torch.Tensor) -> torch.Tensor:
        return output.detach().clamp(min=0)


def _bounded(low: Any = None, high: Any = None) -> dict[str, Any]:
    if low is None or high is None:
        raise ValueError(
            "deep_taylor.bounded needs both low and high (the input's value range), "
            "e.g. low=0, high=1 for images in [0, 1]"
        )
    return {"input_layer_rule": Bounded(low=low, high=high)}


ANALYZERS: list[Any] = [
    DeepTaylor,
    Preset(
        "deep_taylor.bounded",
        DeepTaylor,
        """Deep Taylor with the z^B rule on the input layer (inputs in [low, high]).

    Parameters
    ----------
    low, high
        Bounds of the input (both required): scalars or tensors broadcastable to the input.
    """,
        _bounded,
        family="deep_taylor",
        title="Deep Taylor, bounded",
        summary=(
            "Deep Taylor with the input layer bounded to the input's range [low, high] (z^B rule)."
        ),
        paper="Montavon et al. 2017, Pattern Recognition 65 (arXiv 1512.02479)",
        innvestigate="BoundedDeepTaylor",
    ),
]
