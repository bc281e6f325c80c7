"""Relevance conservation: how much relevance each node receives and passes on.

A conservative rule passes on (to its inputs) exactly the relevance that reaches its
output. ``conservation_report`` runs an analyzer once and reports, per node, both sums
and their relative difference, so a user can see where relevance is absorbed (bias,
epsilon) or created (gradient through a scaling, alpha-beta with no negative part...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from innspect.analyzers.reverse import ReverseAnalyzer


@dataclass
class NodeBalance:
    """Relevance arriving at one node's output and leaving towards its inputs, per sample."""

    arriving: torch.Tensor
    leaving: torch.Tensor

    @property
    def relative_difference(self) -> torch.Tensor:
        """``|leaving - arriving| / |arriving|`` per sample (absolute difference where 0)."""
        difference = (self.leaving - self.arriving).abs()
        scale = self.arriving.abs()
        return torch.where(scale > 0, difference / scale.clamp_min(1e-300), difference)


@dataclass
class ConservationReport:
    """Per node (by name, in reverse-walk order) the relevance balance, plus the totals.

    Attributes
    ----------
    nodes
        ``NodeBalance`` per node that mapped a signal.
    output_total, input_total
        Per sample: relevance at the start (selected output) and at the input.
    """

    nodes: dict[str, NodeBalance] = field(default_factory=dict)
    output_total: torch.Tensor | None = None
    input_total: torch.Tensor | None = None

    def max_relative_difference(self) -> float:
        """The worst relative difference over nodes and samples."""
        return max((float(b.relative_difference.max()) for b in self.nodes.values()), default=0.0)

    def worst_nodes(self, count: int = 5) -> list[tuple[str, float]]:
        """The ``count`` nodes with the largest relative difference."""
        ranked = sorted(
            ((name, float(b.relative_difference.max())) for name, b in self.nodes.items()),
            key=lambda item: -item[1],
        )
        return ranked[:count]

    def __str__(self) -> str:
        lines = [f"{'node':<40} {'arriving':>14} {'leaving':>14} {'rel. diff':>10}"]
        for name, balance in self.nodes.items():
            lines.append(
                f"{name:<40} {float(balance.arriving.sum()):>14.6g} "
                f"{float(balance.leaving.sum()):>14.6g} "
                f"{float(balance.relative_difference.max()):>10.3g}"
            )
        if self.output_total is not None and self.input_total is not None:
            lines.append(
                f"{'(output -> input)':<40} {float(self.output_total.sum()):>14.6g} "
                f"{float(self.input_total.sum()):>14.6g}"
            )
        return "\n".join(lines)


def conservation_report(
    analyzer: ReverseAnalyzer, X: Any, neuron_selection: Any = None
) -> ConservationReport:
    """Run ``analyzer`` on ``X`` and report the relevance balance of every node.

    Parameters
    ----------
    analyzer
        An analyzer of the LRP / Deep Taylor family (any ``ReverseAnalyzer``).
    X
        Input batch (numpy array or tensor).
    neuron_selection
        As for ``analyzer.analyze``.
    """
    if not isinstance(analyzer, ReverseAnalyzer):
        raise TypeError(
            f"conservation_report needs an analyzer computed by a reverse walk (LRP, Deep "
            f"Taylor, gradient...), got {type(analyzer).__name__}"
        )
    options = analyzer.reverse_options
    analyzer.reverse_options = dataclasses.replace(options, node_sums=True)
    try:
        explanation = analyzer.explain(X, neuron_selection)
    finally:
        analyzer.reverse_options = options
    nodes = {
        name: NodeBalance(arriving.detach(), leaving.detach())
        for name, (arriving, leaving) in explanation.node_sums.items()
    }
    # Every attributed input (or node) of a model with several: their relevances add up.
    input_total = sum(
        a.reshape(a.shape[0], -1).sum(dim=1) for a in explanation.attributions.values()
    )
    # The walk visits the output node first: what arrives there is the start relevance.
    output_total = next(iter(nodes.values())).arriving if nodes else input_total
    return ConservationReport(nodes, output_total, input_total)
