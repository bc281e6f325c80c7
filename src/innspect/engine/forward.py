"""The forward recorder: one pass over the graph keeping what the reverse mappings need."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from innspect.errors import (
    InnspectError,
    InputError,
    InternalError,
    NotAnalyzableModelError,
    first_line,
)
from innspect.graph.capture import call_arguments, native_failure
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.ops import is_plain_relu


class RecordedValues(dict):
    """Node outputs by node; a ReLU output that was dropped is recomputed when read.

    ``recompute[node]`` names the input a dropped ReLU output is rebuilt from. A rebuilt
    value is kept until the reverse walk frees it (when it visits the node).
    """

    def __init__(self) -> None:
        super().__init__()
        self.recompute: dict[fx.Node, fx.Node] = {}

    def __missing__(self, node: fx.Node) -> Any:
        source = self.recompute.get(node)
        if source is None:
            raise KeyError(node)
        value = torch.relu(self[source].detach())
        self[node] = value
        return value

    def holds_tensor(self, node: fx.Node) -> bool:
        """Whether ``node``'s output is a tensor, without rebuilding a dropped one."""
        return node in self.recompute or isinstance(self.get(node), torch.Tensor)


@dataclass
class ForwardRecord:
    """Every node's output, plus the autograd leaves of the nodes recorded for a VJP.

    ``leaves[node]`` holds, aligned with ``info.signal_inputs``, detached copies of the
    node's inputs that require grad (None for inputs that are not floating tensors), so
    the autograd graph of each node is local: a VJP through one node never walks the rest.
    """

    values: RecordedValues
    leaves: dict[fx.Node, list[torch.Tensor | None]] = field(default_factory=dict)
    # Every node's output on the reference input (``run_forward_with_reference``), or None.
    reference: RecordedValues | None = None

    def output(self, graph: ModelGraph) -> torch.Tensor:
        """The explained output (the chosen returned tensor, or ``output=``'s value)."""
        return graph.output_value(self.values)


def rematerialisable(graph: ModelGraph, autograd_nodes: set[fx.Node] | frozenset) -> set[fx.Node]:
    """ReLU nodes whose output a record can drop after the forward and rebuild on demand.

    A relevance rule needs both a layer's output ``z`` and the next layer's input
    ``relu(z)``; keeping both doubles the record of a conv/ReLU network, while rebuilding
    ``relu(z)`` in the reverse walk costs one element-wise pass. Not for ReLUs read through
    autograd (a node's local autograd graph holds its inputs and outputs anyway).
    """
    result = set()
    kept = set(graph.output_nodes) | set(graph.source_nodes)
    for info in graph.nodes:
        node = info.node
        if (
            node in kept
            or node in autograd_nodes
            or len(info.signal_inputs) != 1
            or len(node.all_input_nodes) != 1
            or not is_plain_relu(node, info.module)
            or any(user in autograd_nodes for user in node.users)
        ):
            continue
        result.add(node)
    return result


