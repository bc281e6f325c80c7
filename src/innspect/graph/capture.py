"""Capture: turn a user's nn.Module into a torch.fx graph without touching the module.

torch.fx traces an eval view of the model (``graph/views.py``) under ``GRAPH_LOCK`` held
exclusively (``graph/lock.py``: fx patches ``nn.Module`` for the whole process while it
traces); attention is written out while tracing (``graph/attention.py``). Where fx fails
and an example input is given, torch.export is tried, and its ATen calls that are one of
the model's layers become calls of that layer again (the operations table says which).
The graph's inputs are the forward arguments the caller passes (``graph/call.py``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from innspect.errors import NotAnalyzableModelError
from innspect.graph import attention, ops
from innspect.graph.call import CallSpec
from innspect.graph.lock import GRAPH_LOCK
from innspect.graph.views import eval_view, hooked_module, refuse_hooks


@contextlib.contextmanager
def _torch_left_unpatched() -> Iterator[None]:
    """Restore nn.Module's methods should a tracer fail to (fx patches them globally)."""
    saved = {name: vars(nn.Module)[name] for name in ("__call__", "__getattr__")}
    try:
        yield
    finally:
        for name, method in saved.items():
            if vars(nn.Module)[name] is not method:
                setattr(nn.Module, name, method)


