"""Capture: turn a user's nn.Module into a torch.fx graph without touching the module.

Three promises live here (docs/reliability.md):

- **The user's module is never modified, not even its ``training`` flags.** innspect traces
  and runs an *eval view* of the model (``eval_view``): a mirror of its module tree in eval
  mode that shares every parameter, buffer and hook with the original.
- **Capture is safe with threads.** torch.fx patches ``nn.Module.__call__`` and
  ``__getattr__`` for the whole process while it traces, so any module called by another
  thread meanwhile is recorded into the wrong graph. ``capture`` holds ``GRAPH_LOCK``
  exclusively; every analysis holds it shared while it runs modules, so analyses run in
  parallel with each other but never during a capture, and nothing stays patched.
- **Hooks never make innspect explain another function than ``model(x)``**
  (``refuse_hooks``).

The graph's inputs are the forward arguments the caller passes (``CallSpec``); arguments
with defaults that the caller leaves out (timm ViT's ``attn_mask=None, is_causal=False``)
are bound to their defaults at capture time, as the model's own call would use them.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import inspect
import io
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from innspect.errors import InputError, NotAnalyzableModelError
from innspect.graph import attention, ops


class _GraphLock:
    """A readers-writer lock: analyses share it, a capture holds it alone.

    Reentrant for both sides, and a thread holding it shared may take it exclusively (an
    analysis capturing its graph on first use): its shared holds are handed back while it
    waits, so two threads upgrading at once cannot deadlock. Waiting writers block new
    readers, so a capture is not starved by a stream of analyses.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock shared: modules may run, no capture may start."""
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                owned = False  # already exclusive: nothing to wait for
            else:
                if self._depth() == 0:
                    while self._writer is not None or self._writers_waiting:
                        self._condition.wait()
                self._readers += 1
                self._local.depth = self._depth() + 1
                owned = True
        try:
            yield
        finally:
            if owned:
                with self._condition:
                    self._readers -= 1
                    self._local.depth -= 1
                    self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock alone: no module of any analysis runs meanwhile."""
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                self._writer_depth += 1
                held = 0
            else:
                held = self._depth()
                self._readers -= held  # hand back this thread's shared holds while waiting
                self._writers_waiting += 1
                self._condition.notify_all()
                while self._writer is not None or self._readers:
                    self._condition.wait()
                self._writers_waiting -= 1
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._condition:
                self._writer_depth -= 1
                if self._writer_depth == 0:
                    self._writer = None
                    self._readers += held
                self._condition.notify_all()


GRAPH_LOCK = _GraphLock()
"""Held shared by every analysis while it runs modules and exclusively by every capture."""

# The attributes of nn.Module every Module instance owns (parameters, buffers, hooks...):
# a view shares these dicts with the original; other containers it copies.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


# Containers a view copies (not subclasses such as fx's immutable_list, which stay shared).
_MUTABLE_CONTAINERS = (dict, list, set, collections.OrderedDict, collections.defaultdict)


