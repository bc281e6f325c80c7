"""Layer-wise relevance propagation: the ``LRP`` analyzer, its named variants and presets.

Which rule each linear layer gets (SPEC "LRP: which rule where"), in order of priority:
``input_layer_rule`` for the layers that see the model input, ``until_layer_rule`` for
linear layers 0..``until_layer_idx`` (counted in execution order, weightless layers not
counted, as in iNNvestigate), then ``rule``. BatchNorm following a convolution (or a
Linear on 2-D data) is folded into it; any other BatchNorm gets ``bn_layer_rule``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from innspect.analyzers.base import ReverseAnalyzer
from innspect.analyzers.registry import register
from innspect.engine.reverse import Mapping, Unsupported
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.kinds import Kind, op_name
from innspect.rules.lrp import (
    AlphaBeta,
    Bounded,
    Epsilon,
    Flat,
    LinearRule,
    WSquare,
    as_rule,
)
from innspect.rules.lrp_nodes import lrp_node_mapping

Condition = Callable[[NodeInfo], bool]

# Tutorial codes of per-layer rule lists: first layer(s), then every other linear layer.
RULE_CODES = {
    "zbab": ("Bounded", "Alpha2Beta1"),
    "wwab": ("WSquare", "Alpha2Beta1"),
}


_CONV_FUNCTIONS = {
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
}


def is_dense(info: NodeInfo) -> bool:
    """A fully connected layer (nn.Linear or F.linear)."""
    if info.module is not None:
        return isinstance(info.module, nn.Linear)
    return info.node.op == "call_function" and op_name(info.node) == "linear"


def is_conv(info: NodeInfo) -> bool:
    """A convolution or transposed convolution, module or functional (BatchNorm folded in)."""
    if info.module is not None:
        return isinstance(info.module, nn.modules.conv._ConvNd)
    return info.node.op == "call_function" and op_name(info.node).startswith("conv")


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


@register
class LRP(ReverseAnalyzer):
    """Layer-wise relevance propagation with a configurable rule per layer.

    Parameters
    ----------
    rule
        A rule name ("Z", "Epsilon", "Alpha2Beta1"...), a rule object, a list with one rule
        per linear layer in execution order, a list of ``(condition, rule)`` pairs (a
        condition is a callable on ``NodeInfo``; the first match wins), or one of the codes
        "zbab" / "wwab". innspect defaults to "Z" (iNNvestigate requires a rule).
    input_layer_rule
        Rule for the linear layers that see the model input: "Flat", "WSquare", a rule,
        or ``(low, high)`` meaning ``Bounded(low, high)``.
    until_layer_idx, until_layer_rule
        Give linear layers 0..until_layer_idx (execution order) ``until_layer_rule``.
    bn_layer_rule
        Rule for BatchNorm layers that cannot be folded into the layer before (default
        ``Epsilon()``).
    **kwargs
        Neuron selection and reverse-pass options of ``ReverseAnalyzer``.
    """

    name = "lrp"
    relevance_start = True
    fuse_batchnorm = True
    # Stabiliser of the z-rule on add / average pooling (None: iNNvestigate's SafeDivide).
    node_stabilizer: ClassVar[float | None] = None

    def __init__(
        self,
        model: nn.Module,
        *,
        rule: Any = "Z",
        input_layer_rule: Any = None,
        until_layer_idx: int | None = None,
        until_layer_rule: Any = None,
        bn_layer_rule: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self._single_rule: LinearRule | None = None
        self._rule_list: list[LinearRule] | None = None
        self._conditions: list[tuple[Condition, LinearRule]] | None = None
        self.input_layer_rule = input_rule_from_spec(input_layer_rule)
        self._parse_rule(rule)
        self.until_layer_idx, self.until_layer_rule = self._parse_until(
            until_layer_idx, until_layer_rule
        )
        self.bn_layer_rule = Epsilon() if bn_layer_rule is None else as_rule(bn_layer_rule)
        self._assigned: dict[fx.Node, Mapping] | None = None
        self._assigned_graph: ModelGraph | None = None

    # -- option parsing -------------------------------------------------------------------
    def _parse_rule(self, rule: Any) -> None:
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
            self._single_rule = as_rule(rest)
        elif _is_condition_list(rule):
            self._conditions = [(cond, as_rule(r)) for cond, r in rule]
        elif isinstance(rule, list | tuple):
            if not rule:
                raise ValueError("rule is an empty list; give one rule per linear layer")
            self._rule_list = [as_rule(r) for r in rule]
        else:
            self._single_rule = as_rule(rule)

    @staticmethod
    def _parse_until(idx: Any, rule: Any) -> tuple[int | None, LinearRule | None]:
        if idx is None and rule is None:
            return None, None
        if idx is None or rule is None:
            raise ValueError(
                "until_layer_idx and until_layer_rule go together: give both (e.g. "
                "until_layer_idx=2, until_layer_rule='Flat') or neither"
            )
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise ValueError(f"until_layer_idx must be an int >= 0, got {idx!r}")
        return idx, as_rule(rule)

    # -- rule assignment ------------------------------------------------------------------
    def _linear_mapping(self, info: NodeInfo, index: int, input_layers: set[fx.Node]) -> Mapping:
        if self.input_layer_rule is not None and info.node in input_layers:
            return self.input_layer_rule
        if self.until_layer_idx is not None and index <= self.until_layer_idx:
            return self.until_layer_rule
        if self._single_rule is not None:
            return self._single_rule
        if self._rule_list is not None:
            return self._rule_list[index]
        for condition, rule in self._conditions or []:
            if condition(info):
                return rule
        return Unsupported(
            self.name,
            "no (condition, rule) pair matched this layer; end the list with a catch-all "
            "such as (lambda info: True, 'Epsilon')",
        )

    def _assign(self, graph: ModelGraph) -> dict[fx.Node, Mapping]:
        linear = graph.linear_nodes()
        if self._rule_list is not None and len(self._rule_list) != len(linear):
            raise ValueError(
                f"rule has {len(self._rule_list)} entries but the model has {len(linear)} "
                f"linear layers ({', '.join(i.name for i in linear)}); give one rule per layer"
            )
        input_layers = graph.input_layer_nodes()
        return {
            info.node: self._linear_mapping(info, index, input_layers)
            for index, info in enumerate(linear)
        }

    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        if self._assigned is None or self._assigned_graph is not graph:
            self._assigned = self._assign(graph)
            self._assigned_graph = graph
        if info.kind is Kind.LINEAR:
            return self._assigned[info.node]
        if info.kind is Kind.BATCHNORM:
            return self._batchnorm_mapping(info)
        return self._node_mapping(info)

    def _batchnorm_mapping(self, info: NodeInfo) -> Mapping:
        return self.bn_layer_rule

    def _node_mapping(self, info: NodeInfo) -> Mapping:
        return lrp_node_mapping(info, self.name, self.node_stabilizer)

    def rule_of(self, layer_name: str, example_input: torch.Tensor | None = None) -> Mapping:
        """The mapping a node (by name) gets, e.g. to check which rule a layer receives."""
        graph = self.graph(example_input)
        if layer_name not in graph.by_name:
            raise KeyError(f"no node named {layer_name!r}; nodes: {', '.join(graph.by_name)}")
        return self._mappings[graph.by_name[layer_name].node]


# -- named variants (iNNvestigate's names) ----------------------------------------------------
@register
class LRPZ(LRP):
    """LRP-Z: the basic rule, bias included."""

    name = "lrp.z"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, rule="Z", **kwargs)


@register
class LRPZIgnoreBias(LRP):
    """LRP-Z with the bias left out of the denominator."""

    name = "lrp.z_IB"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, rule="ZIgnoreBias", **kwargs)


@register
class LRPEpsilon(LRP):
    """LRP-epsilon: denominator z + epsilon * sign(z)."""

    name = "lrp.epsilon"
    bias = True

    def __init__(self, model: nn.Module, *, epsilon: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(model, rule=Epsilon(epsilon=epsilon, bias=self.bias), **kwargs)


@register
class LRPEpsilonIgnoreBias(LRPEpsilon):
    """LRP-epsilon with the bias left out of the denominator."""

    name = "lrp.epsilon_IB"
    bias = False


@register
class LRPWSquare(LRP):
    """LRP with the w^2 rule on every linear layer."""

    name = "lrp.w_square"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, rule=WSquare(), **kwargs)


@register
class LRPFlat(LRP):
    """LRP with the flat rule on every linear layer."""

    name = "lrp.flat"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, rule=Flat(), **kwargs)


@register
class LRPAlphaBeta(LRP):
    """LRP-alpha-beta; give alpha or beta (alpha - beta = 1)."""

    name = "lrp.alpha_beta"

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float | None = None,
        beta: float | None = None,
        bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, rule=AlphaBeta(alpha=alpha, beta=beta, bias=bias), **kwargs)


def _alpha_beta_variant(name: str, alpha: float, beta: float, bias: bool, doc: str) -> type:
    def __init__(self: LRP, model: nn.Module, **kwargs: Any) -> None:
        LRP.__init__(self, model, rule=AlphaBeta(alpha=alpha, beta=beta, bias=bias), **kwargs)

    cls = type(name.replace(".", "_"), (LRP,), {"name": name, "__init__": __init__, "__doc__": doc})
    return register(cls)


LRPAlpha2Beta1 = _alpha_beta_variant(
    "lrp.alpha_2_beta_1", 2, 1, True, "LRP-alpha-beta with alpha=2, beta=1, bias included."
)
LRPAlpha2Beta1IgnoreBias = _alpha_beta_variant(
    "lrp.alpha_2_beta_1_IB", 2, 1, False, "LRP-alpha-beta with alpha=2, beta=1, bias ignored."
)
LRPAlpha1Beta0 = _alpha_beta_variant(
    "lrp.alpha_1_beta_0", 1, 0, True, "LRP-alpha-beta with alpha=1, beta=0, bias included."
)
LRPAlpha1Beta0IgnoreBias = _alpha_beta_variant(
    "lrp.alpha_1_beta_0_IB", 1, 0, False, "LRP-alpha-beta with alpha=1, beta=0, bias ignored."
)


@register
class LRPZPlus(LRP):
    """LRP-z+ (iNNvestigate: AlphaBeta(1, 0) ignoring the bias)."""

    name = "lrp.z_plus"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, rule="ZPlus", **kwargs)


@register
class LRPZPlusFast(LRP):
    """LRP-z+ for non-negative inputs: positive weights only, raw input, no bias."""

    name = "lrp.z_plus_fast"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, rule="ZPlusFast", **kwargs)


def _preset_rules(epsilon: float, conv_rule: LinearRule) -> list[tuple[Condition, LinearRule]]:
    return [(is_dense, Epsilon(epsilon=epsilon, bias=True)), (is_conv, conv_rule)]


@register
class LRPSequentialPresetA(LRP):
    """Preset A: dense layers Epsilon(0.1), convolutions Alpha1Beta0 (bias included)."""

    name = "lrp.sequential_preset_a"
    conv_rule: ClassVar[tuple[float, float]] = (1, 0)
    input_rule: ClassVar[str | None] = None

    def __init__(self, model: nn.Module, *, epsilon: float = 0.1, **kwargs: Any) -> None:
        alpha, beta = self.conv_rule
        if self.input_rule is not None:
            kwargs.setdefault("input_layer_rule", self.input_rule)
        super().__init__(
            model,
            rule=_preset_rules(epsilon, AlphaBeta(alpha=alpha, beta=beta, bias=True)),
            **kwargs,
        )


@register
class LRPSequentialPresetB(LRPSequentialPresetA):
    """Preset B: dense layers Epsilon(0.1), convolutions Alpha2Beta1 (bias included)."""

    name = "lrp.sequential_preset_b"
    conv_rule = (2, 1)


@register
class LRPSequentialPresetAFlat(LRPSequentialPresetA):
    """Preset A with the flat rule on the input layer."""

    name = "lrp.sequential_preset_a_flat"
    input_rule = "Flat"


@register
class LRPSequentialPresetBFlat(LRPSequentialPresetB):
    """Preset B with the flat rule on the input layer."""

    name = "lrp.sequential_preset_b_flat"
    input_rule = "Flat"


@register
class LRPSequentialPresetBFlatUntilIdx(LRPSequentialPresetBFlat):
    """Preset B, with the flat rule on linear layers 0..until_layer_idx (and the input layer)."""

    name = "lrp.sequential_preset_b_flat_until_idx"

    def __init__(
        self, model: nn.Module, *, until_layer_idx: int | None = None, **kwargs: Any
    ) -> None:
        if until_layer_idx is not None:
            kwargs["until_layer_rule"] = Flat()
        super().__init__(model, until_layer_idx=until_layer_idx, **kwargs)
