"""TorchScript models as torch.fx graphs innspect can analyze (TorchScript cannot be traced).

torch's TorchScript-to-export converter gives ATen operations; those the operations table
(``graph/ops.py``) names get their torch functions back, and ``F.linear`` / ``F.convNd`` /
eval-mode batch norms / pooling on stored tensors become layer modules again, so the rules
see layers as in the original model."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from innspect.errors import NotAnalyzableModelError, first_line

# aten operations of a converted TorchScript graph -> the torch functions innspect classifies.
# Each pair takes the same positional arguments.
_ATEN_TO_TORCH: dict[Any, Callable[..., Any]] = {
    torch.ops.aten.conv1d.default: F.conv1d,
    torch.ops.aten.conv2d.default: F.conv2d,
    torch.ops.aten.conv3d.default: F.conv3d,
    torch.ops.aten.linear.default: F.linear,
    torch.ops.aten.relu.default: torch.relu,
    # In-place forms (TorchScript's `out += identity`, `relu_`): innspect keeps every recorded
    # value as it was produced, so they become their out-of-place twins.
    torch.ops.aten.relu_.default: torch.relu,
    torch.ops.aten.add_.Tensor: torch.add,
    torch.ops.aten.max_pool2d.default: F.max_pool2d,
    torch.ops.aten.avg_pool2d.default: F.avg_pool2d,
    torch.ops.aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    torch.ops.aten.flatten.using_ints: torch.flatten,
    torch.ops.aten.view.default: torch.reshape,
    torch.ops.aten.reshape.default: torch.reshape,
    torch.ops.aten.add.Tensor: torch.add,
    torch.ops.aten.cat.default: torch.cat,
    torch.ops.aten.mean.dim: torch.mean,
    torch.ops.aten.dropout.default: F.dropout,
}


def torchscript_to_fx(scripted: torch.jit.ScriptModule, example: torch.Tensor) -> fx.GraphModule:
    """Convert a TorchScript module to a plain torch.fx GraphModule innspect can analyze.

    Uses torch's TorchScript-to-export converter (``torch._export.converter``, a private API
    of the pinned torch), drops its shape guards, returns a single output tensor instead of a
    1-tuple, and maps the common aten operations back to the torch functions innspect's
    graph classifier knows (so ReLUs stay ReLUs for deconvnet, guided backprop and LRP).
    """
    try:
        from torch._export.converter import TS2EPConverter

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = TS2EPConverter(scripted, (example,)).convert().module()
    except Exception as error:  # noqa: BLE001
        raise NotAnalyzableModelError(
            f"cannot convert the TorchScript model to a graph: {first_line(error)}; pass the "
            "model as package.module:factory with --weights instead"
        ) from error
    graph = fx.Graph()
    output = graph.graph_copy(exported.graph, {})
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
        elif node.op == "call_function" and node.target in _ATEN_TO_TORCH:
            node.target = _ATEN_TO_TORCH[node.target]
    if isinstance(output, tuple | list) and len(output) == 1:
        output = output[0]
    graph.output(output)
    module = fx.GraphModule(exported, graph, class_name=type(scripted).__name__ or "Scripted")
    _layers_as_modules(module)
    return module


def _layers_as_modules(module: fx.GraphModule) -> None:
    """Turn ``F.linear`` / ``F.convNd`` / eval-mode ``batch_norm`` calls on stored tensors
    into nn.Linear / nn.ConvNd / nn.BatchNormNd modules.

    innspect's LRP rules work on layer modules; the new modules share the stored tensors.
    """
    convolutions = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
    for index, node in enumerate(list(module.graph.nodes)):
        if node.op == "call_function" and node.target is torch.ops.aten.batch_norm.default:
            _batch_norm_as_module(module, node, f"layer_{index}")
            continue
        if node.op == "call_function" and node.target in _POOLING:
            _pooling_as_module(module, node, f"layer_{index}")
            continue
        if node.op != "call_function" or node.target not in (F.linear, *convolutions):
            continue
        args = list(node.args) + [None] * 7
        weight_node, bias_node = args[1], args[2]
        if not _is_attr(weight_node) or not (bias_node is None or _is_attr(bias_node)):
            continue
        weight = _attribute(module, weight_node.target)
        bias = None if bias_node is None else _attribute(module, bias_node.target)
        if node.target is F.linear:
            layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            stride, padding, dilation = args[3] or 1, args[4] or 0, args[5] or 1
            groups = args[6] or 1
            layer = convolutions[node.target](
                weight.shape[1] * groups,
                weight.shape[0],
                tuple(weight.shape[2:]),
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=bias is not None,
            )
        layer.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
        name = f"layer_{index}"
        module.add_submodule(name, layer)
        with module.graph.inserting_before(node):
            replacement = module.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        module.graph.erase_node(node)
    module.graph.eliminate_dead_code()
    module.recompile()


def _max_pool(kernel, stride=(), padding=0, dilation=1, ceil_mode=False) -> nn.Module:
    return nn.MaxPool2d(kernel, tuple(stride) or kernel, padding, dilation, ceil_mode=ceil_mode)


def _avg_pool(
    kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor=None
) -> nn.Module:
    return nn.AvgPool2d(
        kernel, tuple(stride) or kernel, padding, ceil_mode, count_include_pad, divisor
    )


# Pooling calls become modules too: Zennit's composites, which innspect follows, treat pooling
# modules (z-rule for averages) and functional pooling (the gradient) differently.
_POOLING: dict[Any, Callable[..., nn.Module]] = {
    F.max_pool2d: _max_pool,
    F.avg_pool2d: _avg_pool,
    F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
}


def _pooling_as_module(module: fx.GraphModule, node: fx.Node, name: str) -> None:
    if node.kwargs or any(isinstance(a, fx.Node) for a in node.args[1:]):
        return  # arguments computed in the graph: keep the call
    module.add_submodule(name, _POOLING[node.target](*node.args[1:]))
    with module.graph.inserting_before(node):
        replacement = module.graph.call_module(name, (node.args[0],))
    node.replace_all_uses_with(replacement)
    module.graph.erase_node(node)


def _batch_norm_as_module(module: fx.GraphModule, node: fx.Node, name: str) -> None:
    """An eval-mode ``aten.batch_norm`` on stored tensors as an nn.BatchNormNd module, which
    the relevance methods fold into the convolution before it."""
    args = list(node.args) + [None] * 9
    source, weight, bias, mean, var, training, _, eps = args[:8]
    if training or not all(_is_attr(a) or a is None for a in (weight, bias)):
        return
    if not (_is_attr(mean) and _is_attr(var)):
        return
    running_mean = _attribute(module, mean.target)
    value = source.meta.get("val") if isinstance(source, fx.Node) else None
    rank = value.dim() if isinstance(value, torch.Tensor) else 4
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 5: nn.BatchNorm3d}.get(rank, nn.BatchNorm2d)
    layer = kind(
        running_mean.shape[0],
        eps=float(eps if eps is not None else 1e-5),
        affine=weight is not None,
    )
    if weight is not None:
        layer.weight = nn.Parameter(_attribute(module, weight.target).detach())
    if bias is not None:
        layer.bias = nn.Parameter(_attribute(module, bias.target).detach())
    layer.running_mean = running_mean.detach().clone()
    layer.running_var = _attribute(module, var.target).detach().clone()
    layer.eval()
    module.add_submodule(name, layer)
    with module.graph.inserting_before(node):
        replacement = module.graph.call_module(name, (source,))
    node.replace_all_uses_with(replacement)
    module.graph.erase_node(node)


def _attribute(module: nn.Module, target: str) -> torch.Tensor:
    return functools.reduce(getattr, target.split("."), module)


def _is_attr(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"