def eval_view(model: nn.Module) -> nn.Module:
    """A mirror of ``model``'s module tree in eval mode, sharing parameters, buffers and hooks.

    Each module is a shallow copy with ``training=False`` whose children are views too, so
    running or tracing the view never reads or writes the user's ``training`` flags (another
    thread may be training the model meanwhile). Forward hooks run from the user's own
    dicts, but may only observe (``refuse_hooks``). Plain dict/list/set attributes are copied,
    so state a module writes while it is traced (timm's LeViT caches its attention biases in
    a dict, which would hold fx ``Proxy`` objects) stays in the view.
    """
    memo: dict[int, nn.Module] = {}

    def view(module: nn.Module) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        if isinstance(module, torch.jit.ScriptModule):
            # Compiled code reads its flags from C++: a view cannot change them.
            if any(m.training for m in module.modules()):
                raise NotAnalyzableModelError(
                    f"the TorchScript submodule '{paths.get(id(module), '?')}' is in training "
                    "mode, which innspect cannot switch off without changing it; call .eval() "
                    "on it before analysis"
                )
            return module
        # Not copy.copy: GraphModule's __copy__/__reduce__ rebuild and re-own its graph.
        clone = object.__new__(type(module))
        memo[id(module)] = clone
        state = clone.__dict__
        state.update(module.__dict__)
        for key, value in module.__dict__.items():
            if key not in _MODULE_INTERNALS and type(value) in _MUTABLE_CONTAINERS:
                state[key] = copy.copy(value)
                containers.append(state[key])
            elif type(value) is tuple and any(isinstance(v, nn.Module) for v in value):
                tuples.append((state, key))
        children = type(module._modules)()
        for name, child in module._modules.items():
            children[name] = None if child is None else view(child)
        state["_modules"] = children
        for key in ("_forward_hooks", "_forward_pre_hooks"):
            state[key] = _ObservingHooks(module.__dict__[key], paths.get(id(module), "?"))
        state["training"] = False  # set directly: a custom __setattr__ must not see it
        return clone

    model = unwrap(model)
    paths = {id(m): path for path, m in model.named_modules()}
    containers: list[dict | list | set] = []
    tuples: list[tuple[dict, str]] = []
    root = view(model)
    # Modules also kept in plain lists or dicts (``self.stages = [self.a, self.b]``) must be
    # the views too: fx finds a called module by identity in the traced tree.
    for container in containers:
        if isinstance(container, dict):
            for key, value in container.items():
                if id(value) in memo:
                    container[key] = memo[id(value)]
        elif isinstance(container, list):
            container[:] = [memo.get(id(value), value) for value in container]
    for state, key in tuples:
        state[key] = tuple(memo.get(id(value), value) for value in state[key])
    return root


