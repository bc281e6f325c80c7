"""TorchScript models as torch.fx graphs innspect can analyze (TorchScript cannot be traced).

torch's TorchScript-to-export converter gives ATen operations. Calls that are one layer's
forward on stored tensors (linear, convolutions, eval-mode batch norms, pooling: the
operations table's ``Layer`` entries) become layer modules again, so the rules see layers
as in the original model; the other ATen operations the table names get their torch
functions back (``ops.ATEN_TO_TORCH``)."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import fx, nn

from innspect.errors import NotAnalyzableModelError, first_line
from innspect.graph import ops
from innspect.graph.capture import torch_logs_quiet


def torchscript_to_fx(scripted: torch.jit.ScriptModule, example: torch.Tensor) -> fx.GraphModule:
    """Convert a TorchScript module to a plain torch.fx GraphModule innspect can analyze.

    Uses torch's TorchScript-to-export converter (``torch._export.converter``, a private API
    of the pinned torch), drops its shape guards, returns a single output tensor instead of a
    1-tuple, turns layer calls into layer modules and maps the other common aten operations
    back to the torch functions innspect's graph classifier knows (so ReLUs stay ReLUs for
    deconvnet, guided backprop and LRP).
    """
    # Read before the conversion, which inlines the scripted module's graphs in place.
    stateless = _stateless_calls(scripted)
    try:
        from torch._export.converter import TS2EPConverter

        # Its shape-specialisation notices ("dimension inputs[0].shape[0] 0/1 specialized")
        # are logged at WARNING: not for the user's terminal.
        with warnings.catch_warnings(), torch_logs_quiet(drop=True):
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
    if isinstance(output, tuple | list) and len(output) == 1:
        output = output[0]
    graph.output(output)
    # The scripted module's own class name (TorchScript keeps it), as the user wrote it.
    name = getattr(scripted, "original_name", None) or type(scripted).__name__ or "Scripted"
    module = fx.GraphModule(exported, graph, class_name=name)
    _calls_as_new_layers(module)
    _stateless_calls_as_modules(module, stateless)
    for node in module.graph.nodes:
        function = ops.torch_function(node.target) if node.op == "call_function" else None
        if function is not None:
            node.target = function
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def _calls_as_new_layers(module: fx.GraphModule) -> None:
    """Give each ATen call that is one layer's forward on stored tensors a new layer module.

    A TorchScript graph keeps no module the call could point back to, so the layer is built
    from the call (``Layer.build``) when its tensors are ``get_attr`` nodes (or absent) and
    its other arguments constants; it shares the stored tensors' values.
    """
    for index, node in enumerate(list(module.graph.nodes)):
        layer = ops.layer_call(node)
        if layer is None or not node.args or node.kwargs:
            continue
        count = len(layer.tensors)
        stored, constants = node.args[1 : 1 + count], node.args[1 + count :]
        if not all(arg is None or _is_attr(arg) for arg in stored) or _has_node(constants):
            continue  # computed in the graph: keep the call
        values = [None if arg is None else _attribute(module, arg.target) for arg in stored]
        source = node.args[0]
        value = source.meta.get("val") if isinstance(source, fx.Node) else None
        rank = value.dim() if isinstance(value, torch.Tensor) else None
        built = layer.build([*values, *constants], rank)
        if built is None:
            continue
        name = _owner(stored, layer.tensors) or f"layer_{index}"
        module.add_submodule(name, built)
        with module.graph.inserting_before(node):
            replacement = module.graph.call_module(name, (source,))
        # The layer computes what the call did: its metadata (the output's shape, which the
        # next layer's rank is read from) holds for it.
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        module.graph.erase_node(node)


# Stateless torch.nn modules the converter inlines into one ATen call: their class (as
# TorchScript keeps it), that call's name, and the module again from the scripted one's
# attributes.
_STATELESS: dict[str, tuple[str, Any]] = {
    "ReLU": ("relu", lambda s: nn.ReLU()),
    "ReLU6": ("hardtanh", lambda s: nn.ReLU6()),
    "LeakyReLU": ("leaky_relu", lambda s: nn.LeakyReLU(s.negative_slope)),
    "ELU": ("elu", lambda s: nn.ELU(s.alpha)),
    "SiLU": ("silu", lambda s: nn.SiLU()),
    "Sigmoid": ("sigmoid", lambda s: nn.Sigmoid()),
    "Tanh": ("tanh", lambda s: nn.Tanh()),
    "Softmax": ("softmax", lambda s: nn.Softmax(s.dim)),
    "Flatten": ("flatten", lambda s: nn.Flatten(s.start_dim, s.end_dim)),
}


def _stateless_calls(scripted: torch.jit.ScriptModule, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, scripted submodule) of each call of a stateless module in execution order,
    read from the forward graphs before TorchScript inlines them (``prim::CallMethod`` on a
    ``prim::GetAttr``), nested modules followed."""
    try:
        graph = scripted.graph
    except (AttributeError, RuntimeError):
        return []
    attributes: dict[Any, str] = {}
    calls: list[tuple[str, Any]] = []
    for node in graph.nodes():
        if node.kind() == "prim::GetAttr":
            attributes[node.output()] = node.s("name")
        elif node.kind() == "prim::CallMethod" and node.s("name") == "forward":
            attribute = attributes.get(next(node.inputs()))
            child = getattr(scripted, attribute, None) if attribute else None
            if not isinstance(child, torch.jit.ScriptModule):
                continue
            path = f"{prefix}{attribute}"
            if getattr(child, "original_name", "") in _STATELESS:
                calls.append((path, child))
            else:
                calls.extend(_stateless_calls(child, f"{path}."))
    return calls


def _stateless_calls_as_modules(module: fx.GraphModule, calls: list[tuple[str, Any]]) -> None:
    """Give the ATen calls of stateless modules (a ReLU named ``act``) their module again,
    under the scripted model's path, so nodes read as the user's layers. Matched by order
    among the calls of the same operation, and only where every such call comes from such a
    module (as many calls as module calls): otherwise the names are left out, never guessed."""
    by_operation: dict[str, list[tuple[str, Any]]] = {}
    for path, child in calls:
        by_operation.setdefault(_STATELESS[child.original_name][0], []).append((path, child))
    for operation, expected in by_operation.items():
        found = [
            node
            for node in module.graph.nodes
            if node.op == "call_function" and getattr(node.target, "_opname", None) == operation
        ]
        if len(found) != len(expected):
            continue
        for node, (path, child) in zip(found, expected, strict=True):
            module.add_submodule(path, _STATELESS[child.original_name][1](child))
            with module.graph.inserting_before(node):
                replacement = module.graph.call_module(path, (node.args[0],))
            replacement.meta = dict(node.meta)
            node.replace_all_uses_with(replacement)
            module.graph.erase_node(node)


def _owner(stored: Any, names: Any) -> str | None:
    """The scripted model's path of the layer whose tensors these are ("0" for "0.weight"
    and "0.bias"), so nodes and parameters keep the user's names; None where the tensors
    do not belong to one module under the layer's attribute names."""
    owners = set()
    for arg, name in zip(stored, names, strict=False):
        if arg is None:
            continue
        owner, _, attribute = str(arg.target).rpartition(".")
        if attribute != name or not owner:
            return None
        owners.add(owner)
    return owners.pop() if len(owners) == 1 else None


def _attribute(module: torch.nn.Module, target: str) -> torch.Tensor:
    return functools.reduce(getattr, target.split("."), module)


def _is_attr(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _has_node(args: Any) -> bool:
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    return bool(found)
