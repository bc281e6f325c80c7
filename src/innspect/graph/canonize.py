"""Canonicalisation: graph rewrites that make the reverse mappings apply cleanly.

All rewrites act on the captured GraphModule. A layer that must change (a ReLU built with
``inplace=True``, a convolution with a BatchNorm folded in) is replaced by a new module
installed on the GraphModule under a fresh name; the user's module is never edited.
"""

from __future__ import annotations

import copy
import operator
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import has_side_effect

from innspect.errors import InputError
from innspect.graph.capture import call_arguments
from innspect.graph.linear_ops import functional_batchnorm_scale_shift
from innspect.graph.ops import aten_name, is_shape_query, out_of_place

_ORIGINAL_TARGETS = "_innspect_original_targets"


def original_target(gm: fx.GraphModule, target: str) -> str:
    """The module path a (possibly replaced) call_module target had in the user's model."""
    return getattr(gm, _ORIGINAL_TARGETS, {}).get(target, target)


def _install(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
    """Point ``node`` at ``module``, installed on ``gm`` itself under a fresh name."""
    original = gm.__dict__.get(_ORIGINAL_TARGETS, {}).get(node.target, node.target)
    node.target = install(gm, module, original)


def install(gm: fx.GraphModule, module: nn.Module, original: str) -> str:
    """Install a new ``module`` on ``gm`` under a fresh name, displayed as ``original``
    (``original_target``); the target for call_module nodes (``graph/recurrent.py``)."""
    originals = gm.__dict__.setdefault(_ORIGINAL_TARGETS, {})
    target = f"_innspect_{len(originals)}"
    while hasattr(gm, target):
        target += "_"
    gm.add_submodule(target, module)
    originals[target] = original
    return target


def _forward_uses_after(node: fx.Node, mutated: fx.Node) -> None:
    """After an in-place op becomes out-of-place, later readers of the mutated value read it."""
    after = False
    for candidate in list(node.graph.nodes):
        if after and mutated in candidate.all_input_nodes:
            candidate.replace_input_with(mutated, node)
        after = after or candidate is node


def remove_inplace(gm: fx.GraphModule) -> None:
    """Rewrite in-place operations as out-of-place ones.

    The reverse pass needs every recorded tensor as it was produced (e.g. a convolution's
    output before an ``inplace=True`` ReLU overwrote it). In-place functions, methods and
    ATen ops (``x += y``, ``x.relu_()``, torch.export's ``aten.add_.Tensor``) become their
    out-of-place twins (``ops.out_of_place``); ``inplace=True`` arguments and modules are
    switched off.
    """
    for node in list(gm.graph.nodes):
        mutated = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        changed = False
        if node.op == "call_function" and node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
            changed = True
        elif (twin := out_of_place(node)) is not None:
            node.target = twin
            changed = True
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            if getattr(module, "inplace", False) is True:
                replacement = copy.copy(module)
                replacement.inplace = False
                _install(gm, node, replacement)
                changed = True
        if changed and mutated is not None:
            _forward_uses_after(node, mutated)


class _FusedLinear(nn.Linear):
    """A Linear with a BatchNorm1d folded in, valid only on inputs of the rank checked at fusion.

    BatchNorm1d normalises axis 1; the fold is the same map only when that axis is the
    Linear's output features, i.e. on 2-D inputs. The forward refuses any other rank rather
    than compute something the model does not.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise InputError(
                f"this Linear has a BatchNorm1d folded in, which is exact on 2-D inputs only, "
                f"got an input of shape {tuple(x.shape)}; create a new analyzer for inputs of "
                "this rank"
            )
        return super().forward(x)


def _only_reader(producer: object, reader: fx.Node) -> bool:
    """Whether ``reader`` is the only node reading ``producer``'s values: other users may
    read its metadata (timm's ``BatchNormAct2d`` checks ``x.ndim``), whose value a fold
    keeps, but not the un-normalised values themselves."""
    if not isinstance(producer, fx.Node):
        return False
    return all(user is reader or is_shape_query(user) for user in producer.users)


def _module_batchnorm(gm: fx.GraphModule, bn_node: fx.Node) -> nn.Module | None:
    """The eval-mode batch norm module a call_module node calls, if one can be folded."""
    if bn_node.op != "call_module":
        return None
    bn = gm.get_submodule(bn_node.target)
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
        return None
    if bn._forward_hooks or bn._forward_pre_hooks:
        return None  # a folded copy would not run the user's (observing) hooks
    return bn


def _fusable(
    gm: fx.GraphModule, bn_node: fx.Node, linear_ranks: dict[fx.Node, int]
) -> fx.Node | None:
    """The linear module node (convolution, or Linear on a 2-D input) a BatchNorm module
    can fold into."""
    bn = _module_batchnorm(gm, bn_node)
    if bn is None:
        return None
    producer = bn_node.args[0] if bn_node.args else None
    if not isinstance(producer, fx.Node) or producer.op != "call_module":
        return None
    if not _only_reader(producer, bn_node):
        return None  # the un-normalised output is used elsewhere too
    layer = gm.get_submodule(producer.target)
    if layer._forward_hooks or layer._forward_pre_hooks:
        return None  # a folded copy would not run the user's (observing) hooks
    if isinstance(layer, nn.Linear):
        # Only provably right when the output is (N, features): see _linear_output_ranks.
        if linear_ranks.get(producer) != 2 or not isinstance(bn, nn.BatchNorm1d):
            return None
        return producer if layer.out_features == bn.num_features else None
    if not isinstance(layer, nn.modules.conv._ConvNd):
        return None
    if layer.transposed and layer.groups != 1:
        return None
    if layer.out_channels != bn.num_features:
        return None
    return producer


def _linear_before_batchnorm(gm: fx.GraphModule) -> list[fx.Node]:
    """Linear nodes, module or functional (``F.linear``), whose only reader is a
    BatchNorm1d module or an ``F.batch_norm`` (fusion candidates)."""
    found = []
    for node in gm.graph.nodes:
        readers = [u for u in node.users if not is_shape_query(u)]
        if len(readers) != 1:
            continue
        (user,) = readers
        if node.op == "call_module":
            linear = isinstance(gm.get_submodule(node.target), nn.Linear)
        else:
            linear = _functional_name(node) == "linear"
        reader_is_batchnorm = (user.op == "call_function" and user.target is F.batch_norm) or (
            user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.BatchNorm1d)
        )
        if linear and reader_is_batchnorm:
            found.append(node)
    return found


def _functional_name(node: fx.Node) -> str:
    """'conv2d', 'linear'...: the function a call_function node calls (ATen or torch)."""
    if node.op != "call_function":
        return ""
    return aten_name(node.target) or getattr(node.target, "__name__", "")


@has_side_effect
def _require_2d(rank: int) -> None:
    """The guard of an ``F.linear`` with a batch norm folded in (kept by dead-code removal)."""
    if rank != 2:
        raise InputError(
            "this F.linear has a BatchNorm folded in, which is exact on 2-D inputs only, got "
            f"an input of rank {rank}; create a new analyzer for inputs of this rank"
        )


def _linear_output_ranks(
    gm: fx.GraphModule,
    candidates: list[fx.Node],
    example_input: torch.Tensor | tuple[Any, ...] | None,
) -> dict[fx.Node, int]:
    """The rank of each candidate Linear's output, from one forward on ``example_input``
    (a tensor, or one value per placeholder of a model with several inputs).

    A Linear acts on the last axis whatever the rank, while BatchNorm1d acts on axis 1: the
    graph alone cannot tell (N, F) from (N, C, F). Without an example input the ranks stay
    unknown and those BatchNorms are left unfused.
    """
    if not candidates or example_input is None:
        return {}
    wanted = set(candidates)
    ranks: dict[fx.Node, int] = {}
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))

    class RankRecorder(fx.Interpreter):
        def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
            # Plain lists, as the model's code passes them (capture.call_arguments).
            return call_arguments(n, self.env.__getitem__)

        def run_node(self, node: fx.Node):
            try:
                result = super().run_node(node)
            except Exception as error:  # noqa: BLE001 - re-raised with the node's name
                # Raising (rather than leaving the BatchNorm unfused) keeps a graph built on
                # a bad input from being kept and used with a different fusion later.
                raise InputError(
                    f"the model failed at node '{node.name}' on an input of shape {shapes}: {error}"
                ) from error
            if node in wanted and isinstance(result, torch.Tensor):
                ranks[node] = result.dim()
            return result

    with torch.no_grad():
        RankRecorder(gm).run(*args)
    return ranks


def _folded(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    transposed: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(layer(x))`` with ``bn(z) = z * scale + shift`` per channel."""
    axis = 1 if transposed else 0  # the output-channel axis of the weight
    shape = [1] * weight.dim()
    shape[axis] = -1
    with torch.no_grad():
        new_weight = weight.detach() * scale.reshape(shape)
        new_bias = bias.detach() if bias is not None else torch.zeros_like(shift)
        return new_weight, new_bias * scale + shift


def stamp(values: Any) -> tuple:
    """What identifies the state of the tensors in ``values`` (nested tuples, lists, dicts):
    each tensor's object, storage and version (bumped by every in-place write but those
    through ``.data``); other values as they are. Equal stamps: nothing changed."""
    if isinstance(values, torch.Tensor):
        return (id(values), values.data_ptr(), values._version)
    if isinstance(values, tuple | list):
        return tuple(stamp(v) for v in values)
    if isinstance(values, dict):
        return tuple((k, stamp(v)) for k, v in sorted(values.items(), key=lambda kv: str(kv[0])))
    return values


def structure_stamp(model: nn.Module) -> tuple:
    """What a captured graph assumed of the module tree beyond its tensors: each submodule
    (path, object, class) and its public plain-valued attributes (``bn.eps``, a ``scale`` or
    flag that ``forward`` reads). Equal stamps: the graph still computes the model.
    Tensors are ``stamp``'s and ``Fold``'s job; ``training`` is left out (the graph runs
    the eval view whatever the flag), and so are private attributes (torch's own state)."""
    return tuple(
        (path, id(module), type(module), _plain_attributes(module))
        for path, module in model.named_modules(remove_duplicate=False)
    )


def _plain_attributes(module: nn.Module) -> tuple:
    return tuple(
        (key, repr(value))  # repr: a NaN attribute still equals itself
        for key, value in sorted(vars(module).items())
        if not key.startswith("_") and key != "training" and _is_plain(value)
    )


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, tuple) and all(_is_plain(v) for v in value)


@dataclass
class Fold:
    """A folded weight and bias, and how to remake them when the model's tensors change.

    ``read`` gives the current ``(weight, bias, batchnorm_args, batchnorm_kwargs, watched)``
    of the layer and batch norm folded, read afresh from the graph's modules and attributes
    (the arguments as values, in ``F.batch_norm``'s order; ``watched``: more tensors whose
    change means the others changed). ``weight`` and ``bias`` are the folded tensors the
    graph computes with; ``refresh`` rewrites them in place when any tensor read is another
    object, has other storage or was written in place since (its version), so an analyzer
    follows an optimizer step or ``load_state_dict`` instead of explaining the model as it
    was at capture. A training-mode forward updates the running statistics without a
    version change, but counts the batch in ``num_batches_tracked``, which is watched.
    Writes through ``.data`` bypass versions and are not seen.
    """

    read: Callable[[], tuple[torch.Tensor, torch.Tensor | None, tuple, dict, tuple]]
    transposed: bool
    weight: torch.Tensor
    bias: torch.Tensor
    source_stamp: tuple = ()  # stamp() of what read gave when the values were made

    def stale(self) -> bool:
        """Whether a tensor the folded values come from changed since they were made."""
        return stamp(self.read()) != self.source_stamp

    def refresh(self) -> None:
        """Remake the folded weight and bias from the model's current tensors, in place."""
        values = self.read()
        # Stamped before the values are used: a change meanwhile (an optimizer step in
        # another thread) shows as stale at the next check instead of as up to date.
        source_stamp = stamp(values)
        weight, bias, args, kwargs, _ = values
        changed = (
            "a layer with a batch norm folded in changed shape since the graph was captured "
            "({}); create a new analyzer for the changed model"
        )
        try:
            scale, shift = functional_batchnorm_scale_shift(args, kwargs)
            new_weight, new_bias = _folded(weight, bias, scale, shift, self.transposed)
        except RuntimeError as error:  # the statistics no longer match each other
            raise InputError(changed.format(error)) from error
        if new_weight.shape != self.weight.shape or new_bias.shape != self.bias.shape:
            shapes = f"weight {tuple(self.weight.shape)} -> {tuple(new_weight.shape)}"
            raise InputError(changed.format(shapes))
        with torch.no_grad():
            self.weight.copy_(new_weight)
            self.bias.copy_(new_bias)
        self.source_stamp = source_stamp

    @classmethod
    def made(
        cls,
        read: Callable[[], tuple[torch.Tensor, torch.Tensor | None, tuple, dict, tuple]],
        transposed: bool,
    ) -> Fold:
        """A fold made now from what ``read`` gives."""
        values = read()
        source_stamp = stamp(values)  # before the values are used (see refresh)
        weight, bias, args, kwargs, _ = values
        folded = _folded(weight, bias, *functional_batchnorm_scale_shift(args, kwargs), transposed)
        return cls(read, transposed, *folded, source_stamp=source_stamp)


def _batches_tracked(module: object) -> tuple:
    """``(num_batches_tracked,)`` of a batch norm module that counts, else ``()``."""
    counter = getattr(module, "num_batches_tracked", None)
    return (counter,) if isinstance(counter, torch.Tensor) else ()


def _fused_layer(layer: nn.Module, fold: Fold) -> nn.Module:
    """A copy of a convolution or Linear computing with ``fold``'s weight and bias."""
    fused = copy.copy(layer)
    if isinstance(layer, _ComputedWeights):
        fused.__class__ = layer._innspect_plain  # the folded values are stored, not computed
    if isinstance(layer, nn.Linear):
        fused.__class__ = _FusedLinear
    # New containers on the copy, so nothing the copy holds is shared with the user's layer.
    fused._parameters = OrderedDict(
        weight=nn.Parameter(fold.weight, requires_grad=False),
        bias=nn.Parameter(fold.bias, requires_grad=False),
    )
    fused._forward_hooks = OrderedDict()
    fused._forward_pre_hooks = OrderedDict()
    fused._backward_hooks = OrderedDict()
    return fused


def fuse_batchnorm(
    gm: fx.GraphModule, example_input: torch.Tensor | tuple[Any, ...] | None = None
) -> tuple[dict[str, list[str]], list[Fold]]:
    """Fold every BatchNorm that directly follows a linear layer into a copy of that layer.

    Convolutions (and groups=1 transposed convolutions) always fold, module or functional
    (``F.conv3d`` on buffers or parameters), into a module or functional batch norm
    (timm's ``BatchNormAct2d``). The layer's output may have other users that read only
    its metadata (``x.ndim``, ``x.shape``: ``ops.is_shape_query``), never other readers
    of its values. A Linear folds with a BatchNorm1d only when one forward on
    ``example_input`` shows its output is 2-D; the folded copy refuses inputs of another
    rank. (A functional ``F.linear`` is not folded: it has no such guard.)

    Returns, per new layer target, the original names of the layers folded into it, and
    the folds (``Fold.refresh`` remakes their values after the model's tensors change).
    The fusion is the exact eval-mode algebra: ``W' = W * s``, ``b' = (b - mean) * s + beta``
    with ``s = gamma / sqrt(var + eps)`` (iNNvestigate squares the variance and drops gamma
    from the bias; innspect does not).
    """
    functional_batchnorm(gm)
    linear_ranks = _linear_output_ranks(gm, _linear_before_batchnorm(gm), example_input)
    fused: dict[str, list[str]] = {}
    folds: list[Fold] = []
    for bn_node in list(gm.graph.nodes):
        if bn_node.op == "call_function" and bn_node.target is F.batch_norm:
            _fold_functional(gm, bn_node, fused, folds, linear_ranks)
            continue
        if _fold_module_into_functional(gm, bn_node, folds, linear_ranks):
            continue
        producer = _fusable(gm, bn_node, linear_ranks)
        if producer is None:
            continue
        layer = gm.get_submodule(producer.target)
        bn = gm.get_submodule(bn_node.target)
        names = [original_target(gm, producer.target), original_target(gm, bn_node.target)]
        fold = Fold.made(
            lambda layer=layer, bn=bn: (
                layer.weight,
                layer.bias,
                (None, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps),
                {},
                _batches_tracked(bn),
            ),
            transposed=getattr(layer, "transposed", False),
        )
        folds.append(fold)
        _install(gm, producer, _fused_layer(layer, fold))
        fused[str(producer.target)] = names[1:]
        bn_node.replace_all_uses_with(producer)
        gm.graph.erase_node(bn_node)
    return fused, folds


def _fold_module_into_functional(
    gm: fx.GraphModule, bn_node: fx.Node, folds: list[Fold], linear_ranks: dict[fx.Node, int]
) -> bool:
    """Fold a BatchNorm module into the functional convolution before it (torchvision's
    ``Conv3DSimple``, an ``nn.Conv3d`` subclass traced through to ``F.conv3d``); whether
    it was folded."""
    bn = _module_batchnorm(gm, bn_node)
    producer = bn_node.args[0] if bn_node.args else None
    if bn is None or not isinstance(producer, fx.Node) or producer.op != "call_function":
        return False
    if not _only_reader(producer, bn_node):
        return False
    fold = _fold_into_functional_conv(
        gm,
        producer,
        bn.num_features,
        lambda: (
            (None, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps),
            {},
            _batches_tracked(bn),
        ),
        linear_ranks,
    )
    if fold is None:
        return False
    folds.append(fold)
    bn_node.replace_all_uses_with(producer)
    gm.graph.erase_node(bn_node)
    return True


def functional_batchnorm(gm: fx.GraphModule) -> None:
    """Rewrite torch.export's eval-mode batch norm ATen ops as ``F.batch_norm`` calls.

    ``_native_batch_norm_legit_no_training`` returns (output, mean, invstd) read through
    ``getitem``; as one ``F.batch_norm`` node it is foldable and mappable like the
    functional batch norm of an fx-traced model (timm's ``BatchNormAct2d``).
    """
    for node in list(gm.graph.nodes):
        name = aten_name(node.target) if node.op == "call_function" else None
        if name == "_native_batch_norm_legit_no_training":
            x, weight, bias, mean, var, momentum, eps = node.args[:7]
            getters = list(node.users)
            if not all(u.op == "call_function" and u.target is operator.getitem for u in getters):
                continue
            if any(u.users for u in getters if u.args[1] != 0):
                continue  # the statistics are read: leave the node as it is
            replaced = [u for u in getters if u.args[1] == 0]
        elif name == "batch_norm":
            x, weight, bias, mean, var, training, momentum, eps = node.args[:8]
            if training:
                continue
            replaced = [node]
        else:
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(
                F.batch_norm, (x, mean, var, weight, bias, False, momentum, eps)
            )
        for old in replaced:
            old.replace_all_uses_with(new)
        # The getitem readers (now unused) go first, then the batch norm node itself.
        dead = [node] if node in replaced else [*list(node.users), node]
        for old in dead:
            gm.graph.erase_node(old)


def _attribute(gm: fx.GraphModule, arg: object) -> object:
    """The tensor a get_attr node reads (plain values as they are); None if computed."""
    if not isinstance(arg, fx.Node):
        return arg
    if arg.op != "get_attr":
        raise LookupError(arg.name)
    value: object = gm
    for part in str(arg.target).split("."):
        value = getattr(value, part)
    return value


def _fold_functional(
    gm: fx.GraphModule,
    bn_node: fx.Node,
    fused: dict[str, list[str]],
    folds: list[Fold],
    linear_ranks: dict[fx.Node, int],
) -> None:
    """Fold an ``F.batch_norm`` whose statistics are buffers into the convolution before it."""
    producer = bn_node.args[0] if bn_node.args else None
    if not isinstance(producer, fx.Node) or not _only_reader(producer, bn_node):
        return
    bn_args, bn_kwargs = bn_node.args, dict(bn_node.kwargs)
    # The module holding the statistics (timm's BatchNormAct2d), for its batch counter.
    statistics = bn_args[1] if len(bn_args) > 1 else bn_kwargs.get("running_mean")
    owner = None
    if isinstance(statistics, fx.Node) and statistics.op == "get_attr":
        path = str(statistics.target).rpartition(".")[0]
        owner = gm.get_submodule(path) if path else gm

    def batchnorm_values() -> tuple[tuple, dict, tuple]:
        values = (None, *(_attribute(gm, a) for a in bn_args[1:]))
        kwargs = {k: _attribute(gm, v) for k, v in bn_kwargs.items()}
        return values, kwargs, _batches_tracked(owner)

    try:
        scale, _ = functional_batchnorm_scale_shift(*batchnorm_values()[:2])
    except (LookupError, ValueError):
        return  # statistics computed in forward, or batch statistics: not a fixed map
    if producer.op == "call_module":
        layer = gm.get_submodule(producer.target)
        if not isinstance(layer, nn.modules.conv._ConvNd) or layer.out_channels != scale.numel():
            return
        if layer.transposed and layer.groups != 1:
            return
        fold = Fold.made(
            lambda: (layer.weight, layer.bias, *batchnorm_values()), transposed=layer.transposed
        )
        _install(gm, producer, _fused_layer(layer, fold))
        fused[str(producer.target)] = [bn_node.name]
    else:
        fold = _fold_into_functional_conv(
            gm, producer, scale.numel(), batchnorm_values, linear_ranks
        )
        if fold is None:
            return
    folds.append(fold)
    bn_node.replace_all_uses_with(producer)
    gm.graph.erase_node(bn_node)


def _fold_into_functional_conv(
    gm: fx.GraphModule,
    conv: fx.Node,
    channels: int,
    batchnorm_values: Callable[[], tuple[tuple, dict, tuple]],
    linear_ranks: dict[fx.Node, int],
) -> Fold | None:
    """Give a functional convolution or ``F.linear`` with buffer weights folded copies of
    them (None where it is not one).

    An ``F.linear`` acts on the last axis and a batch norm on axis 1: the fold is the same
    map only on 2-D data, which one forward showed (``linear_ranks``); a guard node
    (``_require_2d``) refuses inputs of another rank, as ``_FusedLinear`` does."""
    name = _functional_name(conv)
    if name not in ("conv1d", "conv2d", "conv3d", "linear"):
        return None
    if name == "linear" and linear_ranks.get(conv) != 2:
        return None
    args = list(conv.args)
    kwargs = dict(conv.kwargs)
    if len(args) < 2:
        return None
    weight_arg, bias_arg = args[1], args[2] if len(args) > 2 else kwargs.get("bias")
    try:
        weight = _attribute(gm, weight_arg)
        _attribute(gm, bias_arg)
    except LookupError:
        return None
    if not isinstance(weight, torch.Tensor) or weight.shape[0] != channels:
        return None
    fold = Fold.made(
        lambda: (_attribute(gm, weight_arg), _attribute(gm, bias_arg), *batchnorm_values()),
        transposed=False,
    )
    nodes = []
    for part, tensor in (("weight", fold.weight), ("bias", fold.bias)):
        target = f"_innspect_folded_{conv.name}_{part}"
        gm.register_buffer(target, tensor)
        with gm.graph.inserting_before(conv):
            nodes.append(gm.graph.get_attr(target))
    args[1] = nodes[0]
    if len(args) > 2:
        args[2] = nodes[1]
    else:
        kwargs["bias"] = nodes[1]
    conv.args, conv.kwargs = tuple(args), kwargs
    if name == "linear":
        with gm.graph.inserting_before(conv):
            rank = gm.graph.call_method("dim", (args[0],))
            gm.graph.call_function(_require_2d, (rank,))
    return fold


_CONV_MODULES = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
_LAYER_MODULES = {**_CONV_MODULES, F.linear: nn.Linear}


def conv_subclasses_as_layers(gm: fx.GraphModule) -> None:
    """Turn functional convolutions (and ``F.linear`` calls) that are the forward of an
    ``nn.ConvNd`` (``nn.Linear``) subclass back into calls of a convolution (Linear) module.

    fx traces through layer classes defined outside torch.nn (torchvision's
    ``Conv3DSimple``, a ``Linear`` subclass whose forward calls ``F.linear``), leaving
    ``F.conv3d`` / ``F.linear`` on the layer's own weight. Zennit hooks such a layer as the
    ``nn.Conv3d`` / ``nn.Linear`` it is, so the Zennit-style composites must see a module,
    and a batch norm after it folds as after the module (with its rank check).
    The module is built from the call's own arguments (what the graph computes; a
    ``padding_mode`` pad is a node of its own) and shares the layer's parameter objects,
    so the graph follows the model's changes. A call on other tensors stays a function.
    """
    built: dict[str, tuple[tuple, nn.Module]] = {}
    for node in list(gm.graph.nodes):
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or node.target not in _LAYER_MODULES or not stack:
            continue
        path, owner = list(stack.values())[-1]
        if not (
            isinstance(owner, type)
            and issubclass(owner, _LAYER_MODULES[node.target])
            and not owner.__module__.startswith("torch.nn.")
        ):
            continue
        layer = built[path][1] if path in built else _conv_layer(gm, node, path)
        call = (node.args[1:], tuple(sorted(node.kwargs.items())))
        if layer is None or built.setdefault(path, (call, layer))[0] != call:
            continue  # not the layer's own tensors, or the same layer called otherwise
        parent, _, child = path.rpartition(".")
        gm.get_submodule(parent)._modules[child] = layer
        tensors = node.all_input_nodes[1:]
        node.op, node.target, node.args, node.kwargs = "call_module", path, (node.args[0],), {}
        for tensor in tensors:
            if not tensor.users:
                gm.graph.erase_node(tensor)


def _conv_layer(gm: fx.GraphModule, node: fx.Node, path: str) -> nn.Module | None:
    """A convolution or Linear module computing ``node`` (a functional convolution or
    ``F.linear`` reading exactly the weight and bias of the module at ``path``) with those
    parameters; None otherwise."""
    names = ("weight", "bias", "stride", "padding", "dilation", "groups")
    values = dict(zip(names, node.args[1:], strict=False)) | dict(node.kwargs)
    weight_arg, bias_arg = values.get("weight"), values.get("bias")
    parent_path = path.rpartition(".")[0]
    parent = gm.get_submodule(parent_path) if parent_path else gm
    if not path or (parent is not gm and type(parent) is not nn.Module):
        return None  # only fx's own containers are rewired, never a (view of a) user module
    holder = gm.get_submodule(path)
    held = {*holder._parameters, *holder._buffers, *holder._modules}
    if held - {"weight", "bias"}:
        return None  # the traced layer reads more of itself than a convolution does

    def own(arg: object, name: str) -> bool:
        return isinstance(arg, fx.Node) and arg.op == "get_attr" and arg.target == f"{path}.{name}"

    if not own(weight_arg, "weight") or not (bias_arg is None or own(bias_arg, "bias")):
        return None
    weight, bias = _attribute(gm, weight_arg), _attribute(gm, bias_arg)
    options = [values.get(n) for n in names[2:]]
    if not isinstance(weight, nn.Parameter) or not isinstance(bias, nn.Parameter | None):
        return None
    if any(isinstance(v, fx.Node) for v in options):
        return None
    if node.target is F.linear and (len(node.args) > 3 or set(node.kwargs) - {"weight", "bias"}):
        return None
    base = nn.Linear if node.target is F.linear else _CONV_MODULES[node.target]
    layer = _plain_layer(base, weight, bias is not None, options)  # meta: set below
    layer.weight = weight
    layer.bias = bias
    return layer.train(False)


class _ComputedWeights:
    """A Linear or convolution whose weight and bias are computed from the model's tensors
    (``weight_norm`` / ``parametrize``, timm's weight-standardised ``StdConv2d``, BEiT's
    ``torch.cat`` qkv bias).

    Such a layer is linear in its input, with a weight that depends on parameters only: the
    linear rules apply with the computed weight. ``weight`` and ``bias`` are computed by
    ``_innspect_compute`` (without autograd: innspect differentiates with respect to the
    input, never the parameters) and kept until a tensor they come from changes (object,
    storage or version: ``stamp``), so the layer follows an optimizer step like a plain one.
    The source tensors are the module's own parameters and buffers, which is what
    ``ModelGraph`` stamps to know when to rebuild the layer's LinearOp. They are the
    objects read at capture: a parameter replaced by another object (rather than written
    in place, as optimizers and ``load_state_dict`` do) is not followed.
    """

    _innspect_compute: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    _innspect_plain: type  # the torch.nn class with stored weights (for a fold's copy)

    def _innspect_values(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        sources = (*self._parameters.values(), *self._buffers.values())  # type: ignore[attr-defined]
        key = stamp(sources)  # before computing: a change meanwhile shows next time
        cached = self.__dict__.get("_innspect_cache")
        if cached is None or cached[0] != key:
            # Plain tensors even when first made under torch.inference_mode(): an analysis
            # outside it must be able to use them.
            with torch.inference_mode(False), torch.no_grad():
                weight, bias = self._innspect_compute()
            cached = (key, weight, bias)
            self.__dict__["_innspect_cache"] = cached
        return cached[1], cached[2]

    @property
    def weight(self) -> torch.Tensor:
        return self._innspect_values()[0]

    @property
    def bias(self) -> torch.Tensor | None:
        return self._innspect_values()[1]


class ComputedLinear(_ComputedWeights, nn.Linear):
    """An ``nn.Linear`` whose weight and bias are computed (``_ComputedWeights``)."""

    _innspect_plain = nn.Linear


class ComputedConv1d(_ComputedWeights, nn.Conv1d):
    """An ``nn.Conv1d`` whose weight and bias are computed (``_ComputedWeights``)."""

    _innspect_plain = nn.Conv1d


class ComputedConv2d(_ComputedWeights, nn.Conv2d):
    """An ``nn.Conv2d`` whose weight and bias are computed (``_ComputedWeights``)."""

    _innspect_plain = nn.Conv2d


class ComputedConv3d(_ComputedWeights, nn.Conv3d):
    """An ``nn.Conv3d`` whose weight and bias are computed (``_ComputedWeights``)."""

    _innspect_plain = nn.Conv3d


class ComputedConvTranspose1d(_ComputedWeights, nn.ConvTranspose1d):
    """An ``nn.ConvTranspose1d`` whose weight and bias are computed (``_ComputedWeights``)."""

    _innspect_plain = nn.ConvTranspose1d


class ComputedConvTranspose2d(_ComputedWeights, nn.ConvTranspose2d):
    """An ``nn.ConvTranspose2d`` whose weight and bias are computed (``_ComputedWeights``)."""

    _innspect_plain = nn.ConvTranspose2d


class ComputedConvTranspose3d(_ComputedWeights, nn.ConvTranspose3d):
    """An ``nn.ConvTranspose3d`` whose weight and bias are computed (``_ComputedWeights``)."""

    _innspect_plain = nn.ConvTranspose3d


# Transposed convolutions only as parametrized modules: their functional form
# (F.conv_transposeNd) takes other arguments than F.convNd's and stays a function.
_COMPUTED = {
    nn.Linear: ComputedLinear,
    nn.Conv1d: ComputedConv1d,
    nn.Conv2d: ComputedConv2d,
    nn.Conv3d: ComputedConv3d,
    nn.ConvTranspose1d: ComputedConvTranspose1d,
    nn.ConvTranspose2d: ComputedConvTranspose2d,
    nn.ConvTranspose3d: ComputedConvTranspose3d,
}
_FUNCTIONAL_LAYERS = {
    "linear": nn.Linear,
    "conv1d": nn.Conv1d,
    "conv2d": nn.Conv2d,
    "conv3d": nn.Conv3d,
}
_WEIGHT_RANKS = {"linear": 2, "conv1d": 3, "conv2d": 4, "conv3d": 5}


def _computed_layer(
    plain: nn.Module,
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
    sources: list[torch.Tensor],
) -> nn.Module:
    """``plain`` (a Linear or ConvNd of the right configuration, its own tensors unused) as
    a layer computing its weight and bias with ``compute`` from ``sources``."""
    base = next(b for b in _COMPUTED if type(plain) is b)
    layer = plain
    layer.__class__ = _COMPUTED[base]
    unique = list({id(t): t for t in sources}.values())
    layer._parameters = OrderedDict(
        (f"source{i}", t) for i, t in enumerate(unique) if isinstance(t, nn.Parameter)
    )
    layer._buffers = OrderedDict(
        (f"source{i}", t) for i, t in enumerate(unique) if not isinstance(t, nn.Parameter)
    )
    layer.__dict__["_innspect_compute"] = compute
    return layer.train(False)


def computed_weights_as_layers(gm: fx.GraphModule) -> None:
    """Turn linear layers whose weight or bias is computed in forward from the model's
    tensors alone into Linear / convolution modules computing it (``_ComputedWeights``).

    Two spellings: a functional ``F.linear`` / ``F.convNd`` whose weight or bias is a node
    computed from ``get_attr`` tensors only (timm's ``StdConv2d`` standardises its weight,
    BEiT's attention concatenates its qkv bias); and a Linear / ConvNd module with
    ``torch.nn.utils.parametrize`` parametrizations (``weight_norm``), whose LinearOp must
    follow its parametrizations' tensors, not its own (it holds none). The layer is linear
    in its input with a weight computed once per forward, so every linear rule applies with
    the computed weight, and the Zennit-style composites see the module Zennit hooks.
    """
    unused: list[fx.Node] = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if type(module).__module__ == "torch.nn.utils.parametrize":
                _parametrized_as_layer(gm, node, module)
        elif node.op == "call_function":
            unused.extend(_functional_as_layer(gm, node))
    # The weight's computation, now the layer's, where nothing else reads it.
    for node in reversed(list(gm.graph.nodes)):
        if node in unused and not node.users:
            gm.graph.erase_node(node)


def _parametrized_as_layer(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
    base = next((b for b in _COMPUTED if isinstance(module, b)), None)
    if base is None or module._forward_hooks or module._forward_pre_hooks:
        return
    if base is nn.Linear:
        with torch.device("meta"):
            plain = nn.Linear(module.in_features, module.out_features)
    else:
        # The configuration (stride, padding_mode...); not copy.copy, which a parametrized
        # module refuses.
        plain = object.__new__(base)
        plain.__dict__.update(module.__dict__)
        plain.__dict__["_parameters"] = OrderedDict()
        for container in ("_modules", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            setattr(plain, container, OrderedDict())  # nothing shared with the user's layer
    sources = [*module.parameters(), *module.buffers()]
    layer = _computed_layer(plain, lambda: (module.weight, module.bias), sources)
    _install(gm, node, layer)


def _functional_as_layer(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """Make ``node`` a computed-weight layer if it is one; the nodes computing its weight."""
    name = aten_name(node.target) or getattr(node.target, "__name__", "")
    base = _FUNCTIONAL_LAYERS.get(name)
    if base is None:
        return []
    # By position or keyword (BEiT: F.linear(input=x, weight=..., bias=qkv_bias)).
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    values = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    if set(values) - set(names) or not isinstance(values.get("input"), fx.Node):
        return []
    weight_arg, bias_arg = values.get("weight"), values.get("bias")
    computed = [a for a in (weight_arg, bias_arg) if isinstance(a, fx.Node) and not _stored(a)]
    if not computed or not isinstance(weight_arg, fx.Node):
        return []  # the weights are the model's own tensors (or not tensors): nothing to do
    options = [values.get(n) for n in names[3:]]
    if any(isinstance(v, fx.Node) for v in options):
        return []
    subgraph = _constant_subgraph(gm, [weight_arg, bias_arg])
    if subgraph is None:
        return []  # computed from the input (or by a module call): not a fixed weight
    compute, sources, needed = subgraph
    try:
        with torch.no_grad():
            weight, _ = compute()
        if not isinstance(weight, torch.Tensor) or weight.dim() != _WEIGHT_RANKS[name]:
            return []
        plain = _plain_layer(base, weight, bias_arg is not None, options)
    except Exception:  # noqa: BLE001 - not a layer we can build: the call stays as it is
        return []
    layer = _computed_layer(plain, compute, sources)
    # Named after the module whose weight it computes (timm's 'stem.conv', BEiT's
    # 'blocks.0.attn.qkv'): what per-layer rules and Zennit's first layer refer to.
    owner = _owner_path(weight_arg, bias_arg) or _module_path(node) or node.name
    node.op, node.target, node.args, node.kwargs = "call_module", owner, (values["input"],), {}
    _install(gm, node, layer)
    return needed


def _plain_layer(base: type, weight: torch.Tensor, bias: bool, options: list[Any]) -> nn.Module:
    """A Linear or ConvNd (on the meta device: nothing allocated) configured as a call of
    ``F.linear`` / ``F.convNd`` with ``weight`` and ``options`` (stride, padding, dilation,
    groups)."""
    with torch.device("meta"):
        if base is nn.Linear:
            return nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
        stride, padding, dilation, groups = options
        groups = groups or 1
        return base(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=1 if stride is None else stride,
            padding=0 if padding is None else padding,
            dilation=1 if dilation is None else dilation,
            groups=groups,
            bias=bias,
        )


def _stored(arg: fx.Node) -> bool:
    """A tensor of the model (``get_attr``), or its transpose as ``addmm_as_linear`` writes
    GPT-2's ``Conv1D`` (a view of the parameter, which ``ModelGraph.linear_op`` reads)."""
    if arg.op == "call_function" and arg.target is torch.t and len(arg.args) == 1:
        arg = arg.args[0] if isinstance(arg.args[0], fx.Node) else arg
    return arg.op == "get_attr"


def _constant_subgraph(
    gm: fx.GraphModule, outputs: list[Any]
) -> tuple[Callable[[], tuple[Any, Any]], list[torch.Tensor], list[fx.Node]] | None:
    """A function computing ``outputs`` (nodes, or plain values) from the model's tensors
    alone, those tensors and the nodes it copies; None where a node reads an input or
    calls a module."""
    needed: set[fx.Node] = set()
    pending = [o for o in outputs if isinstance(o, fx.Node)]
    while pending:
        current = pending.pop()
        if current in needed:
            continue
        if current.op not in ("get_attr", "call_function", "call_method"):
            return None
        needed.add(current)
        pending.extend(current.all_input_nodes)
    # A copy of the nodes in a graph of their own: the originals may be erased once unused.
    copied = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for original in gm.graph.nodes:
        if original in needed:
            env[original] = copied.node_copy(original, env.__getitem__)
    attributes = {n: _attribute(gm, n) for n in copied.nodes if n.op == "get_attr"}
    results = [env[o] if isinstance(o, fx.Node) else o for o in outputs]
    order = list(copied.nodes)

    def compute() -> tuple[Any, Any]:
        values: dict[fx.Node, Any] = dict(attributes)
        for current in order:
            if current in values:
                continue
            args, kwargs = call_arguments(current, values.__getitem__)
            if current.op == "call_method":
                values[current] = getattr(args[0], str(current.target))(*args[1:], **kwargs)
            else:
                values[current] = current.target(*args, **kwargs)
        weight, bias = (values[r] if isinstance(r, fx.Node) else r for r in results)
        return weight, bias

    sources = [v for v in attributes.values() if isinstance(v, torch.Tensor)]
    return compute, sources, list(needed)


def _owner_path(*args: Any) -> str | None:
    """The module path of the first ``<path>.weight`` / ``<path>.bias`` tensor read."""
    pending = [a for a in args if isinstance(a, fx.Node)]
    seen: set[fx.Node] = set()
    while pending:
        current = pending.pop(0)
        if current in seen:
            continue
        seen.add(current)
        if current.op == "get_attr":
            path, _, leaf = str(current.target).rpartition(".")
            if leaf in ("weight", "bias") and path:
                return path
        pending.extend(current.all_input_nodes)
    return None


def _module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None


def strip_output_activation(gm: fx.GraphModule, output_node: fx.Node) -> fx.GraphModule:
    """Make the graph return the input of its final activation instead of its output."""
    activation_input = output_node.args[0]
    output_node.replace_all_uses_with(activation_input)
    gm.graph.erase_node(output_node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def addmm_as_linear(gm: fx.GraphModule) -> None:
    """Rewrite ``addmm(bias, x, weight)`` on parameters as ``F.linear(x, weight.t(), bias)``.

    Hugging Face's ``Conv1D`` (GPT-2's projections) is ``torch.addmm`` with its weight stored
    (in, out); as a dense layer it is mapped by every rule a ``Linear`` is. Only calls whose
    bias and weight are the model's own tensors (``get_attr``) and whose ``beta`` and
    ``alpha`` are 1 are rewritten; a product of two signals stays a matmul.
    """
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not (
            node.target is torch.addmm or aten_name(node.target) == "addmm"
        ):
            continue
        if len(node.args) != 3 or any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
            continue
        bias, x, weight = node.args
        if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in (bias, weight)):
            continue
        with gm.graph.inserting_before(node):
            transposed = gm.graph.call_function(torch.t, (weight,))
            linear = gm.graph.call_function(F.linear, (x, transposed, bias))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