def unwrap(model: nn.Module) -> nn.Module:
    """The module a wrapper only forwards to (DataParallel, DistributedDataParallel,
    ``torch.compile``): the same function, which torch.fx can trace."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif _is_compiled(model):
            model = model._orig_mod
        else:
            return model


def _is_compiled(model: nn.Module) -> bool:
    dynamo = sys.modules.get("torch._dynamo")  # a compiled model means dynamo is loaded
    return dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule)


def refuse_hooks(model: nn.Module) -> None:
    """Raise if a hook would make innspect explain another function than ``model(x)``.

    innspect's behaviour (docs/reliability.md): forward hooks and pre-hooks on the layers the
    graph keeps whole (torch.nn layers) run on every analysis with the real tensors, as in
    ``model(x)``, and must only observe (``eval_view`` refuses one that returns a value when
    it runs). Refused here: hooks on the model itself (fx traces its ``forward``, not its
    ``__call__``) and on blocks traced through (their hooks would run once, at capture, on
    fx proxies), backward hooks (they would change the gradient methods only) and global
    module hooks.
    """
    from torch.nn.modules import module as module_globals

    for name, hooks in (
        ("a global forward hook", module_globals._global_forward_hooks),
        ("a global forward pre-hook", module_globals._global_forward_pre_hooks),
        ("a global backward hook", module_globals._global_backward_hooks),
        ("a global backward pre-hook", module_globals._global_backward_pre_hooks),
    ):
        if hooks:
            raise NotAnalyzableModelError(
                f"{name} is registered (torch.nn.modules.module.register_module_*); innspect "
                "would not explain the same function as model(x). Remove it (handle.remove()) "
                "during the analysis."
            )
    tracer = _LeafTracer()
    for path, module in unwrap(model).named_modules():
        kept_whole = bool(path) and tracer.is_leaf_module(module, path)
        for kind, hooks, allowed in (
            ("forward hook", module._forward_hooks, kept_whole),
            ("forward pre-hook", module._forward_pre_hooks, kept_whole),
            ("backward hook", module._backward_hooks, False),
            ("backward pre-hook", module._backward_pre_hooks, False),
        ):
            if hooks and not allowed:
                where = f"module '{path}'" if path else "the model itself"
                raise NotAnalyzableModelError(
                    f"{where} ({type(module).__name__}) has a {kind} "
                    f"({_hook_name(next(iter(hooks.values())))}); innspect would not explain "
                    "the same function as model(x) (only forward hooks that observe, on torch.nn "
                    "layers, are run). Remove the hook (handle.remove()) before analysis, or move "
                    "what it computes into the module's forward."
                )


def _hooked_module(model: nn.Module) -> str | None:
    """The path of the first module with a forward hook or pre-hook, if any."""
    for path, module in unwrap(model).named_modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return path
    return None


def _hook_name(hook: object) -> str:
    return getattr(hook, "__qualname__", type(hook).__name__)


class _ObservingHooks(dict):
    """A live view of a module's forward (pre-)hooks whose hooks may only observe.

    nn.Module's call reads the hooks through ``items()``/``__bool__``; this view reads the
    user's dict each time (hooks added later run too) and wraps each hook so that one
    returning a value (replacing the layer's input or output) raises instead.
    """

    def __init__(self, hooks: dict, owner: str) -> None:
        super().__init__()
        self._hooks = hooks
        self._owner = owner

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._hooks)

    def __contains__(self, key: object) -> bool:
        return key in self._hooks

    def __getitem__(self, key: object):  # type: ignore[no-untyped-def]
        return self._observing(self._hooks[key])

    def keys(self):  # type: ignore[no-untyped-def]
        return self._hooks.keys()

    def values(self):  # type: ignore[no-untyped-def]
        return [self._observing(hook) for hook in self._hooks.values()]

    def items(self):  # type: ignore[no-untyped-def]
        return [(key, self._observing(hook)) for key, hook in self._hooks.items()]

    def _observing(self, hook):  # type: ignore[no-untyped-def]
        owner = self._owner

        def observe(*args, **kwargs):  # type: ignore[no-untyped-def]
            if hook(*args, **kwargs) is not None:
                raise NotAnalyzableModelError(
                    f"a hook on module '{owner}' ({_hook_name(hook)}) changes the layer's input "
                    "or output; innspect runs hooks that observe only. Remove it (handle."
                    "remove()) before analysis, or move what it computes into the forward."
                )

        return observe


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

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
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


@dataclass(frozen=True)
class CallSpec:
    """How the model is called: which forward arguments are inputs, which keep defaults.

    Attributes
    ----------
    names
        The forward arguments the caller passes, in the order of the forward's parameters.
    keyword
        Whether they are passed by keyword (``analyze({...})``) or by position.
    bound
        ``(name, value)`` for the parameters that are not inputs: those the caller leaves
        out (their defaults) and those it fixes to a Python value (``fixed``).
    parameters
        Every parameter name of the forward, in order (for messages and placeholders).
    fixed
        Names of the parameters the caller passes as Python values (None, numbers,
        strings: ``{"return_dict": False}``); captured as constants, never inputs.
    """

    names: tuple[str, ...]
    keyword: bool = False
    bound: tuple[tuple[str, Any], ...] = ()
    parameters: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()

    def with_fixed(self, values: dict[str, Any]) -> CallSpec:
        """This call with ``values`` (given by the caller) as constants instead of inputs."""
        if not values:
            return self
        bound = {**dict(self.bound), **values}
        return dataclasses.replace(
            self,
            names=tuple(n for n in self.names if n not in values),
            bound=tuple((p, bound[p]) for p in self.parameters if p in bound),
            fixed=tuple(p for p in self.parameters if p in values or p in self.fixed),
        )

    def key(self) -> tuple[Any, ...]:
        """What a capture depends on, comparable without comparing tensors by value."""
        bound = tuple(
            (n, ("tensor", id(v)) if isinstance(v, torch.Tensor) else v) for n, v in self.bound
        )
        return (self.names, self.keyword, bound)

    def describe(self) -> str:
        """'forward(a, b, c=None)' for messages."""
        defaults = dict(self.bound)
        return (
            "forward("
            + ", ".join(f"{p}={defaults[p]!r}" if p in defaults else p for p in self.parameters)
            + ")"
        )


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _forward_parameters(model: nn.Module) -> list[inspect.Parameter] | None:
    """The forward's named parameters (without self, ``*args`` and ``**kwargs``, which are
    never inputs); None when the signature cannot be read or has only ``*args``/``**kwargs``."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    parameters = [p for p in signature.parameters.values() if p.kind not in _VARIADIC]
    return parameters or None


