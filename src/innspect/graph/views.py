"""The model as innspect runs it, the user's module never modified (docs/reliability.md).

- **Not even its ``training`` flags.** innspect traces and runs an *eval view* of the model
  (``eval_view``): a mirror of its module tree in eval mode that shares every parameter,
  buffer and hook with the original. DataParallel and ``torch.compile`` wrappers are
  unwrapped first (``unwrap``).
- **Hooks never make innspect explain another function than ``model(x)``**
  (``refuse_hooks``): forward hooks on torch.nn layers that only observe run with every
  analysis; others are refused, naming them.
"""

from __future__ import annotations

import collections
import copy

import torch
from torch import fx, nn

from innspect.errors import NotAnalyzableModelError

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
    # By class, not through torch._dynamo: another thread (an optimizer's first step) may
    # be importing that module right now, half initialised.
    return any(
        cls.__name__ == "OptimizedModule" and cls.__module__.startswith("torch._dynamo")
        for cls in type(model).__mro__
    )


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
    # The layers capture keeps whole: fx's own rule (its tracer's is_leaf_module), which
    # the capture tracer does not change.
    tracer = fx.Tracer()
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


def hooked_module(model: nn.Module) -> str | None:
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
