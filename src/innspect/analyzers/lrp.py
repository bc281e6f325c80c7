"""Layer-wise relevance propagation (Bach et al. 2015): the ``LRP`` analyzer and its presets.

Which rule each linear layer gets (SPEC "LRP: which rule where") is a composite
(``innspect.analyzers.plan``) built from the options, in order of priority:
``input_layer_rule`` for the layers that see the model input, ``until_layer_rule`` for
linear layers 0..``until_layer_idx`` (counted in execution order, weightless layers not
counted, as in iNNvestigate), then ``rule``. BatchNorm following a convolution (or a
Linear on 2-D data) is folded into it; any other BatchNorm gets ``bn_layer_rule``. The
iNNvestigate-named variants (``lrp.z``, ``lrp.epsilon``, the sequential presets...) are
rows of ``PRESETS``: ``LRP`` with options fixed or derived.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from innspect.analyzers.composed import ComposedAnalyzer
from innspect.analyzers.plan import (
    Composite,
    Site,
    family,
    input_layer,
    kind,
    layer_index,
    lrp_default,
    until_layer,
    where,
)
from innspect.analyzers.presets import Preset
from innspect.errors import OptionError
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.ops import Kind
from innspect.graph.ops import family as node_family
from innspect.rules.lrp import AlphaBeta, Bounded, Epsilon, Flat, LinearRule, Z, as_rule
from innspect.util.checks import check_int

Condition = Callable[[NodeInfo], bool]

# Tutorial codes of per-layer rule lists: first layer(s), then every other linear layer.
RULE_CODES = {
    "zbab": ("Bounded", "Alpha2Beta1"),
    "wwab": ("WSquare", "Alpha2Beta1"),
}
_LINEAR = kind(Kind.LINEAR)
# iNNvestigate's bn_layer_fuse_mode: a BatchNorm given a rule is one linear layer (x * s + t).
BN_FUSE_MODES = ("one_linear",)


def is_dense(info: NodeInfo) -> bool:
    """A fully connected layer (nn.Linear or F.linear)."""
    return node_family(info.node, info.module) == "dense"


def is_conv(info: NodeInfo) -> bool:
    """A convolution or transposed convolution, module or functional (BatchNorm folded in)."""
    return node_family(info.node, info.module) == "conv"


def _is_condition_list(rule: Any) -> bool:
    return (
        isinstance(rule, list | tuple)
        and len(rule) > 0
        and all(
            isinstance(item, tuple | list) and len(item) == 2 and callable(item[0]) for item in rule
        )
    )


def input_rule_from_spec(spec: Any) -> LinearRule | None:
    """``input_layer_rule``: None, "Flat", "WSquare", a rule, or (low, high) -> Bounded."""
    if spec is None:
        return None
    if isinstance(spec, tuple | list) and len(spec) == 2 and not isinstance(spec[0], str):
        low, high = spec
        return Bounded(low=low, high=high)
    try:
        return as_rule(spec)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"input_layer_rule must be 'Flat', 'WSquare', a rule or a (low, high) pair; {error}"
        ) from error


_UNSET: Any = object()


class LRP(ComposedAnalyzer):
    """Layer-wise relevance propagation with a configurable rule per layer.

    Parameters
    ----------
    rule
        A rule name ("Z", "Epsilon", "Alpha2Beta1"...), a rule object, a list with one rule
        per linear layer in execution order, a list of ``(condition, rule)`` pairs (a
        condition is a callable on ``NodeInfo`` or a predicate of
        ``innspect.analyzers.plan``; the first match wins), or one of the codes
        "zbab" / "wwab". innspect defaults to "Z" (iNNvestigate requires a rule).
    input_layer_rule
        Rule for the linear layers that see the model input: "Flat", "WSquare", a rule,
        or ``(low, high)`` meaning ``Bounded(low, high)``.
    until_layer_idx, until_layer_rule
        Give linear layers 0..until_layer_idx (execution order) ``until_layer_rule``.
    bn_layer_rule
        Rule for BatchNorm layers that cannot be folded into the layer before (default
        ``Epsilon()``).
    bn_layer_fuse_mode
        iNNvestigate's "one_linear" (a BatchNorm given a rule is one linear layer); its
        "two_linear" is refused.
    composite
        A whole ``Composite`` instead of the options above (every node's rule as data).
    **kwargs
        Neuron selection and reverse-pass options of ``ReverseAnalyzer``.
    """

    name = "lrp"
    family = "lrp_rule"
    title = "LRP (default: z)"
    summary = "LRP without a rule given, which is the z-rule (iNNvestigate raises instead)."
    paper = "Bach et al. 2015, PLoS ONE 10(7): e0130140"
    relevance_start = True
    fuse_batchnorm = True
    # Stabiliser of the z-rule on add / average pooling (None: iNNvestigate's SafeDivide).
    node_stabilizer: ClassVar[float | None] = None

    def __init__(
        self,
        model: nn.Module,
        *,
        rule: Any = _UNSET,
        input_layer_rule: Any = None,
        until_layer_idx: int | None = None,
        until_layer_rule: Any = None,
        bn_layer_rule: Any = None,
        bn_layer_fuse_mode: str = "one_linear",
        composite: Composite | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if bn_layer_fuse_mode not in BN_FUSE_MODES:
            raise ValueError(
                f"bn_layer_fuse_mode={bn_layer_fuse_mode!r} is not supported: innspect treats "
                "a BatchNorm that gets bn_layer_rule as one linear layer ('one_linear'); "
                "iNNvestigate's 'two_linear' split is not implemented"
            )
        self._rule_count: int | None = None
        if composite is not None:
            given = {
                "rule": rule is not _UNSET,
                "input_layer_rule": input_layer_rule is not None,
                "until_layer_idx": until_layer_idx is not None,
                "until_layer_rule": until_layer_rule is not None,
                "bn_layer_rule": bn_layer_rule is not None,
            }
            clash = [key for key, present in given.items() if present]
            if clash:
                raise TypeError(
                    f"{self.name} fixes its rules; it does not take {', '.join(clash)}= "
                    "(its composite says every node's rule)"
                )
            if not isinstance(composite, Composite):
                raise TypeError(
                    f"composite must be an innspect.analyzers.plan.Composite, got "
                    f"{type(composite).__name__}"
                )
            self.composite = composite
            return
        self.input_layer_rule = input_rule_from_spec(input_layer_rule)
        rule = "Z" if rule is _UNSET else rule
        entries = self._rule_entries(rule)
        self.until_layer_idx, self.until_layer_rule = self._parse_until(
            until_layer_idx, until_layer_rule
        )
        self.bn_layer_rule = Epsilon() if bn_layer_rule is None else as_rule(bn_layer_rule)
        first: list[tuple[Any, Any]] = []
        if self.input_layer_rule is not None:
            first.append((_LINEAR & input_layer(), self.input_layer_rule))
        if self.until_layer_idx is not None:
            first.append((_LINEAR & until_layer(self.until_layer_idx), self.until_layer_rule))
        self.composite = Composite(
            [*first, *entries, (kind(Kind.BATCHNORM), self.bn_layer_rule)],
            default=self._default,
            name=self.name,
        )

    def _default(self, site: Site) -> Any:
        return lrp_default(site, self.name, self.node_stabilizer)

    # -- option parsing -------------------------------------------------------------------
    def _rule_entries(self, rule: Any) -> list[tuple[Any, Any]]:
        """The composite entries for linear layers that ``rule`` describes."""
        if rule is None:
            raise ValueError("LRP needs rule=..., e.g. 'Z', 'Epsilon' or a list of rules")
        if isinstance(rule, str) and rule.lower() in RULE_CODES:
            first, rest = RULE_CODES[rule.lower()]
            first_rule = as_rule(first)
            if self.input_layer_rule is not None:
                if type(self.input_layer_rule) is not type(first_rule):
                    raise ValueError(
                        f"rule={rule!r} sets the input layer rule to {first}; "
                        f"input_layer_rule={self.input_layer_rule!r} contradicts it "
                        "(for 'zbab' give the bounds as input_layer_rule=(low, high))"
                    )
                first_rule = self.input_layer_rule
            self.input_layer_rule = first_rule
            return [(_LINEAR, as_rule(rest))]
        if _is_condition_list(rule):
            return [(_LINEAR & where(cond), as_rule(r)) for cond, r in rule]
        if isinstance(rule, list | tuple):
            if not rule:
                raise ValueError("rule is an empty list; give one rule per linear layer")
            self._rule_count = len(rule)
            return [(_LINEAR & layer_index(i), as_rule(r)) for i, r in enumerate(rule)]
        return [(_LINEAR, as_rule(rule))]

    @staticmethod
    def _parse_until(idx: Any, rule: Any) -> tuple[int | None, LinearRule | None]:
        if idx is None and rule is None:
            return None, None
        if idx is None or rule is None:
            raise ValueError(
                "until_layer_idx and until_layer_rule go together: give both (e.g. "
                "until_layer_idx=2, until_layer_rule='Flat') or neither"
            )
        return check_int("until_layer_idx", idx, 0), as_rule(rule)

    def _check_plan(self, graph: ModelGraph) -> None:
        linear = graph.linear_nodes()
        until = getattr(self, "until_layer_idx", None)  # composites built on LRP have none
        # A model without linear layers has nothing to give the rule (a pooling-only model).
        if until is not None and linear and until >= len(linear):
            raise OptionError(
                f"{self.name}: until_layer_idx={until} but the model has "
                f"{len(linear)} linear layers (indices 0 .. {len(linear) - 1}: "
                f"{', '.join(i.name for i in linear)})"
            )
        if self._rule_count is not None and self._rule_count != len(linear):
            raise ValueError(
                f"rule has {self._rule_count} entries but the model has {len(linear)} "
                f"linear layers ({', '.join(i.name for i in linear)}); give one rule per layer"
            )


# -- iNNvestigate's named variants and presets, as data ------------------------------------
def _preset_conditions(epsilon: float, alpha: float, beta: float) -> list[tuple[Any, Any]]:
    # iNNvestigate's presets: Epsilon on dense layers, AlphaBeta (bias kept) on convolutions.
    return [
        (family("dense"), Epsilon(epsilon=epsilon, bias=True)),
        (family("conv"), AlphaBeta(alpha=alpha, beta=beta, bias=True)),
    ]


def _sequential(alpha: float, beta: float, flat_input: bool) -> Callable[..., dict[str, Any]]:
    def derive(epsilon: float = 0.1) -> dict[str, Any]:
        options: dict[str, Any] = {"rule": _preset_conditions(epsilon, alpha, beta)}
        if flat_input:
            options["input_layer_rule"] = "Flat"
        return options

    return derive


def _until_idx(epsilon: float = 0.1, until_layer_idx: int | None = None) -> dict[str, Any]:
    options = _sequential(2, 1, True)(epsilon)
    if until_layer_idx is not None:
        options.update(until_layer_idx=until_layer_idx, until_layer_rule=Flat())
    return options


def _alpha_beta_variant(
    name: str, alpha: float, beta: float, bias: bool, **described: str
) -> Preset:
    """AlphaBeta(alpha, beta) with the bias included or ignored; ``described``: the
    preset's title, summary and iNNvestigate name."""
    kept = "included" if bias else "ignored"
    other = name[: -len("_IB")] if not bias else f"{name}_IB"
    return Preset(
        name,
        LRP,
        f"LRP-alpha-beta with alpha={alpha}, beta={beta}, bias {kept}.",
        lambda: {"rule": AlphaBeta(alpha=alpha, beta=beta, bias=bias)},
        fixed={"alpha": alpha, "beta": beta, "bias": bias},
        hint=f"use {other} or lrp.alpha_beta(alpha=..., beta=..., bias=...)",
        family="lrp_rule",
        paper=LRP.paper,
        **described,
    )


PRESETS: list[Preset] = [
    Preset(
        "lrp.z",
        LRP,
        "LRP-Z: the basic rule, bias included (bias=False: lrp.z_IB).",
        lambda bias=True: {"rule": Z(bias=bias)},
        family="lrp_rule",
        title="z",
        summary=(
            "The z-rule (LRP-0): each input gets relevance in proportion to its contribution "
            "x_i w_ij to the neuron's value, bias included."
        ),
        paper="Bach et al. 2015, PLoS ONE 10(7): e0130140",
        innvestigate="LRPZ",
    ),
    Preset(
        "lrp.z_IB",
        LRP,
        "LRP-Z with the bias left out of the denominator.",
        lambda: {"rule": "ZIgnoreBias"},
        fixed={"bias": False},
        hint="use lrp.z for the bias included",
        family="lrp_rule",
        title="z, bias ignored",
        summary="The z-rule with the bias left out of the denominator.",
        paper="Bach et al. 2015, PLoS ONE 10(7): e0130140",
        innvestigate="LRPZIgnoreBias",
    ),
    Preset(
        "lrp.epsilon",
        LRP,
        "LRP-epsilon: denominator z + epsilon * sign(z).",
        lambda epsilon=1e-7, bias=True: {"rule": Epsilon(epsilon=epsilon, bias=bias)},
        family="lrp_rule",
        title="ε",
        summary=(
            "The z-rule with a small stabiliser in the denominator (epsilon=1e-7) that "
            "absorbs weak or contradictory contributions."
        ),
        paper="Bach et al. 2015, PLoS ONE 10(7): e0130140",
        innvestigate="LRPEpsilon",
    ),
    Preset(
        "lrp.epsilon_IB",
        LRP,
        "LRP-epsilon with the bias left out of the denominator.",
        lambda epsilon=1e-7: {"rule": Epsilon(epsilon=epsilon, bias=False)},
        fixed={"bias": False},
        hint="use lrp.epsilon for the bias included",
        family="lrp_rule",
        title="ε, bias ignored",
        summary="Epsilon with the bias left out of the denominator.",
        paper="Bach et al. 2015, PLoS ONE 10(7): e0130140",
        innvestigate="LRPEpsilonIgnoreBias",
    ),
    Preset(
        "lrp.w_square",
        LRP,
        "LRP with the w^2 rule on every linear layer.",
        lambda: {"rule": "WSquare"},
        family="lrp_rule",
        title="w²",
        summary=(
            "Relevance shared in proportion to squared weights, whatever the input: a map of "
            "where the network looks in general."
        ),
        paper="Montavon et al. 2017, Pattern Recognition 65 (arXiv 1512.02479)",
        innvestigate="LRPWSquare",
    ),
    Preset(
        "lrp.flat",
        LRP,
        "LRP with the flat rule on every linear layer.",
        lambda: {"rule": Flat()},
        family="lrp_rule",
        title="flat",
        summary="Relevance spread uniformly over each neuron's receptive field.",
        paper="Lapuschkin et al. 2019, Nature Communications 10: 1096",
        innvestigate="LRPFlat",
    ),
    Preset(
        "lrp.alpha_beta",
        LRP,
        "LRP-alpha-beta; give alpha or beta (alpha - beta = 1).",
        lambda alpha=None, beta=None, bias=True: {
            "rule": AlphaBeta(alpha=alpha, beta=beta, bias=bias)
        },
        family="lrp_rule",
        title="α-β (α=2, β=1)",
        summary=(
            "Positive contributions counted alpha times, negative ones beta times (the demo "
            "uses alpha=2, beta=1, as lrp.alpha_2_beta_1)."
        ),
        paper="Bach et al. 2015, PLoS ONE 10(7): e0130140",
        innvestigate="LRPAlphaBeta",
    ),
    _alpha_beta_variant(
        "lrp.alpha_2_beta_1",
        2,
        1,
        True,
        title="α2β1",
        summary="Alpha-beta with alpha=2, beta=1, bias included.",
        innvestigate="LRPAlpha2Beta1",
    ),
    _alpha_beta_variant(
        "lrp.alpha_2_beta_1_IB",
        2,
        1,
        False,
        title="α2β1, bias ignored",
        summary="Alpha-beta with alpha=2, beta=1, bias ignored.",
        innvestigate="LRPAlpha2Beta1IgnoreBias",
    ),
    _alpha_beta_variant(
        "lrp.alpha_1_beta_0",
        1,
        0,
        True,
        title="α1β0",
        summary="Alpha-beta with alpha=1, beta=0: only positive contributions, bias included.",
        innvestigate="LRPAlpha1Beta0",
    ),
    _alpha_beta_variant(
        "lrp.alpha_1_beta_0_IB",
        1,
        0,
        False,
        title="α1β0, bias ignored",
        summary="Alpha-beta with alpha=1, beta=0, bias ignored.",
        innvestigate="LRPAlpha1Beta0IgnoreBias",
    ),
    Preset(
        "lrp.z_plus",
        LRP,
        "LRP-z+ (iNNvestigate: AlphaBeta(1, 0) ignoring the bias).",
        lambda: {"rule": "ZPlus"},
        fixed={"bias": False},
        hint="z+ ignores the bias; use lrp.alpha_1_beta_0 to keep it",
        family="lrp_rule",
        title="z+",
        summary=(
            "z+: only positive contributions count, bias ignored (Deep Taylor's rule for ReLU"
            " layers)."
        ),
        paper="Montavon et al. 2017, Pattern Recognition 65 (arXiv 1512.02479)",
        innvestigate="LRPZPlus",
    ),
    Preset(
        "lrp.z_plus_fast",
        LRP,
        "LRP-z+ for non-negative inputs: positive weights only, raw input, no bias.",
        lambda: {"rule": "ZPlusFast"},
        fixed={"bias": False},
        hint="z+ ignores the bias; use lrp.alpha_1_beta_0 to keep it",
        family="lrp_rule",
        title="z+ fast",
        summary="z+ for non-negative inputs: positive weights times the raw input.",
        paper="Montavon et al. 2017, Pattern Recognition 65 (arXiv 1512.02479)",
        innvestigate="LRPZPlusFast",
    ),
    Preset(
        "lrp.sequential_preset_a",
        LRP,
        "Preset A: dense layers Epsilon(0.1), convolutions Alpha1Beta0 (bias included).",
        _sequential(1, 0, False),
        family="lrp_composite",
        title="preset A",
        summary="Preset A: epsilon on dense layers, alpha1-beta0 on convolutions.",
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
        innvestigate="LRPSequentialPresetA",
    ),
    Preset(
        "lrp.sequential_preset_b",
        LRP,
        "Preset B: dense layers Epsilon(0.1), convolutions Alpha2Beta1 (bias included).",
        _sequential(2, 1, False),
        family="lrp_composite",
        title="preset B",
        summary="Preset B: epsilon on dense layers, alpha2-beta1 on convolutions.",
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
        innvestigate="LRPSequentialPresetB",
    ),
    Preset(
        "lrp.sequential_preset_a_flat",
        LRP,
        "Preset A with the flat rule on the input layer.",
        _sequential(1, 0, True),
        fixed={"input_layer_rule": "Flat"},
        hint="the _flat presets put Flat on the input layer; use the preset without _flat",
        family="lrp_composite",
        title="preset A, flat input",
        summary="Preset A with the flat rule on the input layer.",
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
        innvestigate="LRPSequentialPresetAFlat",
    ),
    Preset(
        "lrp.sequential_preset_b_flat",
        LRP,
        "Preset B with the flat rule on the input layer.",
        _sequential(2, 1, True),
        fixed={"input_layer_rule": "Flat"},
        hint="the _flat presets put Flat on the input layer; use the preset without _flat",
        family="lrp_composite",
        title="preset B, flat input",
        summary="Preset B with the flat rule on the input layer.",
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
        innvestigate="LRPSequentialPresetBFlat",
    ),
    Preset(
        "lrp.sequential_preset_b_flat_until_idx",
        LRP,
        "Preset B, with the flat rule on linear layers 0..until_layer_idx (and the input layer).",
        _until_idx,
        fixed={"input_layer_rule": "Flat"},
        hint="the _flat presets put Flat on the input layer; use the preset without _flat",
        family="lrp_composite",
        title="preset B, flat to layer 1",
        summary=(
            "Preset B with the flat rule on the first linear layers (the demo: "
            "until_layer_idx=1, the first two)."
        ),
        paper="Kohlbrenner et al. 2020, IJCNN (arXiv 1910.09840)",
    ),
]

ANALYZERS: list[Any] = [LRP, *PRESETS]