def bind_call(
    model: nn.Module, n_positional: int | None = None, keywords: Sequence[str] | None = None
) -> CallSpec:
    """The CallSpec of calling ``model`` with ``n_positional`` arguments or with ``keywords``.

    With neither, every parameter without a default is an input. Raises InputError for an
    unknown keyword, too many positional inputs or a missing input without default.
    """
    parameters = _forward_parameters(model)
    if parameters is None:  # *args / **kwargs: the inputs are what the caller passes
        if keywords is not None:
            return CallSpec(tuple(keywords), keyword=True, parameters=tuple(keywords))
        names = tuple(f"input{i}" for i in range(n_positional or 1))
        return CallSpec(names, parameters=names)
    all_names = tuple(p.name for p in parameters)
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if keywords is not None:
        unknown = [k for k in keywords if k not in all_names]
        if unknown:
            raise InputError(
                f"unknown input {unknown[0]!r}: the model's forward takes "
                f"{', '.join(all_names) or 'no arguments'}"
            )
        passed = set(keywords)
    elif n_positional is not None:
        if n_positional > len(positional):
            raise InputError(
                f"{n_positional} inputs given but the model's forward takes "
                f"{len(positional)} positional arguments ({', '.join(all_names)})"
            )
        passed = {p.name for p in positional[:n_positional]}
    else:
        passed = {p.name for p in parameters if p.default is inspect.Parameter.empty}
    bound = []
    for p in parameters:
        if p.name in passed:
            continue
        if p.default is inspect.Parameter.empty:
            raise InputError(
                f"input {p.name!r} is missing: the model's forward takes "
                f"{', '.join(all_names)} and {p.name!r} has no default; pass it "
                "(a tuple of inputs by position, or a dict by name)"
            )
        bound.append((p.name, p.default))
    names = tuple(p.name for p in parameters if p.name in passed)
    return CallSpec(names, keyword=keywords is not None, bound=tuple(bound), parameters=all_names)


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
            if call is not None and (call.keyword or call.fixed):
                # By keyword, with what the caller fixed (the defaults need no passing).
                bound = dict(call.bound)
                args = ()
                kwargs = {
                    **dict(zip(call.names, values, strict=True)),
                    **{name: bound[name] for name in call.fixed},
                }
            else:
                args, kwargs = tuple(values), {}
            hooked = _hooked_module(model)
            if hooked is not None:
                raise NotAnalyzableModelError(
                    f"torch.fx could not trace {type(view).__name__} ({_brief(fx_error)}), and the "
                    f"torch.export fallback would run the hook on module '{hooked}' once, at "
                    "capture, instead of with every analysis; remove the hook (handle.remove()) "
                    "before analysis"
                ) from fx_error
            try:
                with _torch_logs_quiet():
                    return _export(view, args, kwargs)
            except Exception as export_error:  # noqa: BLE001
                raise NotAnalyzableModelError(
                    f"{type(view).__name__} could not be captured: torch.fx failed with "
                    f"'{_brief(fx_error)}', torch.export failed with '{_brief(export_error)}'. "
                    "Make the model's "
                    "forward free of data-dependent Python control flow, or wrap the "
                    "untraceable part in a submodule."
                ) from export_error


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
def _torch_logs_quiet() -> Iterator[None]:
    """Keep a failed torch.export's graph dump and log records off the terminal.

    On failure torch.export prints the partial graph to ``sys.stderr`` (tens of kilobytes
    on a detection model) and logs guard text; the failure itself reaches the user through
    the exception (whose chain ``--debug`` shows). What a successful export writes (its
    warnings) is passed on afterwards.
    """
    loggers = [logging.getLogger(name) for name in ("torch._dynamo", "torch.export", "torch.fx")]
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
