"""PatternNet and PatternAttribution (Kindermans et al. 2018, arXiv 1705.05598).

Both are the gradient's reverse walk with each linear layer's weight replaced: by its
pattern ``A`` (PatternNet: the signal estimate ``A y``) or by ``A * W`` (PatternAttribution,
element-wise; iNNvestigate 1.0.9's ``PatternAttribution._prepare_pattern``; the input is not
multiplied). ReLU masks of the forward pass are kept (the activation's gradient), max
pooling and every other node map by their gradient, BatchNorm after a convolution is folded
first, and the walk starts from the selected output's value, like iNNvestigate. Bottleneck
projection (``reverse_project_bottleneck_layers``) is on by default, as in iNNvestigate,
since products of patterns over many layers overflow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.analyzers.api import Explanation
from innspect.analyzers.composed import ComposedAnalyzer
from innspect.analyzers.plan import Composite, Site, always, kind
from innspect.engine.reverse import Mapping, NodeContext
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph
from innspect.graph.linear_ops import LinearOp
from innspect.graph.ops import Kind
from innspect.patterns.computer import PatternComputer, load_patterns
from innspect.patterns.statistics import PATTERN_TYPES
from innspect.rules.basic import GRADIENT


class PatternLinear(Mapping):
    """The transposed layer with the weight replaced by ``analyzer``'s pattern tensor."""

    def __init__(self, analyzer: PatternNet, name: str, op: LinearOp) -> None:
        self.analyzer, self.name, self.op = analyzer, name, op

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        weight = self.analyzer._weight_for(self.name, self.op)
        inputs = ctx.inputs
        signal = self.op.transpose(ctx.signal, weight, inputs[0].detach())
        return [signal] + [None] * (len(inputs) - 1)

    def __repr__(self) -> str:
        return f"{type(self.analyzer).__name__}.pattern('{self.name}')"


