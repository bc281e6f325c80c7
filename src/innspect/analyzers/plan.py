"""Plans as data: composites of ``(predicate, rule)`` entries and the plan they give a graph.

A method is a start signal, a postprocess and a *composite*: an ordered list of
``(predicate, rule)`` entries. Each node of the captured graph gets the rule of the first
entry whose predicate matches it, else the composite's default for its kind. The result,
``{node: rule}``, is the *plan*; ``Plan`` prints it. A rule says *what* a node computes;
how the engine computes it (a VJP, the transposed operation, running the node again) is
decided by ``innspect.rules.strategy``, not here.

A composite in a few lines (the README shows it in use)::

    from innspect.analyzers.plan import Composite, family, first_layer
    from innspect.rules.lrp import Epsilon, Flat, ZPlus

    mine = Composite([(first_layer(), Flat()), (family("conv"), ZPlus()),
                      (family("dense"), Epsilon(0.25))])
    innspect.create_analyzer("lrp", model, composite=mine)

Predicates follow Zennit's idea of matching layers by type (``zennit.composites``), with
more ways to point at a node: its kind, family, module type, name pattern, position among
the linear layers, the first or last layer, the layers that see the input. They combine
with ``&``, ``|`` and ``~``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from innspect.engine.reverse import Mapping, Unsupported
from innspect.graph.attention import WRITTEN_OUT
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.ops import Kind
from innspect.graph.ops import family as node_family
from innspect.rules.lrp import LinearRule, as_rule
from innspect.rules.lrp_nodes import lrp_node_mapping


@dataclass
class Site:
    """What a predicate sees of one node: the node and where it sits in the graph."""

    info: NodeInfo
    graph: ModelGraph
    family: str
    linear_index: int | None  # position among the linear layers (execution order)
    n_linear: int
    input_layer: bool  # a linear layer reached from the input through reshapes only


class Predicate:
    """A test on a node (``Site``); combine with ``&``, ``|``, ``~``."""

    def __init__(self, test: Callable[[Site], bool], label: str) -> None:
        self.test = test
        self.label = label

    def __call__(self, site: Site) -> bool:
        return bool(self.test(site))

    def __and__(self, other: Predicate) -> Predicate:
        return Predicate(lambda s: self(s) and other(s), f"{self.label} & {other.label}")

    def __or__(self, other: Predicate) -> Predicate:
        return Predicate(lambda s: self(s) or other(s), f"({self.label} | {other.label})")

    def __invert__(self) -> Predicate:
        return Predicate(lambda s: not self(s), f"~{self.label}")

    def __repr__(self) -> str:
        return self.label


def always() -> Predicate:
    """Every node."""
    return Predicate(lambda s: True, "always")


def kind(*kinds: Kind) -> Predicate:
    """Nodes of these kinds (``Kind.LINEAR``, ``Kind.ACTIVATION``...)."""
    wanted = set(kinds)
    return Predicate(
        lambda s: s.info.kind in wanted, "kind(" + ", ".join(k.value for k in kinds) + ")"
    )


def family(*families: str) -> Predicate:
    """Nodes of these operation families: "dense", "conv", "batchnorm", "relu", "rectifier",
    "activation", "max_pool", "average", "sum"... (``innspect.graph.ops.OPERATIONS``)."""
    wanted = set(families)
    return Predicate(lambda s: s.family in wanted, "family(" + ", ".join(families) + ")")


def module_type(*types: type) -> Predicate:
    """Nodes calling a module of these types (isinstance)."""
    names = ", ".join(t.__name__ for t in types)
    return Predicate(lambda s: isinstance(s.info.module, types), f"module_type({names})")


def functional() -> Predicate:
    """Nodes written as functions or methods (``F.linear``, ``x + y``), not module calls."""
    return Predicate(lambda s: s.info.module is None, "functional")


def written_out() -> Predicate:
    """Nodes innspect wrote out itself (attention decomposed into plain operations), which
    the user's code does not contain as such."""

    return Predicate(lambda s: bool(s.info.node.meta.get(WRITTEN_OUT)), "written_out")


