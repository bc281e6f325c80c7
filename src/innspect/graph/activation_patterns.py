"""Element-wise activations written out in primitives, recognised by what they compute.

GPT-2's ``gelu_new`` (``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``), quick GELU
(``x sigmoid(1.702 x)``, CLIP), a hand-written SiLU (``x sigmoid(x)``) or softplus
(``log(1 + exp(x))``) are one activation to the rules: written out, the product
``0.5 x (1 + tanh(...))`` got the uniform product rule and its ``+ 1`` absorbed relevance
under AttnLRP (Achtibat et al. 2024), where the activation gets the identity rule.

A region is a set of element-wise nodes (products, sums, powers, tanh, sigmoid, exp, log,
erf... with number constants) computing one output from one input, whose intermediate
values are used nowhere else. It is replaced by the activation of ``PATTERNS`` it equals
on a grid of probe values, not by its spelling: ``x * sigmoid(1.702 * x)`` and
``sigmoid(x * 1.702) * x`` are both quick GELU, while ``x * sigmoid(y)`` (two inputs) or
``x * sigmoid(1.5 * x)`` (another function) are left as they are.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from innspect.graph.ops import op_name


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """Quick GELU ``x sigmoid(1.702 x)`` (Hendrycks & Gimpel 2016, CLIP's activation)."""
    return x * torch.sigmoid(1.702 * x)


# name: (the function the region must equal, the call that replaces it). The softplus
# replacement has no threshold: the same log(1 + exp(x)) as the primitives it replaces.
PATTERNS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable, dict[str, Any]]] = {
    "gelu_tanh": (
        functools.partial(F.gelu, approximate="tanh"),
        F.gelu,
        {"approximate": "tanh"},
    ),
    "gelu": (F.gelu, F.gelu, {}),
    "silu": (F.silu, F.silu, {}),
    "quick_gelu": (quick_gelu, quick_gelu, {}),
    "softplus": (F.softplus, F.softplus, {"threshold": math.inf}),
}

# Element-wise operations a written-out activation is made of (op_name spellings).
_ELEMENTWISE = {
    "mul",
    "add",
    "sub",
    "rsub",
    "truediv",
    "div",
    "neg",
    "pow",
    "square",
    "tanh",
    "sigmoid",
    "exp",
    "log",
    "log1p",
    "sqrt",
    "erf",
}
# Probe values: both signs, the tails and the bend around 0 (a look-alike differs somewhere).
_PROBES = torch.cat([torch.linspace(-8.0, 8.0, 161), torch.tensor([-0.37, 0.013, 0.61, 2.9])])
_TOLERANCE = 1e-10


def replace_activations(gm: fx.GraphModule) -> None:
    """Replace each written-out activation of ``PATTERNS`` by one call of it."""
    erased: set[fx.Node] = set()
    for root in reversed(list(gm.graph.nodes)):
        if root in erased or not _elementwise(root):
            continue
        region, source = _region(root)
        if source is None or len(region) < 2:
            continue
        name = _which(region, source, root)
        if name is None:
            continue
        _, function, kwargs = PATTERNS[name]
        with gm.graph.inserting_before(root):
            replacement = gm.graph.call_function(function, (source,), dict(kwargs))
        replacement.meta = dict(root.meta)
        root.replace_all_uses_with(replacement)
        for node in reversed(list(gm.graph.nodes)):  # users before their arguments
            if node in region:
                gm.graph.erase_node(node)
                erased.add(node)


def _elementwise(node: fx.Node) -> bool:
    if node.op not in ("call_function", "call_method") or op_name(node) not in _ELEMENTWISE:
        return False
    # Number constants only: a tensor constant (a learned scale) is no fixed activation.
    constants: list[object] = []
    fx.node.map_aggregate((node.args, node.kwargs), constants.append)
    return all(isinstance(c, fx.Node | int | float) for c in constants if c is not None)


def _region(root: fx.Node) -> tuple[set[fx.Node], fx.Node | None]:
    """The element-wise nodes computing ``root`` whose values only ``root`` needs, and the
    one node they read (None where they read several)."""
    region = {root}
    changed = True
    while changed:
        changed = False
        for node in list(region):
            for arg in node.all_input_nodes:
                if arg not in region and _elementwise(arg) and set(arg.users) <= region:
                    region.add(arg)
                    changed = True
    sources = {a for n in region for a in n.all_input_nodes if a not in region}
    return region, (sources.pop() if len(sources) == 1 else None)


def _which(region: set[fx.Node], source: fx.Node, root: fx.Node) -> str | None:
    """The pattern the region computes, evaluated on the probe values (None if none)."""
    probes = _PROBES.to(torch.float64)
    values: dict[fx.Node, Any] = {source: probes}
    ordered = [n for n in root.graph.nodes if n in region]
    try:
        for node in ordered:
            args = fx.node.map_arg(node.args, values.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
            values[node] = _call(node, args, kwargs)
    except Exception:  # noqa: BLE001 - a region that does not run on probes is no pattern
        return None
    result = values[root]
    if not isinstance(result, torch.Tensor) or result.shape != probes.shape:
        return None
    for name, (reference, _, _) in PATTERNS.items():
        expected = reference(probes)
        if torch.allclose(result, expected, rtol=_TOLERANCE, atol=_TOLERANCE):
            return name
    return None


def _call(node: fx.Node, args: Any, kwargs: Any) -> Any:
    if node.op == "call_method":
        self, *rest = args
        return getattr(self, str(node.target))(*rest, **kwargs)
    target = node.target
    if target is operator.truediv or callable(target):
        return target(*args, **kwargs)
    raise TypeError(target)