class PatternNet(ComposedAnalyzer):
    """PatternNet: the signal direction of each layer's output, propagated back.

    Parameters
    ----------
    patterns
        ``{layer name: pattern}`` (numpy or tensors in the weight's shape, e.g.
        ``PatternComputer.compute(...)``), a PatternComputer, or the path of a file written by
        ``PatternComputer.save_npz`` / ``innspect patterns compute``. Without it, call
        ``fit(data)`` first.
    pattern_type
        The type ``fit`` computes: "relu" by default (iNNvestigate 2.x's code; 1.0.9's
        ``_fit_generator`` defaulted to "linear").
    reverse_project_bottleneck_layers
        On by default (iNNvestigate's default for these methods).
    """

    name = "pattern.net"
    family = "pattern"
    title = "PatternNet"
    summary = (
        "The signal direction each layer detects (its pattern, learned from data), propagated"
        " back: what in the input the network responds to."
    )
    paper = "Kindermans et al. 2018, ICLR (arXiv 1705.05598)"
    innvestigate = "PatternNet"
    is_trainable = True
    relevance_start = True
    fuse_batchnorm = True

    def __init__(
        self,
        model: nn.Module,
        *,
        patterns: Any = None,
        pattern_type: str = "relu",
        reverse_project_bottleneck_layers: bool | Sequence[float] = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model, reverse_project_bottleneck_layers=reverse_project_bottleneck_layers, **kwargs
        )

        if pattern_type not in PATTERN_TYPES:
            raise InputError(f"pattern_type must be one of {PATTERN_TYPES}, got {pattern_type!r}")
        self.pattern_type = pattern_type
        # Kernels get their pattern; everything else (ReLU masks, max pooling, BatchNorm
        # that could not be folded, additions...) maps like the gradient.
        self.composite = Composite(
            [(kind(Kind.LINEAR), self._pattern_rule), (always(), GRADIENT)], name=self.name
        )
        self._options.pop("patterns", None)  # kept as arrays by get_state, not as config
        self.patterns: dict[str, np.ndarray] | None = None
        self._weights: dict[str, torch.Tensor] = {}
        if patterns is not None:
            self.set_patterns(patterns)

    # -- patterns -----------------------------------------------------------------------
    def set_patterns(self, patterns: Any) -> None:
        """Use ``patterns`` (a dict, a PatternComputer or a file path; see the class)."""

        if isinstance(patterns, PatternComputer):
            patterns = patterns.patterns()
        elif isinstance(patterns, str | os.PathLike):
            patterns = load_patterns(patterns)
        if not isinstance(patterns, dict):
            raise InputError(
                "patterns must be a dict {layer name: array}, a PatternComputer or a patterns "
                f"file, got {type(patterns).__name__}"
            )
        self.patterns = {
            str(k): np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
            for k, v in patterns.items()
        }
        self._weights = {}
        self._checked = False

    def fit(
        self,
        X: Any,
        batch_size: int = 32,
        pattern_type: str | None = None,
        verbose: bool = False,
    ) -> None:
        """Compute the patterns on ``X``: an array, a tensor, ``(X, Y)``, an iterable of
        batches or ``(x, y)`` pairs, or a DataLoader."""

        if pattern_type is not None:
            self.pattern_type = pattern_type
        computer = PatternComputer(self.model, self.pattern_type)
        self.set_patterns(computer.compute_generator(X, verbose=verbose, batch_size=batch_size))

    def fit_generator(self, generator: Any, verbose: bool = False, **kwargs: Any) -> None:
        """``fit`` on a stream of batches (iNNvestigate's name)."""
        self.fit(generator, verbose=verbose, **kwargs)

    def _check_patterns(self, graph: ModelGraph) -> None:
        if self.patterns is None:
            raise InputError(
                f"{self.name} has no patterns yet: call analyzer.fit(X) (or fit(data loader)) "
                "first, or create it with patterns=PatternComputer(...).compute(X) or "
                "patterns='patterns.npz'"
            )
        if getattr(self, "_checked", False):
            return
        expected = {
            i.name: tuple(graph.linear_op(i).weight.shape)
            for i in graph.nodes
            if i.kind is Kind.LINEAR and i.depends_on_input
        }
        given = {k: tuple(v.shape) for k, v in self.patterns.items()}
        if given != expected:
            missing = sorted(set(expected) - set(given))
            extra = sorted(set(given) - set(expected))
            wrong = sorted(k for k in set(given) & set(expected) if given[k] != expected[k])
            raise InputError(
                "these patterns belong to another architecture: "
                + "; ".join(
                    part
                    for part in (
                        f"layers without a pattern: {missing}" if missing else "",
                        f"patterns of unknown layers: {extra}" if extra else "",
                        "shape mismatches: "
                        + ", ".join(f"{k} {given[k]} vs weight {expected[k]}" for k in wrong)
                        if wrong
                        else "",
                    )
                    if part
                )
                + f". The model's linear layers: {expected}"
            )
        self._checked = True

    def _pattern_weight(self, pattern: torch.Tensor, op: LinearOp) -> torch.Tensor:
        return pattern

    def _weight_for(self, name: str, op: LinearOp) -> torch.Tensor:
        weight = self._weights.get(name)
        if weight is None:
            assert self.patterns is not None
            w = op.weight.detach()
            pattern = torch.as_tensor(self.patterns[name], device=w.device, dtype=w.dtype)
            weight = self._weights[name] = self._pattern_weight(pattern, op)
        return weight

    # -- the walk -----------------------------------------------------------------------
    def _pattern_rule(self, site: Site) -> Mapping:
        if not site.info.depends_on_input:
            return GRADIENT
        return PatternLinear(self, site.info.name, site.graph.linear_op(site.info))

    def _explain(self, inputs: Any, neuron_selection: Any, target: Any = None) -> Explanation:
        self._check_patterns(self.graph(inputs))
        return super()._explain(inputs, neuron_selection, target)

    # -- persistence --------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.patterns is None:
            return {}
        # "fitted" marks a fitted analyzer even when the model has no linear layer.
        return {"fitted": np.array(True), **{f"pattern/{k}": v for k, v in self.patterns.items()}}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        found = {k[len("pattern/") :]: v for k, v in state.items() if k.startswith("pattern/")}
        if found or "fitted" in state:
            self.set_patterns(found)


class PatternAttribution(PatternNet):
    """PatternAttribution: the backward pass with each weight replaced by ``pattern * W``.

    Same parameters as ``pattern.net``; no multiplication by the input (iNNvestigate 1.0.9).
    """

    name = "pattern.attribution"
    family = "pattern"
    title = "Pattern Attribution"
    summary = (
        "Weights times patterns, propagated back: each input's contribution along the signal "
        "direction the network detects."
    )
    paper = "Kindermans et al. 2018, ICLR (arXiv 1705.05598)"
    innvestigate = "PatternAttribution"

    def _pattern_weight(self, pattern: torch.Tensor, op: LinearOp) -> torch.Tensor:
        return pattern * op.weight.detach()


ANALYZERS = [PatternNet, PatternAttribution]
