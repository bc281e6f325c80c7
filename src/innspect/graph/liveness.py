"""What a freeing forward may drop or overwrite: the values it can free after their last
use, and the ReLUs and additions it may run in place (as the model's own ``inplace=True``
ReLUs and ``out += identity`` do), saving a full-size allocation per layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx

from innspect.graph.ops import Kind, is_plain_relu, is_sum, op_name

if TYPE_CHECKING:
    from innspect.graph.graph import ModelGraph, NodeInfo


def inplace_relus(graph: ModelGraph) -> set[fx.Node]:
    """ReLU nodes a freeing forward may run in place, as the model's own in-place ReLUs do.

    The ReLU must be the only reader of its input, and the input must come from a layer
    whose autograd backward does not read its output (linear, batchnorm, a sum): then
    overwriting it is safe with and without autograd, and saves a full-size allocation.
    """
    found: set[fx.Node] = set()
    # Outputs and attributed nodes are read after the forward: never overwritten.
    kept = set(graph.output_nodes) | set(graph.source_nodes)
    for info in graph.nodes:
        sources = info.node.all_input_nodes
        if not is_plain_relu(info.node, info.module) or len(sources) != 1 or info.node in kept:
            continue
        if overwritable(graph.infos.get(sources[0]), kept):
            found.add(info.node)
    return found


def inplace_adds(graph: ModelGraph) -> dict[fx.Node, int]:
    """Additions a freeing forward may run in place, as ``out += identity`` in a ResNet
    block does: add node -> the position (0 or 1) of the term it may overwrite.

    The term must be read by this addition only and come from a layer that always
    allocates its output (linear, batchnorm, a sum), so that it aliases nothing else;
    outputs and attributed nodes are never overwritten. Whether shapes and dtypes allow
    it, and that no autograd graph holds the term, is checked when the forward runs.
    """
    found: dict[fx.Node, int] = {}
    kept = set(graph.output_nodes) | set(graph.source_nodes)
    for info in graph.nodes:
        node = info.node
        if (
            not is_sum(node)
            or op_name(node).rstrip("_") != "add"
            or len(node.args) != 2
            or node.kwargs
            or node in kept
        ):
            continue
        for position, term in enumerate(node.args):
            if isinstance(term, fx.Node) and overwritable(graph.infos.get(term), kept):
                found[node] = position
                break
    return found


def overwritable(source: NodeInfo | None, kept: set[fx.Node]) -> bool:
    """Whether a freeing forward may overwrite ``source``'s output in its one reader: it has
    one reader, is not kept, and comes from a layer that always allocates its output and
    whose autograd backward does not read it (linear, batchnorm, a sum)."""
    return (
        source is not None
        and len(source.node.users) == 1
        and source.node not in kept
        and (
            source.kind in (Kind.LINEAR, Kind.BATCHNORM)
            or (source.kind is Kind.LINEAR_NO_PARAM and is_sum(source.node))
        )
    )


def last_uses(nodes: list[NodeInfo], kept: set[fx.Node]) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values that can be dropped once it has run (a plain forward);
    ``kept`` (outputs, attributed nodes) are never dropped."""
    last_user: dict[fx.Node, fx.Node] = {}
    for info in nodes:
        for arg in info.node.all_input_nodes:
            last_user[arg] = info.node
    free_after: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last_user.items():
        if value not in kept:
            free_after.setdefault(user, []).append(value)
    return free_after
