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

from innspect.analyzers.lrp import LRP
from innspect.analyzers.plan import (
    Composite,
    Predicate,
    Site,
    family,
    first_layer,
    functional,
    kind,
    lrp_default,
    module_type,
    written_out,
)
from innspect.analyzers.presets import Preset
from innspect.graph.ops import Kind, modules_of
from innspect.rules.basic import GRADIENT
from innspect.rules.lrp import AlphaBeta, Bounded, Epsilon, Flat, Gamma, LinearRule
from innspect.rules.lrp_nodes import PASS_THROUGH, ZRuleNoParam, is_signal_sum

ZENNIT_STABILIZER = 1e-6

# zennit.types.Activation: the modules Zennit's composites pass relevance through. Kept as
# Zennit's own list (not innspect's activation family, which differs: Mish, Threshold...),
# since these composites reproduce Zennit.
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
_LINEAR = kind(Kind.LINEAR)
_NO_PARAM = kind(Kind.LINEAR_NO_PARAM)


def zennit_composite(
    name: str,
    conv_rule: LinearRule,
    epsilon: float = 1e-6,
    stabilizer: float = ZENNIT_STABILIZER,
    first_rule: LinearRule | None = None,
    first_types: tuple[type, ...] = (),
) -> Composite:
    """A Zennit-style composite: ``conv_rule`` on convolutions, Epsilon on dense layers,
    ``first_rule`` on the first module of ``first_types``, Zennit's rules elsewhere."""
    first = [] if first_rule is None else [(_LINEAR & first_layer(*first_types), first_rule)]
    norm = ZRuleNoParam(stabilizer)

    def default(site: Site) -> Any:
        return lrp_default(site, name, stabilizer)

    return Composite(
        [
            # Attention innspect wrote out (Zennit sees none of it: it hooks modules, and an
            # attention module is one): its projections, F.linear on the modules' weights, are
            # dense layers; its scalings (Swin V2's logit scale, up to 100 per block) pass
            # relevance unchanged. With the gradient there relevance overflowed on Swin V2.
            (_LINEAR & written_out() & family("dense"), Epsilon(epsilon=epsilon)),
            (kind(Kind.SCALE) & written_out(), PASS_THROUGH),
            (_LINEAR & functional(), GRADIENT),  # F.linear / F.conv2d: Zennit hooks modules only
            *first,
            (_LINEAR & family("conv"), conv_rule),
            (_LINEAR & family("dense"), Epsilon(epsilon=epsilon)),
            # Zennit's Pass on a BatchNorm its canonizer did not merge.
            (kind(Kind.BATCHNORM), PASS_THROUGH),
            (kind(Kind.ACTIVATION) & module_type(*ZENNIT_ACTIVATIONS), PASS_THROUGH),
            (kind(Kind.ACTIVATION), GRADIENT),  # functional activations: not hooked
            (_NO_PARAM & _signal_sum(), norm),  # ResNetCanonizer's Sum module, Norm rule
            (_NO_PARAM & module_type(*modules_of("average")), norm),
            (_NO_PARAM | kind(Kind.SCALE), GRADIENT),
        ],
        default=default,
        name=name,
    )


def _signal_sum() -> Predicate:
    return Predicate(lambda s: is_signal_sum(s.info), "signal_sum")


_CONV_TYPES = (nn.modules.conv._ConvNd,)
_FLAT_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


def _composite(name: str, alpha: float, beta: float, flat: bool) -> Any:
    def derive(epsilon: float = 1e-6, stabilizer: float = ZENNIT_STABILIZER) -> dict[str, Any]:
        conv = AlphaBeta(alpha=alpha, beta=beta, stabilizer=stabilizer, split_bias=True)
        first = Flat(stabilizer=stabilizer) if flat else None
        composite = zennit_composite(name, conv, epsilon, stabilizer, first, _FLAT_TYPES)
        return {"composite": composite}

    return derive


def _gamma_box(
    low: Any = None,
    high: Any = None,
    gamma: float = 0.25,
    epsilon: float = 1e-6,
    stabilizer: float = ZENNIT_STABILIZER,
) -> dict[str, Any]:
    if low is None or high is None:
        raise ValueError(
            "lrp.epsilon_gamma_box needs low and high, the input's value range (scalars "
            "or tensors broadcastable to the input), e.g. low=-3.0, high=3.0"
        )
    conv = Gamma(gamma=gamma, stabilizer=stabilizer, generalized=True)
    first = Bounded(low=low, high=high, stabilizer=stabilizer)
    composite = zennit_composite(
        "lrp.epsilon_gamma_box", conv, epsilon, stabilizer, first, _CONV_TYPES
    )
    return {"composite": composite}


_HINT = "use create_analyzer('lrp', model, composite=...) for other rules"

PRESETS: list[Preset] = [
    Preset(
        "lrp.epsilon_plus",
        LRP,
        "Zennit's EpsilonPlus: ZPlus (with b+) on convolutions, Epsilon on dense layers.",
        _composite("lrp.epsilon_plus", 1, 0, False),
        hint=_HINT,
        family="lrp_composite",
        title="ε + z+",
        summary="Zennit's EpsilonPlus: z+ on convolutions, epsilon on dense layers.",
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
    ),
    Preset(
        "lrp.epsilon_plus_flat",
        LRP,
        "Zennit's EpsilonPlusFlat: EpsilonPlus with Flat on the first linear layer.",
        _composite("lrp.epsilon_plus_flat", 1, 0, True),
        hint=_HINT,
        family="lrp_composite",
        title="ε + z+, flat input",
        summary="EpsilonPlus with the flat rule on the first layer.",
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
    ),
    Preset(
        "lrp.epsilon_alpha2_beta1",
        LRP,
        "Zennit's EpsilonAlpha2Beta1: AlphaBeta(2, 1) on convolutions, Epsilon on dense.",
        _composite("lrp.epsilon_alpha2_beta1", 2, 1, False),
        hint=_HINT,
        family="lrp_composite",
        title="ε + α2β1",
        summary=(
            "Zennit's EpsilonAlpha2Beta1: alpha2-beta1 on convolutions, epsilon on dense layers."
        ),
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
    ),
    Preset(
        "lrp.epsilon_alpha2_beta1_flat",
        LRP,
        "Zennit's EpsilonAlpha2Beta1Flat: EpsilonAlpha2Beta1 with Flat on the first layer.",
        _composite("lrp.epsilon_alpha2_beta1_flat", 2, 1, True),
        hint=_HINT,
        family="lrp_composite",
        title="ε + α2β1, flat input",
        summary="EpsilonAlpha2Beta1 with the flat rule on the first layer.",
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
    ),
    Preset(
        "lrp.epsilon_gamma_box",
        LRP,
        """Zennit's EpsilonGammaBox: ZBox on the first convolution, Gamma on the others.

    Parameters
    ----------
    low, high
        Lowest and highest input values (required): scalars or tensors broadcastable to
        the input.
    gamma
        Gamma of the convolution rule (Zennit's default 0.25).
    """,
        _gamma_box,
        hint=_HINT,
        family="lrp_composite",
        title="ε + γ + box",
        summary=(
            "Zennit's EpsilonGammaBox: the box rule (z^B, bounded to the input's range) on "
            "the input, gamma on the other convolutions, epsilon on dense layers."
        ),
        paper="Montavon et al. 2019, in Explainable AI, LNCS 11700",
    ),
]

ANALYZERS: list[Any] = list(PRESETS)
