"""Which node a class activation map reads, and how its output lies on the input's grid.

grad-cam (PyPI ``grad-cam``) asks its users for the target module and, for transformers, a
``reshape_transform`` that turns a token sequence into a (N, C, h, w) map, with the grid
hard-coded. innspect reads both from the captured graph:

- a **spatial map** (N, C, h, w): a convolutional feature map, channels first (the usual
  layout) or channels last (N, h, w, C), which torchvision's and timm's Swin keep; the
  layout is followed through the graph's ``permute`` nodes from the convolutions (which
  write channels first);
- a **token sequence** (N, T, D) whose last ``P = gh * gw`` tokens are the patch grid of
  the model's patch embedding (the first convolution on the input whose stride is its
  kernel: its output grid is the patch grid) or a coarser grid of it (merged patches);
  the ``T - P`` tokens before them are class, distillation and register tokens.

The default layer is found on one sample of the first call (a forward and a gradient of
the sum of the explained outputs): of the nodes whose output is such a map and whose grid
part gets a non-zero gradient (after a ViT's last attention only the class token reaches
the head), the last one in execution order; among token sequences, the last normalisation
(a ViT block's ``norm1``, grad-cam's documented choice). Adaptive poolings (their grid is
not the input's), nodes of a written-out attention, and rearrangements of a candidate
(its ``permute`` to channels first) are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from innspect.engine.forward import run_forward
from innspect.errors import InputError
from innspect.graph.attention import WRITTEN_OUT
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.lock import GRAPH_LOCK
from innspect.graph.ops import Kind

CHANNELS_FIRST = "channels_first"
CHANNELS_LAST = "channels_last"
TOKENS = "tokens"
_MAX_EXTRA_TOKENS = 8  # class + distillation + register tokens (DINOv2 has 1 + 4)


@dataclass(frozen=True)
class CamLayer:
    """A node read by a class activation map, and how its output becomes (N, C, *grid).

    Attributes
    ----------
    node, name
        The graph node and its name (module path or fx name).
    layout
        ``"channels_first"`` (N, C, h, w), ``"channels_last"`` (N, h, w, C) or ``"tokens"``
        (N, T, D).
    grid
        The map's spatial shape (h, w).
    extra_tokens
        Tokens before the grid in a token sequence (class, register tokens); 0 otherwise.
    """

    node: fx.Node
    name: str
    layout: str
    grid: tuple[int, ...]
    extra_tokens: int = 0
    module: str = ""  # the module the node belongs to, where its name does not say it

    def to_map(self, value: torch.Tensor) -> torch.Tensor:
        """The node's output (or its gradient) as a (N, C, *grid) map: grad-cam's
        ``reshape_transform``, derived from the graph."""
        if self.layout == CHANNELS_FIRST:
            return value
        if self.layout == CHANNELS_LAST:
            return value.movedim(-1, 1)
        n, _, d = value.shape
        return value[:, self.extra_tokens :].reshape(n, *self.grid, d).movedim(-1, 1)

    def channel_axis(self) -> int:
        """The axis of the node's output that holds the channels (features)."""
        return 1 if self.layout == CHANNELS_FIRST else -1

    def describe(self) -> str:
        grid = "x".join(map(str, self.grid))
        where = f"'{self.name}' (in {self.module})" if self.module else f"'{self.name}'"
        if self.layout == TOKENS:
            extra = f", {self.extra_tokens} class/register token(s) before it" * bool(
                self.extra_tokens
            )
            return f"{where}: token sequence on a {grid} patch grid{extra}"
        return f"{where}: {grid} spatial map ({self.layout.replace('_', ' ')})"


