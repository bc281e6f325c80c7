"""The reverse walk: visit nodes from output to input, mapping each node's signal to its inputs.

Methods differ only in the mapping chosen per node (see ``innspect.rules``). A tensor used by
several nodes receives the sum of their signals.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from innspect.engine.forward import ForwardRecord, RecordedValues, autograd_leaves, run_node
from innspect.errors import NonFiniteRelevanceError, UnsupportedNodeError
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.ops import Kind
from innspect.util.tensors import all_finite

Signal = Any  # a tensor, or {output index: tensor} for nodes returning tuples


@dataclass
class NodeContext:
    """What a mapping sees of one node: its recorded inputs and output and the signal."""

    graph: ModelGraph
    info: NodeInfo
    record: ForwardRecord
    signal: Signal

    @property
    def inputs(self) -> list[Any]:
        """Recorded values of the node's input-dependent arguments (``info.signal_inputs``)."""
        values = self.record.values
        return [values[n] for n in self.info.signal_inputs]

    @property
    def output(self) -> Any:
        return self.record.values[self.info.node]

    @property
    def reference_inputs(self) -> list[Any]:
        """The same inputs on the reference input (a record made by the reference pass)."""
        reference = self._reference()
        return [reference[n] for n in self.info.signal_inputs]

    @property
    def reference_output(self) -> Any:
        return self._reference()[self.info.node]

    def _reference(self) -> RecordedValues:
        if self.record.reference is None:
            raise AssertionError(f"node {self.info.describe()}: the record has no reference pass")
        return self.record.reference

    # What rules need beyond inputs, output and signal: the layer's parameters as a
    # LinearOp, and whether its input is non-negative by construction (a narrow context).
    @property
    def linear_op(self) -> Any:
        """The node's weights as a ``LinearOp`` (linear and batch norm nodes)."""
        return self.graph.linear_op(self.info)

    @property
    def input_nonnegative(self) -> bool:
        """Whether the node's first input is >= 0 by construction (a ReLU output...)."""
        return self.graph.is_nonnegative(self.info.signal_inputs[0])

    def vjp(self, signal: Signal | None = None) -> list[torch.Tensor | None]:
        """Vector-Jacobian product of the node with ``signal`` (default: the arriving one)."""
        leaves = self.record.leaves.get(self.info.node)
        if leaves is None:
            raise AssertionError(f"node {self.info.describe()} was not recorded for autograd")
        return _vjp(self.output, leaves, self.signal if signal is None else signal)

    def recomputed_vjp(
        self, signal: Signal | None = None, *, at_reference: bool = False
    ) -> list[torch.Tensor | None]:
        """The same product, from running the node again on its recorded inputs.

        For nodes recorded without autograd: one more pass of a cheap operation (pooling)
        instead of a local autograd graph that holds the node's input all through the walk.
        ``at_reference``: the product at the node's reference inputs instead.
        """
        values = self._reference() if at_reference else self.record.values
        leaves = autograd_leaves(values, self.info)
        with torch.enable_grad():
            output = run_node(self.info, values, leaves)
        return _vjp(output, leaves, self.signal if signal is None else signal)


def _vjp(
    output: Any, leaves: list[torch.Tensor | None], signal: Signal
) -> list[torch.Tensor | None]:
    """``signal``-weighted gradient of ``output`` with respect to the non-None ``leaves``."""
    if isinstance(signal, dict):
        outputs = [output[i] for i in signal]
        grads = list(signal.values())
    else:
        outputs, grads = [output], [signal]
    pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if o.requires_grad]
    wanted = [leaf for leaf in leaves if leaf is not None]
    if not pairs or not wanted:
        return [None] * len(leaves)
    result = iter(
        torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
    )
    return [next(result) if leaf is not None else None for leaf in leaves]


class Mapping:
    """Maps the signal at a node's output to signals at its inputs.

    Subclasses set ``needs_autograd`` when they call ``ctx.vjp``.
    """

    needs_autograd: bool = False

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        raise NotImplementedError


@dataclass
class Unsupported(Mapping):
    """Placeholder for a node the method cannot handle; raises when a signal reaches it."""

    method: str
    hint: str = ""

    def __call__(self, ctx: NodeContext) -> Sequence[torch.Tensor | None]:
        raise UnsupportedNodeError(ctx.info.name, ctx.info.operation, self.method, self.hint)