class _LeafTracer(fx.Tracer):
    """fx tracer keeping every torch.nn layer as one node and tracing through user modules.

    fx's default already treats torch.nn modules (except containers) as leaves; user modules
    and torchvision blocks are traced through, so their additions and concatenations become
    nodes of their own. Attention (``nn.MultiheadAttention``, ``nn.TransformerEncoder``
    and its layers, ``F.scaled_dot_product_attention``) is written out in plain operations
    (``graph/attention.py``) so the relevance rules reach its projections and softmax.
    """

    _writing_out = 0  # > 0 while a decomposition runs: its nodes are tagged
    _thread: int | None = None  # the thread tracing

    # fx patches nn.Module.__call__ and __getattr__ for the whole process while it traces:
    # a training thread calling its model meanwhile would be traced into this graph (its
    # parameters read as proxies). Calls from other threads run as if nothing were patched.
    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        self._thread = threading.get_ident()
        try:
            return super().trace(root, concrete_args)
        finally:
            self._thread = None

    def _other_thread(self) -> bool:
        return threading.get_ident() != self._thread

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self._other_thread():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self._other_thread():
            return forward(*args, **kwargs)
        if isinstance(m, nn.MultiheadAttention):
            return self._written_out(attention.multihead_attention, m, m.out_proj, *args, **kwargs)
        if isinstance(m, nn.TransformerEncoderLayer):
            return self._written_out(attention.encoder_layer, m, *args, **kwargs)
        if isinstance(m, nn.TransformerEncoder):
            return self._written_out(attention.encoder, m, *args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any):
        if kind == "call_function":
            if target is F.scaled_dot_product_attention:
                return self._written_out(attention.sdpa, *args, **kwargs)
            qualname = f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"
            if qualname in attention.DECOMPOSED:
                return self._written_out(attention.DECOMPOSED[qualname], *args, **kwargs)
        return super().create_proxy(kind, target, args, kwargs, *rest, **kw)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        if self._writing_out:
            node.meta[attention.WRITTEN_OUT] = True
        return node

    def _written_out(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        self._writing_out += 1
        try:
            return function(*args, **kwargs)
        finally:
            self._writing_out -= 1


def capture(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[Any] | None = None,
    call: CallSpec | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule that shares (never copies) the model's parameters.

    Tries torch.fx symbolic tracing first (arguments in ``call.bound`` fixed to their
    defaults); if that fails and an example input is given (a tensor, or one value per
    name of ``call.names``), torch.export with a dynamic batch dimension. Raises
    NotAnalyzableModelError naming both failures otherwise. The graph's layers are eval
    views of the model's (``eval_view``); the whole capture holds ``GRAPH_LOCK`` exclusively.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise NotAnalyzableModelError(
            "TorchScript modules cannot be traced by torch.fx; pass the original nn.Module "
            "(or load its weights into the Python class)."
        )
    refuse_hooks(model)
    _refuse_detection(model)
    with GRAPH_LOCK.exclusive(), _torch_left_unpatched():
        view = eval_view(model)
        if isinstance(view, fx.GraphModule):
            # Already a graph: copy the graph so canonicalisation never edits the user's one.
            return fx.GraphModule(view, _copy_graph(view.graph), class_name=type(model).__name__)
        concrete = dict(call.bound) if call is not None else None
        try:
            tracer = _LeafTracer()
            graph = tracer.trace(view, concrete_args=concrete or None)
            return fx.GraphModule(tracer.root, graph, class_name=type(view).__name__)
        except Exception as fx_error:  # noqa: BLE001 - any tracing failure leads to the fallback
            if example_input is None:
                raise NotAnalyzableModelError(
                    f"torch.fx could not trace {type(view).__name__}: {_brief(fx_error)}"
                ) from fx_error
            values = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
            args, kwargs = model_arguments(call, values)
            hooked = hooked_module(model)
            if hooked is not None:
                raise NotAnalyzableModelError(
                    f"torch.fx could not trace {type(view).__name__} ({_brief(fx_error)}), and the "
                    f"torch.export fallback would run the hook on module '{hooked}' once, at "
                    "capture, instead of with every analysis; remove the hook (handle.remove()) "
                    "before analysis"
                ) from fx_error
            try:
                with torch_logs_quiet():
                    return _export(view, args, kwargs)
            except Exception as export_error:  # noqa: BLE001
                raise NotAnalyzableModelError(
                    f"{type(view).__name__} could not be captured: torch.fx failed with "
                    f"'{_brief(fx_error)}', torch.export failed with '{_brief(export_error)}'. "
                    "Make the model's "
                    "forward free of data-dependent Python control flow, or wrap the "
                    "untraceable part in a submodule."
                ) from export_error


# Object detectors whose output is a data-dependent number of boxes (torchvision's R-CNNs,
# RetinaNet, FCOS, SSD, SSDlite; DETR-style models return fixed queries and are not here).
_DETECTION_MODULES = ("torchvision.models.detection.",)


def _refuse_detection(model: nn.Module) -> None:
    """One line instead of two capture failures: a detector's boxes are chosen by
    non-maximum suppression and top-k, whose count depends on the values."""
    cls = type(model)
    if cls.__module__.startswith(_DETECTION_MODULES):
        raise NotAnalyzableModelError(
            f"{cls.__name__} is an object detector: it returns as many boxes as non-maximum "
            "suppression keeps, a number the values decide, which innspect's graph cannot hold; "
            "explain its backbone or its classification head on fixed boxes (a module of its "
            "own), or a classification or segmentation model"
        )


def model_arguments(call: CallSpec | None, values: Sequence[Any]) -> tuple[tuple, dict[str, Any]]:
    """The positional and keyword arguments of calling the model with ``values`` (one per
    name of ``call.names``): by keyword, with the values the caller fixed, where the call
    is by keyword or fixes some (the defaults need no passing); else by position."""
    if call is not None and (call.keyword or call.fixed):
        bound = dict(call.bound)
        kwargs = {
            **dict(zip(call.names, values, strict=True)),
            **{name: bound[name] for name in call.fixed},
        }
        return (), kwargs
    return tuple(values), {}


def native_failure(model: nn.Module, call: CallSpec, values: Sequence[Any]) -> Exception | None:
    """What the model raises when run without innspect on ``values`` (one per name of
    ``call.names``), or None when it runs.

    Tells a failure of the input (the model fails on it too) from a failure of innspect's
    graph (the model runs). The model runs as its eval view (``graph/views.py``: its
    training flags and statistics stay as they are) without autograd and without its
    forward hooks: innspect accepts only hooks that observe (``refuse_hooks``), which
    change nothing the verdict depends on and must not see a call the user never made.
    """
    args, kwargs = model_arguments(call, values)
    view = eval_view(model)
    for module in view.modules():
        if not isinstance(module, torch.jit.ScriptModule):  # a view's own dicts, not the user's
            module.__dict__["_forward_hooks"] = OrderedDict()
            module.__dict__["_forward_pre_hooks"] = OrderedDict()
    try:
        with torch.no_grad():
            view(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure of the model is the answer
        return error
    return None


BRIEF_MESSAGE_CHARS = 400


def _brief(error: BaseException) -> str:
    """A tracer's message cut to its first line and ``BRIEF_MESSAGE_CHARS`` characters.

    torch.export's errors on a detection model run to hundreds of kilobytes (the whole graph,
    the user stack, guard lists); they belong in ``--debug``'s traceback (``raise ... from``
    keeps them), not in a one-line error.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if len(first) > BRIEF_MESSAGE_CHARS or len(lines) > 1:
        return first[:BRIEF_MESSAGE_CHARS].rstrip() + " [...]"
    return first


@contextlib.contextmanager
def torch_logs_quiet(drop: bool = False) -> Iterator[None]:
    """Keep a failed torch.export's graph dump and log records off the terminal.

    On failure torch.export prints the partial graph to ``sys.stderr`` (tens of kilobytes
    on a detection model) and logs guard text; the failure itself reaches the user through
    the exception (whose chain ``--debug`` shows). What a successful export writes (its
    warnings) is passed on afterwards, unless ``drop``.
    """
    names = ("torch._dynamo", "torch.export", "torch._export", "torch.fx")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    except BaseException:
        raise  # what torch printed on the way to this error is dropped with it
    else:
        if not drop:
            sys.stderr.write(held.getvalue())
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(view: nn.Module, args: tuple, kwargs: dict[str, Any]) -> fx.GraphModule:
    """torch.export of the view with a dynamic batch dimension, its layers as modules again.

    ``Dim.AUTO`` keeps axis 0 of every tensor input symbolic where the model allows it (a
    model that fixes it gets a static graph for that axis rather than an error). A batch of
    one is doubled for the export, since torch.export specialises a dimension of size 1. If
    the dynamic export fails, a static one is tried.
    """

    def doubled(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 1:
            return torch.cat([value, value])
        return value

    def batch_axis(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return {0: torch.export.Dim.AUTO}
        return None

    try:
        dynamic_args = tuple(doubled(v) for v in args)
        dynamic_kwargs = {k: doubled(v) for k, v in kwargs.items()}
        shapes = (
            {k: batch_axis(v) for k, v in dynamic_kwargs.items()}
            if kwargs
            else tuple(batch_axis(v) for v in dynamic_args)
        )
        exported = torch.export.export(
            view, dynamic_args, dynamic_kwargs or None, dynamic_shapes=shapes, strict=False
        )
    except Exception:  # noqa: BLE001 - a model that fixes its batch size: a static export
        exported = torch.export.export(view, args, kwargs or None, strict=False)
    module = exported.module()
    _calls_as_model_layers(module, view)
    attention.inline_exported_attention(module)
    attention.inline_autocast(module)
    guards = getattr(module, "_guards_fn", None)
    if isinstance(guards, nn.Module):
        module._guards_fn = _ExportGuards(guards)
        module.recompile()
    return module


class _ExportGuards(nn.Module):
    """torch.export's input checks, failing as a capture limit rather than as bad input.

    A model whose forward fixes a dimension (``int(x.shape[0])``...) is exported with that
    size; another size then fails torch's guard with an AssertionError that would read as
    the input's fault.
    """

    def __init__(self, guards: nn.Module) -> None:
        super().__init__()
        self.guards = guards

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.guards(*args, **kwargs)
        except AssertionError as error:
            raise NotAnalyzableModelError(
                f"torch.fx could not trace the model, and torch.export fixed a shape of the "
                f"first input it saw ({error}); analyze inputs of that shape (e.g. in batches of "
                "that size), or make the forward traceable by torch.fx"
            ) from error


def _calls_as_model_layers(gm: fx.GraphModule, view: nn.Module) -> None:
    """Turn ATen calls that are exactly one of the model's torch.nn layers' forward back into
    calls of that layer.

    torch.export records ``nn.BatchNorm2d`` as ``aten.batch_norm`` on its tensors; as a module
    node again it is folded and mapped like on the fx path (and Conv/Linear likewise). Only
    calls of the operations table's layers (``ops.layer_call``) whose innermost module
    (``nn_module_stack``) is such a layer, unsubclassed, reading that layer's own tensors,
    are rewritten; layers without tensors (pooling) stay calls, as nothing shows the call is
    the layer's forward rather than a functional call inside it.
    """
    for node in list(gm.graph.nodes):
        entry = ops.layer_call(node)
        stack = node.meta.get("nn_module_stack")
        if entry is None or not entry.tensors or not stack or not node.args:
            continue
        tensor_names = entry.tensors
        path = list(stack.values())[-1][0]
        try:
            layer = view.get_submodule(path)
        except AttributeError:
            continue
        if (
            not isinstance(layer, entry.module)
            or not type(layer).__module__.startswith("torch.nn.")
            or getattr(layer, "padding_mode", "zeros") != "zeros"  # padding is a node of its own
            or layer.training
        ):
            continue
        tensor_args = list(node.args[1 : 1 + len(tensor_names)])
        tensor_args += [node.kwargs.get(n) for n in tensor_names[len(tensor_args) :]]
        if not all(
            (arg is None and getattr(layer, name) is None)
            or (
                isinstance(arg, fx.Node) and arg.op == "get_attr" and arg.target == f"{path}.{name}"
            )
            for arg, name in zip(tensor_args, tensor_names, strict=True)
        ):
            continue
        parent_path, _, child = path.rpartition(".")
        gm.get_submodule(parent_path)._modules[child] = layer
        node.op, node.target, node.args, node.kwargs = "call_module", path, (node.args[0],), {}
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.recompile()


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    new_graph = fx.Graph()
    output = new_graph.graph_copy(graph, {})
    new_graph.output(output)
    return new_graph


def call_arguments(node: fx.Node, lookup: Callable[[fx.Node], Any]) -> tuple[Any, dict]:
    """``node``'s arguments and keyword arguments with every node replaced by ``lookup(node)``.

    Unlike ``fx.node.map_arg``, lists and dicts come back as plain (mutable) ``list`` and
    ``dict``: fx stores them as ``immutable_list``/``immutable_dict``, while the model's
    own code hands the function a fresh list it may change in place (torchvision's
    ``_get_window_and_shift_size``, called by ``swin3d_t``, assigns into its list argument).
    """
    return _mapped(node.args, lookup), _mapped(node.kwargs, lookup)


def _mapped(value: Any, lookup: Callable[[fx.Node], Any]) -> Any:
    if isinstance(value, fx.Node):
        return lookup(value)
    if isinstance(value, list):
        return [_mapped(v, lookup) for v in value]
    if isinstance(value, tuple):
        items = tuple(_mapped(v, lookup) for v in value)
        return type(value)(*items) if hasattr(value, "_fields") else items
    if isinstance(value, dict):
        return {k: _mapped(v, lookup) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(*(_mapped(v, lookup) for v in (value.start, value.stop, value.step)))
    return value