def batch_rows(feed: dict[fx.Node, Any], rows: slice) -> dict[fx.Node, Any]:
    """The feed's batch-first tensors cut to ``rows`` (other values kept)."""
    n = next(
        (v.shape[0] for v in feed.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None
    )
    return {
        node: value[rows]
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n
        else value
        for node, value in feed.items()
    }


def find_layers(
    graph: ModelGraph, feed: dict[fx.Node, Any], image: torch.Tensor, names: Sequence[str] | None
) -> list[CamLayer]:
    """The layers named by ``names`` (node names or module paths), or the default layer,
    for inputs like ``feed`` whose image input is ``image`` (N, C, H, W)."""
    if image.dim() != 4:
        raise InputError(
            f"class activation maps need an image input (N, C, H, W); got shape "
            f"{tuple(image.shape)}"
        )
    one = batch_rows(feed, slice(0, 1))
    patch_grid = _patch_grid(graph)
    size = tuple(image.shape[2:])
    if names is not None:
        nodes = [_node_named(graph, name) for name in names]
        with GRAPH_LOCK.shared(), torch.no_grad():
            values = run_forward(graph, one, keep=True).values
        layouts = _layouts(graph, values)
        found = []
        for node, name in zip(nodes, names, strict=True):
            layer = _as_layer(graph.infos[node], _value(values, node), layouts, patch_grid, size)
            if layer is None:
                value = _value(values, node)
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise InputError(
                    f"layer={name!r} (node '{graph.infos[node].name}') has output {shape}, "
                    "neither a spatial map (N, C, h, w) nor a token sequence on the input's "
                    "patch grid; name a convolutional feature map or a transformer block's "
                    "normalisation (see `innspect methods --plan cam.grad`)"
                )
            found.append(layer)
        return found
    return [_default_layer(graph, one, patch_grid, size)]


def _node_named(graph: ModelGraph, name: str) -> fx.Node:
    """A node by name (``NodeInfo.name``), else the output of the module at that path (its
    last node in execution order: ``layer4`` is its last block's output)."""
    if not isinstance(name, str):
        raise InputError(f"layer must be a node name or module path (a string), got {name!r}")
    info = graph.by_name.get(name)
    if info is not None:
        return info.node
    inside = [
        info.node
        for info in graph.nodes
        if name in _module_paths(info.node) or str(info.node.target).startswith(name + ".")
    ]
    if not inside:
        maps = [i.name for i in graph.nodes if i.kind is not Kind.CONSTANT][-12:]
        raise InputError(
            f"layer={name!r} names neither a node of the model's graph nor a module path; "
            f"nodes near the output: {', '.join(maps)}"
        )
    return inside[-1]


def _layouts(graph: ModelGraph, values: dict[fx.Node, Any]) -> dict[fx.Node, str]:
    """Which 4-D values are channels first or last: convolutions write channels first,
    ``permute`` nodes move the channel axis, other nodes keep their first input's layout
    while both are 4-D (a view of a token sequence as heads x tokens has none)."""
    layouts: dict[fx.Node, str] = {}
    for info in graph.nodes:
        node = info.node
        if _rank(values, node) != 4:
            continue
        if isinstance(info.module, nn.Conv2d) or str(node.target).endswith("conv2d"):
            layouts[node] = CHANNELS_FIRST
            continue
        inputs = [a for a in info.signal_inputs if a in layouts]
        if not inputs:
            continue
        layout = layouts[inputs[0]]
        if node.target in ("permute", torch.permute):
            dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
            if len(dims) == 1 and isinstance(dims[0], list | tuple):
                dims = tuple(dims[0])
            dims = tuple(dims)
            if dims == (0, 2, 3, 1):
                layout = CHANNELS_LAST if layout == CHANNELS_FIRST else "other"
            elif dims == (0, 3, 1, 2):
                layout = CHANNELS_FIRST if layout == CHANNELS_LAST else "other"
            else:
                layout = "other"
        elif node.target in ("view", "reshape", "transpose", torch.reshape, torch.transpose):
            layout = "other"  # the same rank, axes regrouped: no longer a map we know
        layouts[node] = layout
    return layouts


def _rank(values: dict[fx.Node, Any], node: fx.Node) -> int | None:
    value = _value(values, node)
    return value.dim() if isinstance(value, torch.Tensor) else None


def _value(values: dict[fx.Node, Any], node: fx.Node) -> Any:
    """A recorded value, or None (a dropped ReLU output is rebuilt on reading)."""
    try:
        return values[node]
    except KeyError:
        return None


def _patch_grid(graph: ModelGraph) -> tuple[int, int] | None:
    """The patch embedding's stride (a convolution on an input whose stride is its kernel
    size, kernel > 1), or None: the token grid is the input's size divided by it."""
    for info in graph.nodes:
        module = info.module
        if (
            isinstance(module, nn.Conv2d)
            and any(a.op == "placeholder" for a in info.node.all_input_nodes)
            and tuple(module.stride) == tuple(module.kernel_size)
            and max(module.kernel_size) > 1
        ):
            return tuple(module.stride)
    return None


def _as_layer(
    info: NodeInfo,
    value: Any,
    layouts: dict[fx.Node, str],
    patch: tuple[int, int] | None,
    size: tuple[int, ...],
) -> CamLayer | None:
    """``info``'s node as a CamLayer, if its output (one sample) is a map on the input."""
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return None
    if not info.depends_on_input or info.is_metadata or info.node.op == "placeholder":
        return None
    height, width = size
    stack = _module_paths(info.node)
    module = stack[-1] if stack and not info.name.startswith(stack[-1]) else ""
    if value.dim() == 4:
        layout = layouts.get(info.node)
        if layout == CHANNELS_FIRST:
            grid = tuple(value.shape[2:])
        elif layout == CHANNELS_LAST:
            grid = tuple(value.shape[1:3])
        else:
            return None
        if not _on_the_grid(grid, size):
            return None
        return CamLayer(info.node, info.name, layout, grid, 0, module)
    if value.dim() == 3 and patch is not None:
        tokens = value.shape[1]
        base = (height // patch[0], width // patch[1])
        for merge in (1, 2, 4, 8, 16, 32):
            grid = (base[0] // merge, base[1] // merge)
            extra = tokens - grid[0] * grid[1]
            if min(grid) >= 1 and 0 <= extra <= _MAX_EXTRA_TOKENS:
                return CamLayer(info.node, info.name, TOKENS, grid, extra, module)
    return None


def _on_the_grid(grid: tuple[int, ...], size: tuple[int, ...]) -> bool:
    """Whether a (h, w) map can lie on an input of ``size``: at most its size, with about
    the same stride on both axes (not attention heads x tokens)."""
    if grid[0] > size[0] or grid[1] > size[1] or min(grid) < 1:
        return False
    strides = (size[0] / grid[0], size[1] / grid[1])
    return max(strides) <= 1.5 * min(strides)


def _module_paths(node: fx.Node) -> list[str]:
    """The paths of the modules a node was traced in, outermost first (torch.fx keys them
    by path; torch.export keeps the path as each entry's first item)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = []
    for key, value in stack.items():
        path = value[0] if isinstance(value, tuple) and isinstance(value[0], str) else key
        paths.append(path.removeprefix("L__self__").replace("L__self___", ""))
    return paths


def _is_adaptive_pool(info: NodeInfo) -> bool:
    return "adaptive" in info.operation.lower() or "adaptive" in str(info.node.target).lower()


def _is_norm(info: NodeInfo) -> bool:
    return isinstance(info.module, nn.LayerNorm | nn.GroupNorm | nn.RMSNorm) or (
        "layer_norm" in str(info.node.target) or "norm" in info.operation.lower()
    )


def _default_layer(
    graph: ModelGraph,
    one: dict[fx.Node, Any],
    patch: tuple[int, int] | None,
    size: tuple[int, ...],
) -> CamLayer:
    """The last map node whose grid gets a gradient (see the module's docstring)."""
    feed = {
        n: v.detach().requires_grad_(True)
        if isinstance(v, torch.Tensor) and v.is_floating_point() and n in graph.source_nodes
        else v
        for n, v in one.items()
    }
    with GRAPH_LOCK.shared(), torch.enable_grad():
        values = run_forward(graph, feed, keep=True, global_autograd=True).values
        output = graph.output_value(values)
    layouts = _layouts(graph, values)
    candidates: list[CamLayer] = []
    for info in graph.nodes:
        if info.node.meta.get(WRITTEN_OUT) or _is_adaptive_pool(info):
            continue
        layer = _as_layer(info, _value(values, info.node), layouts, patch, size)
        if layer is None:
            continue
        inputs = info.signal_inputs
        if (
            info.kind in (Kind.REARRANGE, Kind.IDENTITY)
            and candidates
            and inputs
            and candidates[-1].node in inputs
            and candidates[-1].grid == layer.grid
        ):
            continue  # the same values rearranged (a permute to channels first, a dropout)
        candidates.append(layer)
    if not candidates:
        raise InputError(
            "found no node whose output is a spatial map (N, C, h, w) or a token sequence on "
            "the input's patch grid; pass layer= (a node name or module path)"
        )
    tensors = [values[c.node] for c in candidates]
    reached = [t.requires_grad for t in tensors]
    wanted = [t for t, r in zip(tensors, reached, strict=True) if r]
    grads = iter(
        torch.autograd.grad(output.sum(), wanted, allow_unused=True)
        if wanted and output.requires_grad
        else []
    )
    live = []
    for layer, is_reached in zip(candidates, reached, strict=True):
        grad = next(grads) if is_reached else None
        if grad is not None and bool(layer.to_map(grad).ne(0).any()):
            live.append(layer)
    live = live or candidates
    spread = [c for c in live if c.grid[0] * c.grid[1] > 1] or live
    last = spread[-1]
    if last.layout == TOKENS:
        norms = [c for c in spread if c.layout == TOKENS and _is_norm(graph.infos[c.node])]
        if norms:
            return norms[-1]
    return last