@dataclass
class ReverseOptions:
    """iNNvestigate's reverse_* options.

    Attributes
    ----------
    keep_tensors
        Keep every node's signal by node name (layer-wise relevances).
    check_finite
        Raise NonFiniteRelevanceError at the first node whose signal is not finite.
    clip_values
        ``(min, max)`` to clip every node's signal to.
    project_bottleneck
        ``(min, max)``: scale the signal at every bottleneck node (one every path to the
        output passes through) per sample into this range by its maximum absolute value;
        a linear layer read only by an element-wise activation is one layer with it, as a
        Keras layer with ``activation=`` is in iNNvestigate, and is projected once, at the
        activation (:func:`projection_nodes`).
    min_max
        Record each node's signal minimum and maximum.
    node_sums
        Record, per node, the per-sample sums of the signal arriving at its output and of
        the signals it sends to its inputs (relevance conservation checks).
    """

    keep_tensors: bool = False
    check_finite: bool = False
    clip_values: tuple[float, float] | None = None
    project_bottleneck: tuple[float, float] | None = None
    min_max: bool = False
    node_sums: bool = False


@dataclass
class ReverseResult:
    """The signal at the input, and what the options asked to keep.

    ``attributions`` holds the signal at every attributed node it reached
    (``graph.source_nodes``); ``attribution`` is the one at ``graph.input_node``.
    """

    attribution: torch.Tensor
    attributions: dict[fx.Node, torch.Tensor] = field(default_factory=dict)
    signals: dict[str, torch.Tensor] = field(default_factory=dict)
    min_max: dict[str, tuple[float, float]] = field(default_factory=dict)
    node_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _per_sample_sum(signals: list[torch.Tensor]) -> torch.Tensor:
    """Sum of signals per sample (batch-first tensors of any shape)."""
    return sum(s.reshape(s.shape[0], -1).sum(dim=1) for s in signals)


def _accumulate(signals: dict[fx.Node, Signal], node: fx.Node, value: torch.Tensor) -> None:
    current = signals.get(node)
    signals[node] = value if current is None else current + value


def projection_nodes(graph: ModelGraph) -> set[fx.Node]:
    """The nodes whose signal bottleneck projection scales: the bottlenecks, less a linear
    layer whose only reader is an element-wise activation that is itself a bottleneck.

    iNNvestigate projects the signal at the output tensor of each bottleneck Keras layer,
    and a ``Conv2D(activation="relu")`` has no tensor between its kernel and its ReLU; the
    graph has a node for each, so the kernel's output is left alone. With the default
    symmetric range the projection is a positive per-sample scaling, which every mapping
    between two projections carries along, so this changes no result; on a VGG it halves
    the projections (each a pass over a full-size signal).
    """
    bottlenecks = graph.bottleneck_nodes()
    skipped = set()
    for node in bottlenecks:
        info = graph.infos.get(node)
        users = list(node.users)
        if (
            info is not None
            and info.kind is Kind.LINEAR
            and len(users) == 1
            and users[0] in bottlenecks
            and users[0] in graph.infos
            and graph.infos[users[0]].kind is Kind.ACTIVATION
        ):
            skipped.add(node)
    return bottlenecks - skipped