def _is_float_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def run_forward(
    graph: ModelGraph,
    x: torch.Tensor | dict[fx.Node, Any],
    autograd_nodes: set[fx.Node] | frozenset = frozenset(),
    *,
    keep: bool | Collection[fx.Node] = True,
    global_autograd: bool = False,
) -> ForwardRecord:
    """Run ``graph`` on ``x`` once.

    Parameters
    ----------
    graph, x
        The captured graph and its input: a tensor (a model with one input), or
        ``{node: value}`` for every input placeholder (``graph.feed``); a non-placeholder
        node given there takes that value instead of being computed (integrated gradients
        at an embedding's output).
    autograd_nodes
        Nodes that run with autograd on local leaves (for their VJP); all others run
        without autograd bookkeeping.
    keep
        Keep every node's output (what the reverse walk reads). False frees each value after
        its last use, like a plain forward, and keeps only the output. A collection of
        nodes: free like False, but keep these nodes' outputs (what a statistics pass
        observes) and never overwrite them in place.
    global_autograd
        Record one autograd graph through the whole pass (for a plain gradient from the
        output to the attributed nodes: given inputs must then require grad, computed
        attributed nodes are made to); ``autograd_nodes`` is ignored.

    Errors are re-raised naming the node that failed.
    """
    module = graph.module
    feed = graph.feed(x) if isinstance(x, torch.Tensor) else x
    sources = set(graph.source_nodes) if global_autograd else set()
    values = RecordedValues()
    record = ForwardRecord(values)
    free_after = graph.free_after
    # keep=False frees every value after its last use (droppable None); keep=True keeps
    # every value except, without global autograd, the ReLU outputs it can rebuild.
    droppable: set[fx.Node] | None = None
    kept: Collection[fx.Node] = ()
    if keep is True:
        droppable = set() if global_autograd else rematerialisable(graph, autograd_nodes)
    elif keep is not False:
        kept = set(keep)
    # Without a record, ReLUs whose input nobody else reads run in place (no allocation);
    # never over a kept value.
    inplace: set[fx.Node] = set()
    inplace_adds: dict[fx.Node, int] = {}
    if keep is not True:
        inplace = {n for n in graph.inplace_relus() if n.all_input_nodes[0] not in kept}
        # additions overwrite a term no autograd graph holds and nobody reads later
        inplace_adds = {
            n: i
            for n, i in graph.inplace_adds().items()
            if n.args[i] not in kept and n.args[i] not in autograd_nodes and n.args[i] not in feed
        }
    for info in graph.nodes:
        node = info.node
        if node in feed:
            values[node] = feed[node]
            continue
        if node.op == "placeholder":
            if node not in graph.bound_values:
                raise InputError(f"no value given for the model's input '{info.name}'")
            values[node] = graph.bound_values[node]
            continue
        if node.op == "get_attr":
            values[node] = _fetch_attr(module, str(node.target))
            continue
        local = global_autograd or node in autograd_nodes
        leaves = None
        if local and not global_autograd:
            leaves = record.leaves[node] = autograd_leaves(values, info)
        try:
            with torch.set_grad_enabled(local):
                if node in inplace:  # only without a local autograd graph (keep=False)
                    values[node] = torch.relu_(values[node.all_input_nodes[0]])
                elif node in inplace_adds and not local:
                    values[node] = _add_in_place(info, values, inplace_adds[node])
                else:
                    values[node] = run_node(info, values, leaves)
        except NotAnalyzableModelError:
            raise  # innspect's own refusal (a hook that changes values): already names it
        except _OUT_OF_MEMORY:
            raise  # neither the input's fault nor a defect: the message says what happened
        except Exception as error:  # noqa: BLE001 - re-raised with the node's name
            raise node_failure(graph, feed, info, error) from error
        if node in sources:
            value = values[node]
            if _is_float_tensor(value) and not value.requires_grad:
                # An attributed node that autograd would not track (frozen weights, integer
                # ids upstream): a leaf of its own, so its gradient can be asked for.
                values[node] = value.detach().requires_grad_(True)
        for done in free_after.get(node, ()):
            if droppable is None:
                if done not in kept:
                    del values[done]
            elif done in droppable:
                del values[done]
                values.recompute[done] = done.all_input_nodes[0]
    return record


# Running out of memory says so itself; rerunning the model to classify it would not help.
_OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)


def node_failure(
    graph: ModelGraph, feed: dict[fx.Node, Any], info: NodeInfo, error: Exception
) -> InnspectError:
    """The error to raise for ``error``, raised by ``info``'s node on ``feed``: the input's
    (InputError) or innspect's (InternalError).

    A node fails because of the input (a wrong shape, an integer tensor where the model
    wants floats) or because of innspect (a rewrite, a rule, the recorder). The model run
    without innspect on the same input tells them apart: if it fails too, the input is at
    fault; if it runs, innspect is. innspect's own InputErrors (a folded layer's rank
    check) stay input errors. A feed that gives values for inner nodes (integrated
    gradients at an embedding's output) holds values innspect made: its failure is
    innspect's.
    """
    shapes = _shapes(feed)
    failed = f"the model failed at node {info.describe()} on an input of shape {shapes}"
    if isinstance(error, InputError):
        return InputError(f"{failed}: {error}")
    model = graph.live_model()  # a graph kept by a worker may outlive the model it got
    if set(feed) != set(graph.input_nodes):
        reason = "the values fed to its inner nodes were made by innspect"
    elif model is None:
        reason = "the model, freed since, could not be rerun to tell"
    else:
        native = native_failure(model, graph.call, [feed[n] for n in graph.input_nodes])
        if native is not None:
            return InputError(
                f"{failed} (it fails on this input without innspect too: "
                f"{first_line(native)}): {error}"
            )
        reason = "the model itself runs on this input"
    detail = f"{type(error).__name__}: {first_line(error)}"
    node = info.node
    if node.op == "call_function":
        where = f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', '')}"
        operation = f"{info.operation}: function {where.lstrip('.')}"
    elif node.op == "call_method":
        operation = f"{info.operation}: method Tensor.{node.target}"
    else:
        operation = f"{info.operation}: module {type(info.module).__name__}"
    return InternalError(info.name, operation, detail, shapes, reason)


