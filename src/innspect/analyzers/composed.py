"""``ComposedAnalyzer``: a method given as a start signal, a postprocess and a composite."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from innspect.analyzers.plan import Composite
from innspect.analyzers.reverse import ReverseAnalyzer
from innspect.engine.reverse import Mapping
from innspect.graph.graph import ModelGraph, NodeInfo


class ComposedAnalyzer(ReverseAnalyzer):
    """A reverse-walk method whose rule per node comes from ``self.composite``.

    Subclasses set ``self.composite`` in ``__init__`` (or override ``_composite``) and
    choose the start signal (``relevance_start``, ``_start_value``) and ``_postprocess``.
    """

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.composite: Composite | None = None
        self._planned: dict[fx.Node, Mapping] | None = None
        self._planned_graph: ModelGraph | None = None

    def _composite(self) -> Composite:
        if self.composite is None:
            raise NotImplementedError(f"{type(self).__name__} sets no composite")
        return self.composite

    def _check_plan(self, graph: ModelGraph) -> None:
        """Raise before planning when the options do not fit the graph."""

    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        if self._planned is None or self._planned_graph is not graph:
            self._check_plan(graph)
            self._planned = self._composite().plan(graph, self.name)
            self._planned_graph = graph
        return self._planned[info.node]

    def rule_of(self, layer_name: str, example_input: torch.Tensor | None = None) -> Mapping:
        """The mapping a node (by name) gets, e.g. to check which rule a layer receives."""
        graph = self.graph(example_input)
        if layer_name not in graph.by_name:
            raise KeyError(f"no node named {layer_name!r}; nodes: {', '.join(graph.by_name)}")
        return self._mappings[graph.by_name[layer_name].node]
