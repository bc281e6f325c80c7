"""Zennit 0.5.1's LRP composites, under their snake-case names, for PyTorch users.

These follow Zennit's definitions, not iNNvestigate's; the iNNvestigate-named analyzers
(``lrp.z_plus``, ``lrp.alpha_2_beta_1``...) keep iNNvestigate's conventions. The
differences, each chosen to reproduce Zennit (``zennit.composites``, ``zennit.rules``,
``zennit.canonizers``, ``zennit.torchvision``) with its ``VGGCanonizer`` /
``ResNetCanonizer``:

- Stabilisers: every division uses ``z + 1e-6 * sign(z)`` with sign(0) = +1 (Zennit's
  ``stabilizer=1e-6``), where iNNvestigate adds 1e-7 only where ``z == 0``. Zennit's
  ``Epsilon`` defaults to ``epsilon=1e-6`` (iNNvestigate: 1e-7; its presets: 0.1).
- ZPlus keeps the positive part of the bias: denominator ``x+ W+ + x- W- + b+``
  (iNNvestigate's ZPlus ignores the bias).
- AlphaBeta splits the bias: the activator denominator gets ``b+``, the inhibitor ``b-``
  (iNNvestigate adds the whole ``b`` to both).
- Gamma is Zennit's generalised rule (sign-aware for negative inputs and outputs, see
  ``innspect.rules.lrp.Gamma``); the first convolution gets ZBox (= z^B with the same
  stabiliser; its bias cancels, as in iNNvestigate).
- Layer types: "conv" is every ``ConvNd`` / ``ConvTransposeNd`` (Zennit's
  ``Convolution``), "dense" is ``nn.Linear``. The "first layer" is the first such
  module in ``model.named_modules()`` order (Zennit's ``SpecialFirstLayerMapComposite``:
  registration order, first ``Convolution`` for ``epsilon_gamma_box``, first
  ``Convolution`` or ``Linear`` for the ``_flat`` composites), not iNNvestigate's
  "layers that see the input"; every call of that module gets the rule.
- BatchNorm directly after a convolution, or after an ``nn.Linear`` on 2-D data, is
  folded into it (as Zennit's ``SequentialMergeBatchNorm``); a BatchNorm that stays is
  passed through unchanged
  (Zennit's ``Pass``), not given an Epsilon rule. Zennit's merge leaves the BatchNorm
  in the model as an "identity" that still divides by ``sqrt(1 + eps)``, so its
  relevances differ from the exactly folded model by about ``eps`` (1e-5) relative per
  BatchNorm; innspect folds exactly (with ``eps = 0`` the two agree to 1e-16). Zennit
  merges a BatchNorm1d after an ``nn.Linear`` whatever the data's rank, which is wrong on
  (N, C, F) data; innspect then leaves it unfused (and passes relevance through it).
- Linear layers written functionally (``F.linear``, ``F.conv2d``) get the plain
  gradient, as Zennit hooks modules only.
- Element-wise activation *modules* pass relevance through; functional activations
  (``F.relu``) get the plain gradient, as Zennit hooks modules only.
- Average-pooling *modules* and additions of two signals (residual connections, which
  Zennit's ``ResNetCanonizer`` turns into a ``Sum`` module) get Zennit's ``Norm``
  (z-rule, stabiliser 1e-6). Functional pooling, ``mean``/``sum`` and other
  parameter-free operations, scaling by constants, max pooling and rearrangements get
  the plain gradient, as in Zennit (iNNvestigate-named analyzers use the z-rule and
  pass-through there).
- Zennit starts from whatever gradient the user passes (usually a one-hot vector);
  innspect starts from the selected output value, like every LRP analyzer. All rules
  are linear in the start signal, so the results differ by exactly that factor.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from innspect.analyzers.lrp import LRP, is_conv, is_dense
from innspect.analyzers.registry import register
from innspect.engine.reverse import Mapping
from innspect.graph.graph import NodeInfo
from innspect.graph.kinds import AVG_POOL_MODULES, Kind
from innspect.rules.basic import GRADIENT
from innspect.rules.lrp import AlphaBeta, Bounded, Epsilon, Flat, Gamma, LinearRule
from innspect.rules.lrp_nodes import (
    PASS_THROUGH,
    ZRuleNoParam,
    is_signal_sum,
    lrp_node_mapping,
    z_rule_no_param,
)

ZENNIT_STABILIZER = 1e-6

# zennit.types.Activation: the modules Zennit's composites pass relevance through.
ZENNIT_ACTIVATIONS = (
    nn.ELU,
    nn.Hardshrink,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.LogSigmoid,
    nn.PReLU,
    nn.ReLU,
    nn.ReLU6,
    nn.RReLU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.Sigmoid,
    nn.SiLU,
    nn.Softplus,
    nn.Softshrink,
    nn.Softsign,
    nn.Tanh,
    nn.Tanhshrink,
    nn.Threshold,
)


def first_module_name(model: nn.Module, types: tuple[type, ...]) -> str | None:
    """Name of the first module of ``types`` in registration order (Zennit's "first layer")."""
    return next((name for name, m in model.named_modules() if isinstance(m, types)), None)


class ZennitComposite(LRP):
    """Base of the Zennit-style composites: Zennit's node mappings and stabilisers.

    Parameters
    ----------
    epsilon
        Epsilon of the rule on dense layers (Zennit's default 1e-6).
    stabilizer
        Stabiliser of every other rule (Zennit's default 1e-6).
    """

    first_layer_types: tuple[type, ...] = ()

    def __init__(
        self,
        model: nn.Module,
        *,
        epsilon: float = 1e-6,
        stabilizer: float = ZENNIT_STABILIZER,
        **kwargs: Any,
    ) -> None:
        for key in ("rule", "input_layer_rule", "until_layer_idx", "until_layer_rule"):
            if key in kwargs:
                raise TypeError(f"{self.name} fixes its rules; it does not take {key}=")
        self.stabilizer = stabilizer
        self._norm = ZRuleNoParam(stabilizer)
        conditions: list[tuple[Any, LinearRule]] = []
        first_rule = self._first_rule(stabilizer)
        if first_rule is not None:
            first = first_module_name(model, self.first_layer_types)
            if first is not None:
                conditions.append((lambda info: info.name.split(":")[0] == first, first_rule))
        conditions += [
            (is_conv, self._conv_rule(stabilizer)),
            (is_dense, Epsilon(epsilon=epsilon)),
        ]
        super().__init__(model, rule=conditions, **kwargs)

    def _first_rule(self, stabilizer: float) -> LinearRule | None:
        return None

    def _conv_rule(self, stabilizer: float) -> LinearRule:
        raise NotImplementedError

    def _linear_mapping(self, info: NodeInfo, index: int, input_layers: set) -> Mapping:
        if info.module is None:
            return GRADIENT  # F.linear / F.conv2d: Zennit hooks modules only
        return super()._linear_mapping(info, index, input_layers)

    def _batchnorm_mapping(self, info: NodeInfo) -> Mapping:
        return PASS_THROUGH  # Zennit's Pass on a BatchNorm its canonizer did not merge

    def _node_mapping(self, info: NodeInfo) -> Mapping:
        kind = info.kind
        if kind is Kind.ACTIVATION:
            return PASS_THROUGH if isinstance(info.module, ZENNIT_ACTIVATIONS) else GRADIENT
        if kind is Kind.LINEAR_NO_PARAM:
            if is_signal_sum(info):
                return z_rule_no_param(info, self.stabilizer)
            if isinstance(info.module, AVG_POOL_MODULES):
                return self._norm
            return GRADIENT
        if kind is Kind.SCALE:
            return GRADIENT
        return lrp_node_mapping(info, self.name, self.stabilizer)


@register
class EpsilonPlus(ZennitComposite):
    """Zennit's EpsilonPlus: ZPlus (with b+) on convolutions, Epsilon on dense layers."""

    name = "lrp.epsilon_plus"

    def _conv_rule(self, stabilizer: float) -> LinearRule:
        return AlphaBeta(alpha=1, beta=0, stabilizer=stabilizer, split_bias=True)


class _FlatFirstLayer:
    """Zennit's *Flat composites: the Flat rule on the first Linear or convolution module."""

    first_layer_types = (nn.Linear, nn.modules.conv._ConvNd)

    def _first_rule(self, stabilizer: float) -> LinearRule | None:
        return Flat(stabilizer=stabilizer)


@register
class EpsilonPlusFlat(_FlatFirstLayer, EpsilonPlus):
    """Zennit's EpsilonPlusFlat: EpsilonPlus with Flat on the first linear layer."""

    name = "lrp.epsilon_plus_flat"


@register
class EpsilonAlpha2Beta1(ZennitComposite):
    """Zennit's EpsilonAlpha2Beta1: AlphaBeta(2, 1) on convolutions, Epsilon on dense."""

    name = "lrp.epsilon_alpha2_beta1"

    def _conv_rule(self, stabilizer: float) -> LinearRule:
        return AlphaBeta(alpha=2, beta=1, stabilizer=stabilizer, split_bias=True)


@register
class EpsilonAlpha2Beta1Flat(_FlatFirstLayer, EpsilonAlpha2Beta1):
    """Zennit's EpsilonAlpha2Beta1Flat: EpsilonAlpha2Beta1 with Flat on the first layer."""

    name = "lrp.epsilon_alpha2_beta1_flat"


@register
class EpsilonGammaBox(ZennitComposite):
    """Zennit's EpsilonGammaBox: ZBox on the first convolution, Gamma on the others.

    Parameters
    ----------
    low, high
        Lowest and highest input values (required): scalars or tensors broadcastable to
        the input.
    gamma
        Gamma of the convolution rule (Zennit's default 0.25).
    """

    name = "lrp.epsilon_gamma_box"
    first_layer_types = (nn.modules.conv._ConvNd,)

    def __init__(
        self,
        model: nn.Module,
        *,
        low: Any = None,
        high: Any = None,
        gamma: float = 0.25,
        **kwargs: Any,
    ) -> None:
        if low is None or high is None:
            raise ValueError(
                "lrp.epsilon_gamma_box needs low and high, the input's value range (scalars "
                "or tensors broadcastable to the input), e.g. low=-3.0, high=3.0"
            )
        self._low, self._high, self._gamma = low, high, gamma
        super().__init__(model, **kwargs)

    def _first_rule(self, stabilizer: float) -> LinearRule | None:
        return Bounded(low=self._low, high=self._high, stabilizer=stabilizer)

    def _conv_rule(self, stabilizer: float) -> LinearRule:
        return Gamma(gamma=self._gamma, stabilizer=stabilizer, generalized=True)


__all__ = [
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "ZennitComposite",
]