def name(*patterns: str) -> Predicate:
    """Nodes whose name (module path, e.g. ``features.0``) matches a glob pattern."""
    return Predicate(
        lambda s: any(fnmatch.fnmatchcase(s.info.name, p) for p in patterns),
        "name(" + ", ".join(repr(p) for p in patterns) + ")",
    )


def layer_index(*indices: int) -> Predicate:
    """Linear layers at these positions (execution order, weightless layers not counted;
    negative positions count from the end)."""

    def test(s: Site) -> bool:
        if s.linear_index is None:
            return False
        return s.linear_index in indices or s.linear_index - s.n_linear in indices

    return Predicate(test, "layer_index(" + ", ".join(map(str, indices)) + ")")


def until_layer(index: int) -> Predicate:
    """Linear layers 0..index (execution order), iNNvestigate's ``until_layer_idx``."""
    return Predicate(
        lambda s: s.linear_index is not None and s.linear_index <= index, f"until_layer({index})"
    )


def input_layer() -> Predicate:
    """Linear layers that see the model input (through reshapes only), as iNNvestigate."""
    return Predicate(lambda s: s.input_layer, "input_layer")


def last_layer() -> Predicate:
    """The last linear layer in execution order."""
    return Predicate(
        lambda s: s.linear_index is not None and s.linear_index == s.n_linear - 1, "last_layer"
    )


def first_layer(*types: type) -> Predicate:
    """Every call of the first module of ``types`` (default: Linear and convolutions) in
    ``model.named_modules()`` order: Zennit's "first layer" (registration order)."""
    types = types or (nn.Linear, nn.modules.conv._ConvNd)
    cache: dict[int, str | None] = {}

    def test(s: Site) -> bool:
        model = s.graph.model
        if id(model) not in cache:
            cache[id(model)] = next(
                (n for n, m in model.named_modules() if isinstance(m, types)), None
            )
        first = cache[id(model)]
        return (
            first is not None and s.info.module is not None and s.info.name.split(":")[0] == first
        )

    label = ", ".join(t.__name__ for t in types)
    return Predicate(test, f"first_layer({label})")


def where(condition: Callable[[NodeInfo], bool], label: str = "") -> Predicate:
    """A predicate from any callable on ``NodeInfo`` (the ``(condition, rule)`` lists of
    iNNvestigate's ``LRP(rule=...)``)."""
    if isinstance(condition, Predicate):
        return condition
    return Predicate(lambda s: condition(s.info), label or getattr(condition, "__name__", "where"))


# A rule in a composite entry: a mapping, or a function of the site giving one (for
# refusals whose message names a neighbouring node).
RuleSpec = Mapping | Callable[[Site], Mapping]
Default = Callable[[Site], Mapping]