def _add_in_place(info: NodeInfo, values: dict[fx.Node, Any], position: int) -> Any:
    """``a + b`` written into the term at ``position`` when it has the result's shape, dtype
    and device (an allocation less, as a ResNet's ``out += identity``); else ``a + b``.
    Addition commutes exactly, so either term may receive the sum."""
    node = info.node
    term, other = (
        values[arg] if isinstance(arg, fx.Node) else arg  # timm's `0 + x` adds a number
        for arg in (node.args[position], node.args[1 - position])
    )
    if (
        isinstance(term, torch.Tensor)
        and isinstance(other, torch.Tensor)
        and not term.requires_grad
        and term.device == other.device
        and term.dtype == torch.result_type(term, other)
        and term.shape == torch.broadcast_shapes(term.shape, other.shape)
    ):
        return term.add_(other)
    return run_node(info, values)


def autograd_leaves(values: dict[fx.Node, Any], info: NodeInfo) -> list[torch.Tensor | None]:
    """Detached, grad-requiring copies of the node's inputs (aligned with
    ``info.signal_inputs``, None for inputs that are not floating tensors), so that an
    autograd graph through the node stays local to it."""
    leaves = []
    for node in info.signal_inputs:
        value = values[node]
        leaves.append(value.detach().requires_grad_(True) if _is_float_tensor(value) else None)
    return leaves


def run_node(
    info: NodeInfo, values: dict[fx.Node, Any], leaves: list[torch.Tensor | None] | None = None
) -> Any:
    """The node's operation on recorded values, or on ``leaves`` for its signal inputs."""
    node = info.node
    substitutes = {}
    if leaves is not None:
        substitutes = {
            n: leaf for n, leaf in zip(info.signal_inputs, leaves, strict=True) if leaf is not None
        }

    def lookup(n: fx.Node) -> Any:
        # Not substitutes.get(n, values[n]): reading values[n] would rebuild a dropped ReLU.
        return substitutes[n] if n in substitutes else values[n]

    args, kwargs = call_arguments(node, lookup)
    return _call(info.module, node, args, kwargs)