def _project(signal: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """iNNvestigate's bottleneck projection ``(s / max|s| + 1) / 2 * (high - low) + low``
    per sample, as one multiply-add: ``s * (high - low) / (2 max|s|) + (high + low) / 2``.

    On a VGG the projection runs at every node of the chain; written term by term it made
    seven passes (and allocations) over each signal and cost half a backward pass.
    """
    flat = signal.reshape(signal.shape[0], -1)
    # amax and amin apart: one torch.aminmax(dim=1) is ~5x slower on CPU than both
    absmax = torch.maximum(flat.amax(dim=1), -flat.amin(dim=1)).clamp_min(1e-12)
    shape = [-1] + [1] * (signal.dim() - 1)
    scale = ((high - low) / 2 / absmax).reshape(shape)
    offset = (high + low) / 2
    return (
        signal * scale
        if offset == 0
        else torch.addcmul(torch.full_like(scale, offset), signal, scale)
    )


def _process_signal(
    info: NodeInfo,
    signal: torch.Tensor,
    options: ReverseOptions,
    result: ReverseResult,
    bottlenecks: set[fx.Node],
) -> torch.Tensor:
    if options.project_bottleneck is not None and info.node in bottlenecks:
        signal = _project(signal, *options.project_bottleneck)
    if options.clip_values is not None:
        signal = signal.clamp(*options.clip_values)
    if options.keep_tensors:
        result.signals[info.name] = signal
    if options.min_max:
        values = signal.detach()  # a statistic of the signal, not part of any autograd graph
        result.min_max[info.name] = (float(values.min()), float(values.max()))
    return signal


def reverse_walk(
    graph: ModelGraph,
    record: ForwardRecord,
    start: torch.Tensor | dict[fx.Node, torch.Tensor],
    mapping_for: Callable[[NodeInfo], Mapping],
    options: ReverseOptions | None = None,
) -> ReverseResult:
    """Walk the graph from its output to its input, applying each node's mapping.

    The walk consumes ``record``: each node's recorded output is freed once visited.

    Parameters
    ----------
    graph, record
        The captured graph and a forward record made on it.
    start
        The signal at the explained output (same shape), or ``{node: signal}`` for
        several returned tensors.
    mapping_for
        Returns the mapping of a node.
    options
        Optional reverse-pass options.
    """
    options = options or ReverseOptions()
    result = ReverseResult(attribution=torch.zeros_like(record.values[graph.input_node]))
    bottlenecks = projection_nodes(graph) if options.project_bottleneck else set()
    signals: dict[fx.Node, Signal] = (
        dict(start) if isinstance(start, dict) else {graph.output_node: start}
    )
    sources = set(graph.source_nodes)
    for info in reversed(graph.nodes):
        node = info.node
        signal = signals.pop(node, None)
        if signal is None:
            continue
        if isinstance(signal, torch.Tensor):
            signal = _process_signal(info, signal, options, result, bottlenecks)
        if node in sources:
            result.attributions[node] = signal
            if node is graph.input_node:
                result.attribution = signal
            # An attributed inner node (an embedding's output) ends the walk on its branch
            # unless an attributed input lies further up.
            if node.op == "placeholder" or not info.signal_inputs:
                record.values.pop(node, None)
                continue
        if _selects_from_tuple(info, record):
            record.values.pop(node, None)
            if record.reference is not None:
                record.reference.pop(node, None)
            parent = info.signal_inputs[0]
            parent_signal = signals.setdefault(parent, {})
            index = node.args[1]
            current = parent_signal.get(index)
            parent_signal[index] = signal if current is None else current + signal
            continue
        mapped = mapping_for(info)(NodeContext(graph, info, record, signal))
        values = record.values
        # Every reader of this node's output has been visited: free it (and its autograd
        # graph) now, as autograd frees saved tensors, so memory falls during the walk.
        values.pop(node, None)
        record.leaves.pop(node, None)
        if record.reference is not None:
            record.reference.pop(node, None)
        if options.node_sums:
            arriving = list(signal.values()) if isinstance(signal, dict) else [signal]
            leaving = [m for m in mapped if isinstance(m, torch.Tensor)]
            arriving_sum = _per_sample_sum(arriving)
            leaving_sum = _per_sample_sum(leaving) if leaving else torch.zeros_like(arriving_sum)
            result.node_sums[info.name] = (arriving_sum, leaving_sum)
        for input_node, input_signal in zip(info.signal_inputs, mapped, strict=True):
            if input_signal is None or not values.holds_tensor(input_node):
                continue
            if options.check_finite and not all_finite(input_signal):
                raise NonFiniteRelevanceError(
                    f"the reverse mapping of node {info.describe()} produced non-finite values; "
                    "a stabiliser (larger epsilon) or reverse_clip_values may help"
                )
            _accumulate(signals, input_node, input_signal)
    return result


def _selects_from_tuple(info: NodeInfo, record: ForwardRecord) -> bool:
    node = info.node
    if node.op != "call_function" or node.target is not operator.getitem:
        return False
    source = node.args[0]
    return isinstance(source, fx.Node) and isinstance(record.values[source], tuple | list)