@dataclass
class Composite:
    """An ordered list of ``(predicate, rule)`` entries; the first match wins.

    Parameters
    ----------
    entries
        ``(predicate, rule)`` pairs. A rule is a mapping (``innspect.rules``), a rule name
        for linear layers ("Epsilon", "Alpha2Beta1"...), or a function of the ``Site``.
        An entry with a rule for linear layers only matches nodes with weights (linear
        layers and BatchNorm), whatever its predicate.
    default
        The rule of a node no entry matches (a function of the ``Site``). None: LRP's
        rules for every node that is not a linear layer (``lrp_node_mapping``) and a
        refusal for unmatched linear layers.
    name
        Shown in the printed plan.
    """

    entries: Sequence[tuple[Any, Any]] = ()
    default: Default | None = None
    name: str = ""
    _parsed: list[tuple[Predicate, RuleSpec]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parsed = []
        for entry in self.entries:
            if not (isinstance(entry, tuple | list) and len(entry) == 2):
                raise ValueError(f"a composite entry is a (predicate, rule) pair, got {entry!r}")
            predicate, rule = entry
            if not callable(predicate):
                raise TypeError(f"a composite's predicate must be callable, got {predicate!r}")
            if isinstance(rule, Mapping) or (callable(rule) and not isinstance(rule, type)):
                spec = rule
            else:
                spec = as_rule(rule)
            parsed.append((where(predicate), spec))
        self._parsed = parsed

    def then(self, *entries: tuple[Any, Any]) -> Composite:
        """A composite with ``entries`` tried after this one's (same default)."""
        return Composite([*self.entries, *entries], self.default, self.name)

    def before(self, *entries: tuple[Any, Any]) -> Composite:
        """A composite with ``entries`` tried before this one's (same default)."""
        return Composite([*entries, *self.entries], self.default, self.name)

    def rule_for(self, site: Site, method: str) -> Mapping:
        """The rule the composite gives ``site``."""
        weighted = site.info.kind in (Kind.LINEAR, Kind.BATCHNORM)
        for predicate, rule in self._parsed:
            # A rule for linear layers only ever matches layers with weights.
            if isinstance(rule, LinearRule) and not weighted:
                continue
            if predicate(site):
                return rule if isinstance(rule, Mapping) else rule(site)
        if self.default is not None:
            return self.default(site)
        return lrp_default(site, method)

    def plan(self, graph: ModelGraph, method: str) -> dict[fx.Node, Mapping]:
        """``{node: rule}`` for every node of ``graph``."""
        return {site.info.node: self.rule_for(site, method) for site in sites(graph)}


def lrp_default(site: Site, method: str, stabilizer: float | None = None) -> Mapping:
    """LRP's rules for nodes no entry matched: a refusal for linear layers (say which rule
    they get), iNNvestigate's z-rule / pass-through / gradient for the others."""
    if site.info.kind is Kind.LINEAR:
        return Unsupported(
            method,
            "no (condition, rule) pair matched this layer; end the list with a catch-all "
            "such as (lambda info: True, 'Epsilon')",
        )
    return lrp_node_mapping(site.info, method, stabilizer)


def sites(graph: ModelGraph) -> list[Site]:
    """Every node of ``graph`` with what predicates look at."""
    linear = {info.node: index for index, info in enumerate(graph.linear_nodes())}
    inputs = graph.input_layer_nodes()
    return [
        Site(
            info=info,
            graph=graph,
            family=node_family(info.node, info.module),
            linear_index=linear.get(info.node),
            n_linear=len(linear),
            input_layer=info.node in inputs,
        )
        for info in graph.nodes
    ]


def rule_label(rule: Mapping) -> str:
    """A short description of a rule for the printed plan."""
    if isinstance(rule, Unsupported):
        return f"refused: {rule.hint}" if rule.hint else "refused"
    text = repr(rule)
    return text if not text.startswith("<") else type(rule).__name__


@dataclass
class Plan:
    """The rule of every node that can carry a signal, in execution order.

    ``rows`` are ``(node name, operation, kind, rule)``; ``str(plan)`` is a table,
    ``plan.rules`` maps node names to rules.
    """

    method: str
    rows: list[tuple[str, str, str, Mapping]]

    @property
    def rules(self) -> dict[str, Mapping]:
        return {row[0]: row[3] for row in self.rows}

    def __str__(self) -> str:
        if not self.rows:
            return f"plan of {self.method}: no node carries a signal"
        width = [max(len(r[i]) for r in self.rows) for i in range(3)]
        lines = [f"plan of {self.method} (node, operation, kind, rule):"]
        for node_name, operation, node_kind, rule in self.rows:
            lines.append(
                f"  {node_name:<{width[0]}}  {operation:<{width[1]}}  {node_kind:<{width[2]}}  "
                f"{rule_label(rule)}"
            )
        return "\n".join(lines)


def build_plan(method: str, graph: ModelGraph, rules: dict[fx.Node, Mapping]) -> Plan:
    """The printable plan of ``rules`` on ``graph`` (nodes carrying a signal only)."""
    rows = [
        (info.name, info.operation, info.kind.value, rules[info.node])
        for info in graph.nodes
        if info.depends_on_input
        and not info.is_metadata
        and info.node is not graph.input_node
        and info.node in rules
    ]
    return Plan(method, rows)