def _fetch_attr(module: torch.nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _call(module: torch.nn.Module | None, node: fx.Node, args: Any, kwargs: Any) -> Any:
    if node.op == "call_module":
        return module(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    raise AssertionError(f"unexpected node op {node.op}")


def _shapes(feed: dict[fx.Node, Any]) -> str:
    """The shapes of the fed inputs, for messages: '(2, 3)' or 'a (2, 3), b (2,)'."""
    shapes = [(n.name, tuple(v.shape)) for n, v in feed.items() if isinstance(v, torch.Tensor)]
    if len(shapes) == 1:
        return str(shapes[0][1])
    return ", ".join(f"{name} {shape}" for name, shape in shapes)


def run_forward_with_reference(
    graph: ModelGraph,
    x: torch.Tensor | dict[fx.Node, Any],
    reference: torch.Tensor | dict[fx.Node, Any],
    *,
    batched: bool = True,
) -> ForwardRecord:
    """Record ``graph`` on ``x`` and on ``reference``, for reference-based methods.

    ``x`` and ``reference`` are tensors (a model with one input) or feeds ``{node: value}``
    (``graph.feed``) with the same nodes and shapes; inputs that are not attributed (masks,
    token ids) are given the same value in both. The record's ``values`` hold the nodes'
    outputs on ``x`` and ``reference`` holds them on the reference, so a mapping reads both
    (DeepLIFT's differences from the reference). With ``batched``, one forward pass of
    ``[x; reference]`` makes both, and every recorded batch-first value is split into its
    halves (views, no copy); shape queries are run again on each half. A reference that is
    the same for every sample (a scalar or one broadcast sample, DeepLIFT's default) is run
    once: the pass has ``n + 1`` rows and the reference half is a stride-0 view of ``n``
    rows, which makes the forward ``(n + 1) / 2n`` of the doubled batch's cost. A graph with a value
    that cannot be split that way (its first axis is not the batch) is recorded by two
    forward passes instead. No node is recorded for autograd: mappings take VJPs with
    ``NodeContext.recomputed_vjp``.
    """
    feed = graph.feed(x) if isinstance(x, torch.Tensor) else dict(x)
    reference_feed = graph.feed(reference) if isinstance(reference, torch.Tensor) else reference
    if set(feed) != set(reference_feed):
        raise InputError("the reference must give a value for every input of the model")
    n = None
    for node, value in feed.items():
        other = reference_feed[node]
        if isinstance(value, torch.Tensor) != isinstance(other, torch.Tensor) or (
            isinstance(value, torch.Tensor) and value.shape != other.shape
        ):
            raise InputError(
                f"the reference input has shape {tuple(getattr(other, 'shape', ()))}, the "
                f"input {tuple(getattr(value, 'shape', ()))}; they must be equal"
            )
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            n = value.shape[0] if n is None else n
    if batched and n is not None:
        # One reference for every sample (DeepLIFT's default 0): run it once, as row n of a
        # batch of n + 1, and read it back as a stride-0 view of n rows.
        shared = n > 1 and all(
            not _batch_first(value) or _same_every_row(reference_feed[node])
            for node, value in feed.items()
        )
        rows = 1 if shared else n
        both = {}
        for node, value in feed.items():
            other = reference_feed[node]
            if _batch_first(value) and value.shape[0] != n:
                both = None
                break
            both[node] = torch.cat([value, other[:rows]]) if _batch_first(value) else value
        if both is not None:
            record = run_forward(graph, both)
            halves = _split_values(graph, record.values, n, rows, feed, reference_feed)
            if halves is not None:
                return ForwardRecord(halves[0], reference=halves[1])
            del record
    record = run_forward(graph, feed)
    record.reference = run_forward(graph, reference_feed).values
    return record


def _batch_first(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _same_every_row(value: torch.Tensor) -> bool:
    """Whether every row of a batch-first tensor equals the first (a broadcast reference)."""
    if value.stride(0) == 0:
        return True
    return bool((value == value[:1]).all())


def _split_values(
    graph: ModelGraph,
    values: RecordedValues,
    n: int,
    rows: int,
    feed: dict[fx.Node, Any],
    reference_feed: dict[fx.Node, Any],
) -> tuple[RecordedValues, RecordedValues] | None:
    """The record of a forward pass on ``[x; reference]`` (``n`` and ``rows`` rows) as one
    record per half, or None where a value that depends on the input is not batch-first.
    A reference of one row (``rows == 1``) comes back expanded to ``n`` rows (a view)."""
    halves = (RecordedValues(), RecordedValues())
    for half in halves:
        half.recompute.update(values.recompute)
    # Nodes computed from the doubled batch: the fed inputs and everything they reach
    # (integer masks too, which carry no signal but are batched all the same).
    batched = {node for node, value in feed.items() if isinstance(value, torch.Tensor)}
    for info in graph.nodes:
        node = info.node
        if node in feed:
            halves[0][node], halves[1][node] = feed[node], reference_feed[node]
            continue
        if node in values.recompute:  # a dropped ReLU: each half rebuilds it from its input
            batched.add(node)
            continue
        value = dict.get(values, node)
        if not any(arg in batched for arg in node.all_input_nodes):
            for half in halves:  # constants, parameters, bound defaults
                half[node] = value
            continue
        batched.add(node)
        if info.is_metadata:  # x.shape, x.size(0)...: the half's own
            for half in halves:
                half[node] = run_node(info, half)
            continue
        parts = _split_batch(value, n, rows)
        if parts is None:
            return None
        halves[0][node], halves[1][node] = parts
    return halves


def _split_batch(value: Any, n: int, rows: int) -> tuple[Any, Any] | None:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != n + rows:
            return None
        reference = value[n:]
        if rows != n:
            reference = reference.expand(n, *reference.shape[1:])
        return value[:n], reference
    if isinstance(value, tuple | list):
        parts = [_split_batch(v, n, rows) for v in value]
        if any(p is None for p in parts):
            return None
        return type(value)(p[0] for p in parts), type(value)(p[1] for p in parts)
    return None
