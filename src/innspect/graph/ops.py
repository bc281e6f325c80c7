"""The operations table: every fact about an operation, one row.

Each row (``Op``) of ``OPERATIONS`` holds, for one operation or a group innspect treats
alike:

- how graphs spell it: module types (matched with ``isinstance``), functions (fx
  ``call_function`` targets), method and ATen names (torch.export and TorchScript graphs
  hold ATen operators, classified by their overload packet's name), and qualified names of
  optional packages' functions;
- what it is: its ``Kind`` (what the reverse mappings dispatch on), a finer ``family`` that
  rules and composites select on, which arguments carry the signal, which enter with a
  minus sign, whether its output is non-negative by construction, and whether a product of
  two signals holds it constant (a gate);
- how an ATen call of it reads back (``Aten``): the torch function computing the overload
  from the same positional arguments, and, for a layer's forward, the ``Layer`` it is (its
  nn class, the stored tensors it reads, how to build it from the call).

The maps capture, canonicalisation and TorchScript conversion use (``ATEN_TO_TORCH``,
``LAYER_CALLS``, the in-place twins of ``out_of_place``) are derived from the rows at
import. Adding an operation is one row; its default relevance rule follows from its kind
(``rules/lrp_nodes.py`` maps by kind), and so do the other methods' mappings.

The module is longer than most: it is one table and the lookups over it, read together.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn


class Kind(str, Enum):
    """Category of a graph node, as far as the reverse mappings care."""

    INPUT = "input"  # a placeholder
    CONSTANT = "constant"  # get_attr, or a computation that does not depend on the input
    LINEAR = "linear"  # weights and bias: Linear, ConvNd, ConvTransposeNd (module or functional)
    BATCHNORM = "batchnorm"  # per-channel affine in eval mode
    ACTIVATION = "activation"  # element-wise non-linearity
    MAX_POOL = "max_pool"  # winner takes all
    LINEAR_NO_PARAM = (
        "linear_no_param"  # linear in its inputs, no weights: avg pool, mean, sum, add, sub
    )
    REARRANGE = (
        "rearrange"  # moves or copies values without mixing them: reshape, cat, slicing, pad
    )
    IDENTITY = "identity"  # dropout, Identity, contiguous, clone, detach-free copies
    SCALE = "scale"  # multiplication or division by something independent of the input
    EMBEDDING = "embedding"  # index lookup
    OUTPUT_ACTIVATION = "output_activation"  # softmax and log-softmax (probabilities)
    OTHER = "other"  # anything else: methods that are not plain gradients refuse it


@dataclass(frozen=True)
class Layer:
    """A torch.nn layer whose eval-mode forward is one ATen call (on its own tensors, if any).

    Attributes
    ----------
    module
        The layer class (a common base where the call serves several: ``_BatchNorm``).
    tensors
        The layer's tensors the call reads after its input, in ATen's argument order; ATen's
        argument names are the layer's attribute names.
    build
        A new layer from the call's arguments after the input (stored tensors as tensors)
        and the input's rank (None if unknown); None where the call is not such a layer's
        forward (a training-mode batch norm, no weight).
    """

    module: type[nn.Module]
    tensors: tuple[str, ...]
    build: Callable[[Sequence[Any], int | None], nn.Module | None]


@dataclass(frozen=True)
class Aten:
    """One ATen overload of an operation, as torch.export and TorchScript conversion write it.

    Attributes
    ----------
    overload
        ``"packet.overload"`` of ``torch.ops.aten``, e.g. ``"conv2d.default"``. Its in-place
        twin (``aten.add_.Tensor`` of ``aten.add.Tensor``) is derived, not listed.
    function
        The torch function computing it from the same positional arguments, which
        TorchScript conversion puts in its place (None: the call stays ATen).
    layer
        The nn layer whose forward the call is when it reads that layer's tensors.
    """

    overload: str
    function: Callable[..., Any] | None = None
    layer: Layer | None = None


@dataclass(frozen=True)
class Op:
    """One operation: how it appears in a graph and what it is.

    Attributes
    ----------
    family
        Finer than ``kind``: "dense", "conv", "batchnorm", "relu", "rectifier" (clamps
        ``min(max(x, 0), t)``), "activation", "max_pool", "average", "sum", "product",
        "upsample", "rearrange", "identity", "embedding", "output_activation". Several rows
        may share a family.
    kind
        The node category the reverse mappings dispatch on.
    modules, functions, names
        Module types (matched with isinstance, in table order), functions (fx
        ``call_function`` targets), and method / ATen names.
    signal_args
        Positions of the arguments that can carry a signal (None: every tensor argument).
        Weights, biases and statistics of linear layers never do.
    nonnegative
        The output is >= 0 whatever the input (ReLU and its clamps).
    qualnames
        ``module.function`` names of optional packages' functions, matched without
        importing them (torchvision is not a core dependency).
    gate
        A product of two signals holds this output constant (the gate rule): gates in
        [0, 1] and the reciprocal norms of hand-written normalisations.
    negated
        Positions of the arguments that enter with a minus sign (``sub``'s second term).
    metadata_args
        The arguments outside ``signal_args`` are read for their dtype, device or shape
        only (a cast's ``type_as(y)``, ``view_as(y)``): they carry no signal. Elsewhere an
        input-dependent argument outside ``signal_args`` (a weight computed from the input)
        still carries one.
    aten
        ATen overloads with their torch function and layer (``Aten``).
    """

    family: str
    kind: Kind
    modules: tuple[type, ...] = ()
    functions: tuple[Callable[..., Any], ...] = ()
    names: tuple[str, ...] = ()
    signal_args: tuple[int, ...] | None = None
    nonnegative: bool = False
    qualnames: tuple[str, ...] = ()
    gate: bool = False
    negated: tuple[int, ...] = ()
    aten: tuple[Aten, ...] = ()
    metadata_args: bool = False


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_CONVS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

# Builders of ``Layer``: a new layer from an ATen call's arguments after the input (stored
# tensors as tensors, the call's constants as written) and the input's rank.


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach(), requires_grad=tensor.requires_grad)


def _dense_layer(args: Sequence[Any], rank: int | None) -> nn.Module | None:
    weight, bias = (*args, None, None)[:2]
    if weight is None:
        return None
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = _parameter(weight)
    if bias is not None:
        layer.bias = _parameter(bias)
    return layer


def _conv_layer(module: type[nn.Module], args: Sequence[Any], rank: int | None) -> nn.Module | None:
    weight, bias, stride, padding, dilation, groups = (*args, *[None] * 6)[:6]
    if weight is None:
        return None
    groups = groups or 1
    layer = module(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=stride or 1,
        padding=padding or 0,
        dilation=dilation or 1,
        groups=groups,
        bias=bias is not None,
    )
    layer.weight = _parameter(weight)
    if bias is not None:
        layer.bias = _parameter(bias)
    return layer


def _batch_norm_layer(args: Sequence[Any], rank: int | None) -> nn.Module | None:
    """An eval-mode batch norm with fixed statistics (the methods fold it into the layer
    before it); the input's rank picks BatchNorm1d, 2d or 3d."""
    weight, bias, mean, var, training, _, eps = (*args, *[None] * 7)[:7]
    if training or mean is None or var is None:
        return None  # batch statistics: not a fixed map
    module = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 5: nn.BatchNorm3d}.get(rank, nn.BatchNorm2d)
    layer = module(
        mean.shape[0], eps=float(eps if eps is not None else 1e-5), affine=weight is not None
    )
    if weight is not None:
        layer.weight = nn.Parameter(weight.detach())
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach())
    layer.running_mean = mean.detach().clone()
    layer.running_var = var.detach().clone()
    return layer.eval()


# Pooling calls become modules too: Zennit's composites, which innspect follows, treat pooling
# modules (z-rule for averages) and functional pooling (the gradient) differently.
def _max_pool2d_layer(args: Sequence[Any], rank: int | None) -> nn.Module:
    def make(
        kernel: Any,
        stride: Sequence[int] = (),
        padding: Any = 0,
        dilation: Any = 1,
        ceil_mode: bool = False,
    ) -> nn.Module:
        return nn.MaxPool2d(kernel, tuple(stride) or kernel, padding, dilation, ceil_mode=ceil_mode)

    return make(*args)


def _avg_pool2d_layer(args: Sequence[Any], rank: int | None) -> nn.Module:
    def make(
        kernel: Any,
        stride: Sequence[int] = (),
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor: int | None = None,
    ) -> nn.Module:
        return nn.AvgPool2d(
            kernel, tuple(stride) or kernel, padding, ceil_mode, count_include_pad, divisor
        )

    return make(*args)


def _adaptive_avg_pool2d_layer(args: Sequence[Any], rank: int | None) -> nn.Module:
    return nn.AdaptiveAvgPool2d(*args)


_WEIGHT_BIAS = ("weight", "bias")
_BATCH_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


OPERATIONS: tuple[Op, ...] = (
    Op(
        "dense",
        Kind.LINEAR,
        (nn.Linear,),
        (F.linear,),
        ("linear",),
        signal_args=(0,),
        aten=(Aten("linear.default", F.linear, Layer(nn.Linear, _WEIGHT_BIAS, _dense_layer)),),
    ),
    Op(
        "conv",
        Kind.LINEAR,
        _CONVS,
        (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d),
        _names("conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d"),
        signal_args=(0,),
        aten=(
            Aten(
                "conv1d.default",
                F.conv1d,
                Layer(nn.Conv1d, _WEIGHT_BIAS, functools.partial(_conv_layer, nn.Conv1d)),
            ),
            Aten(
                "conv2d.default",
                F.conv2d,
                Layer(nn.Conv2d, _WEIGHT_BIAS, functools.partial(_conv_layer, nn.Conv2d)),
            ),
            Aten(
                "conv3d.default",
                F.conv3d,
                Layer(nn.Conv3d, _WEIGHT_BIAS, functools.partial(_conv_layer, nn.Conv3d)),
            ),
        ),
    ),
    Op(
        "batchnorm",
        Kind.BATCHNORM,
        (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
        (F.batch_norm,),
        _names("batch_norm _native_batch_norm_legit_no_training"),
        signal_args=(0,),
        # F.batch_norm orders its arguments differently: only the layer reads the call back.
        aten=(
            Aten(
                "batch_norm.default",
                layer=Layer(
                    nn.modules.batchnorm._BatchNorm, _BATCH_NORM_TENSORS, _batch_norm_layer
                ),
            ),
        ),
    ),
    Op(
        "relu",
        Kind.ACTIVATION,
        (nn.ReLU,),
        (F.relu, torch.relu, torch.relu_, F.relu_),
        _names("relu relu_"),
        nonnegative=True,
        aten=(Aten("relu.default", torch.relu),),
    ),
    # Clamps to [0, t]: rectifiers whose forward mask is 0 < x < t (see rectifier_bound).
    Op(
        "rectifier",
        Kind.ACTIVATION,
        (nn.ReLU6,),
        (F.relu6,),
        _names("relu6"),
        nonnegative=True,
    ),
    # Gates: activations in [0, 1] that a product of two signals holds constant.
    Op(
        "activation",
        Kind.ACTIVATION,
        (nn.Sigmoid, nn.Hardsigmoid),
        (torch.sigmoid, F.sigmoid, F.hardsigmoid),
        _names("sigmoid hardsigmoid"),
        gate=True,
    ),
    Op(
        "activation",
        Kind.ACTIVATION,
        (
            nn.LeakyReLU,
            nn.PReLU,
            nn.ELU,
            nn.SELU,
            nn.CELU,
            nn.GELU,
            nn.SiLU,
            nn.Mish,
            nn.Tanh,
            nn.Softplus,
            nn.Hardtanh,
            nn.Hardswish,
            nn.Softsign,
            nn.Tanhshrink,
        ),
        (
            F.leaky_relu,
            F.elu,
            F.selu,
            F.celu,
            F.gelu,
            F.silu,
            F.mish,
            F.softplus,
            F.hardtanh,
            F.hardswish,
            F.softsign,
            F.tanhshrink,
            torch.tanh,
            F.tanh,
            F.logsigmoid,
            torch.clamp,
            torch.clip,
            torch.clamp_min,
        ),
        _names(
            "tanh hardtanh hardtanh_ leaky_relu leaky_relu_ elu selu celu gelu silu silu_ mish "
            "softplus hardswish hardswish_ softsign log_sigmoid clamp clip clamp_min"
        ),
        # Written out in primitives, recognised at canonicalisation (activation_patterns).
        qualnames=("innspect.graph.activation_patterns.quick_gelu",),
    ),
    Op(
        "max_pool",
        Kind.MAX_POOL,
        (
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.MaxPool3d,
            nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d,
        ),
        (
            F.max_pool1d,
            F.max_pool2d,
            F.max_pool3d,
            F.adaptive_max_pool1d,
            F.adaptive_max_pool2d,
            F.adaptive_max_pool3d,
            torch.amax,
        ),
        _names(
            "max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices "
            "adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d amax"
        ),
        aten=(
            Aten("max_pool2d.default", F.max_pool2d, Layer(nn.MaxPool2d, (), _max_pool2d_layer)),
        ),
    ),
    Op(
        "average",
        Kind.LINEAR_NO_PARAM,
        (
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AvgPool3d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d,
        ),
        (
            F.avg_pool1d,
            F.avg_pool2d,
            F.avg_pool3d,
            F.adaptive_avg_pool1d,
            F.adaptive_avg_pool2d,
            F.adaptive_avg_pool3d,
            torch.mean,
        ),
        _names(
            "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
            "adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d mean"
        ),
        aten=(
            Aten("avg_pool2d.default", F.avg_pool2d, Layer(nn.AvgPool2d, (), _avg_pool2d_layer)),
            Aten(
                "adaptive_avg_pool2d.default",
                F.adaptive_avg_pool2d,
                Layer(nn.AdaptiveAvgPool2d, (), _adaptive_avg_pool2d_layer),
            ),
            Aten("mean.dim", torch.mean),
        ),
    ),
    # Sums of signals (residual connections); with one input-dependent term, a shift.
    Op(
        "sum",
        Kind.LINEAR_NO_PARAM,
        (),
        (torch.add, operator.add),
        _names("add add_"),
        aten=(Aten("add.Tensor", torch.add),),
    ),
    Op(
        "sum", Kind.LINEAR_NO_PARAM, (), (torch.sub, operator.sub), _names("sub sub_"), negated=(1,)
    ),
    Op(
        "linear_no_param",
        Kind.LINEAR_NO_PARAM,
        (),
        (torch.sum, operator.neg, torch.neg),
        _names("sum neg upsample_bilinear2d upsample_linear1d upsample_trilinear3d"),
    ),
    # Products: scalings when one factor is independent of the input, else not linear.
    Op(
        "product",
        Kind.SCALE,
        (),
        (operator.mul, torch.mul, operator.truediv, torch.div),
        _names("mul mul_ div div_ truediv"),
    ),
    Op(
        "rearrange",
        Kind.REARRANGE,
        (
            nn.Flatten,
            nn.Unflatten,
            nn.ZeroPad1d,
            nn.ZeroPad2d,
            nn.ZeroPad3d,
            nn.ConstantPad1d,
            nn.ConstantPad2d,
            nn.ConstantPad3d,
            nn.ReflectionPad1d,
            nn.ReflectionPad2d,
            nn.ReplicationPad1d,
            nn.ReplicationPad2d,
            nn.PixelShuffle,
            nn.PixelUnshuffle,
            nn.ChannelShuffle,
        ),
        (
            torch.flatten,
            torch.reshape,
            torch.cat,
            torch.concat,
            torch.stack,
            torch.permute,
            torch.transpose,
            torch.squeeze,
            torch.unsqueeze,
            torch.split,
            torch.chunk,
            torch.narrow,
            torch.roll,
            torch.flip,
            F.pad,
            operator.getitem,
            torch.movedim,
            torch.swapaxes,
            torch.swapdims,
            torch.unbind,
            F.pixel_shuffle,
            F.pixel_unshuffle,
            F.channel_shuffle,
            torch.channel_shuffle,
            torch.repeat_interleave,
        ),
        _names(
            "view _unsafe_view reshape flatten unflatten permute transpose t squeeze unsqueeze "
            "cat concat stack split split_with_sizes chunk slice select narrow expand "
            "repeat repeat_interleave pad constant_pad_nd reflection_pad1d reflection_pad2d "
            "replication_pad1d replication_pad2d upsample_nearest1d upsample_nearest2d "
            "upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d "
            "_upsample_nearest_exact3d movedim swapaxes swapdims unbind roll flip pixel_shuffle pixel_unshuffle "
            "channel_shuffle"
        ),
        # Swin's patch merging: pad, then four strided slices concatenated; the time steps
        # of a written-out recurrent layer (graph/recurrent.py: unbind with a length check).
        qualnames=(
            "torchvision.models.swin_transformer._patch_merging_pad",
            "innspect.graph.recurrent.time_steps",
        ),
        aten=(
            Aten("flatten.using_ints", torch.flatten),
            Aten("view.default", torch.reshape),
            Aten("reshape.default", torch.reshape),
            Aten("cat.default", torch.cat),
        ),
    ),
    # Values picked by an index (Falcon's ``qkv[:, :, [-2]]``, torch.export's ``aten.index``;
    # DeBERTa's ``gather`` of relative-position scores): each output copies one input value,
    # so relevance returns along the copy (the gradient, summed over repeats). The indices
    # are integers and carry no signal.
    Op(
        "rearrange",
        Kind.REARRANGE,
        (),
        (torch.gather, torch.index_select, torch.take_along_dim),
        _names("index gather index_select take_along_dim"),
        signal_args=(0,),
    ),
    # Shaped like another tensor: only the first argument's values pass.
    Op(
        "rearrange",
        Kind.REARRANGE,
        names=_names("expand_as view_as reshape_as"),
        signal_args=(0,),
        metadata_args=True,
    ),
    Op(
        "identity",
        Kind.IDENTITY,
        (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout),
        (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout),
        _names(
            "dropout feature_dropout alpha_dropout clone contiguous alias _to_copy to "
            "lift_fresh_copy float double half bfloat16 type_as"
        ),
        # A cast has one signal: ``type_as(y)`` and ``to(y)`` read only y's dtype and device.
        signal_args=(0,),
        metadata_args=True,
        # Stochastic depth (EfficientNet, ConvNeXt, Swin): the identity in eval mode.
        qualnames=("torchvision.ops.stochastic_depth.stochastic_depth",),
        aten=(Aten("dropout.default", F.dropout),),
    ),
    Op("upsample", Kind.REARRANGE, (nn.Upsample,), (F.interpolate, F.upsample)),
    Op("embedding", Kind.EMBEDDING, (nn.Embedding,), (F.embedding,), ("embedding",)),
    # Softmax: the model's output activation when last (analyzers refuse it there), an
    # attention normaliser inside the network (AttnLRP / CP-LRP rules, rules/modern.py).
    Op(
        "softmax",
        Kind.OUTPUT_ACTIVATION,
        (nn.Softmax, nn.Softmax2d),
        (F.softmax, torch.softmax, torch.special.softmax),
        _names("softmax _softmax _safe_softmax special_softmax"),
        gate=True,
    ),
    Op(
        "output_activation",
        Kind.OUTPUT_ACTIVATION,
        (nn.LogSoftmax, nn.Softmin),
        (F.log_softmax, torch.log_softmax, torch.special.log_softmax, F.softmin),
        _names("log_softmax _log_softmax special_log_softmax softmin"),
    ),
    # Modern architectures (SPEC "Modern architectures"): products of two signals, the
    # normalisations, and the factors a product holds constant (gates, 1 / norm).
    Op(
        "matmul",
        Kind.OTHER,
        (),
        (torch.matmul, operator.matmul, torch.bmm, torch.einsum),
        _names("matmul bmm einsum"),
    ),
    # A matrix or element-wise product with a term added in the same call: BLOOM's ALiBi
    # scores ``alibi.baddbmm(q, k, beta=b, alpha=a)`` = ``b alibi + a (q @ k)``, ResMLP's
    # ``Affine`` ``addcmul(beta, alpha, x)`` = ``beta + alpha x``. Their rules
    # (rules/modern.py) are those of the written-out sum and product.
    Op("baddbmm", Kind.OTHER, (), (torch.baddbmm,), _names("baddbmm")),
    Op("addcmul", Kind.OTHER, (), (torch.addcmul,), _names("addcmul")),
    Op(
        "layer_norm",
        Kind.OTHER,
        (nn.LayerNorm,),
        (F.layer_norm,),
        _names("layer_norm native_layer_norm"),
        signal_args=(0,),
    ),
    Op(
        "group_norm",
        Kind.OTHER,
        (nn.GroupNorm,),
        (F.group_norm,),
        _names("group_norm native_group_norm"),
        signal_args=(0,),
    ),
    Op(
        "rms_norm",
        Kind.OTHER,
        (nn.RMSNorm,),
        (F.rms_norm, F.normalize),
        _names("rms_norm normalize"),
        signal_args=(0,),
    ),
    Op(
        "reciprocal",
        Kind.OTHER,
        (),
        (torch.rsqrt, torch.reciprocal),
        _names("rsqrt reciprocal"),
        gate=True,
    ),
    # x ** c, c ** x: element-wise in their one signal (GPT-2's written-out tanh GELU has
    # x ** 3); x ** y is no activation (classify) and gets no LRP rule.
    Op("power", Kind.ACTIVATION, (), (torch.pow, operator.pow, torch.square), _names("pow square")),
    # Positions set to a constant (attention masks): the signal passes where kept; innspect
    # writes attention masks out as its own function (graph/attention.py).
    Op(
        "masked_fill",
        Kind.IDENTITY,
        (),
        (torch.masked_fill,),
        _names("masked_fill"),
        qualnames=("innspect.graph.attention.attention_mask",),
    ),
    # where(condition, a, b): each position is a's or b's value, so relevance passes to the
    # operand chosen there (GPT-Neo's causal mask: where(mask, scores, min)). Only with a
    # condition that does not depend on the input: graph.py makes any other an OTHER node.
    Op("select", Kind.IDENTITY, (), (torch.where,), _names("where")),
)


def selection_condition(node: fx.Node) -> fx.Node | None:
    """The condition of ``where(condition, a, b)`` / ``a.where(condition, b)``; None where
    the node is no three-operand selection (``torch.where(condition)`` lists indices)."""
    if len(node.args) + len(node.kwargs) != 3:
        return None
    position = 1 if node.op == "call_method" else 0  # a method's self is the first operand
    condition = node.args[position] if len(node.args) > position else node.kwargs.get("condition")
    return condition if isinstance(condition, fx.Node) else None


UPSAMPLE_NEAREST_MODES = {"nearest", "nearest-exact"}


def aten_name(target: object) -> str | None:
    """'relu' for ``torch.ops.aten.relu.default``; None for anything that is not ATen."""
    if getattr(target, "namespace", None) != "aten":
        return None
    return getattr(getattr(target, "overloadpacket", None), "__name__", None)


def _in_place_stem(name: str) -> str | None:
    """'add' for 'add_': the name without its in-place mark; None if it has none (private
    names such as '_foo_' are no in-place forms)."""
    return name[:-1] if name.endswith("_") and not name.startswith("_") else None


def out_of_place(target: object) -> object | None:
    """The out-of-place twin of an in-place operation; None for anything else.

    ``target`` is a node (call_function or call_method) or its target: a Tensor method name
    ('add_' -> 'add'), an ATen overload (``aten.add_.Tensor`` -> ``aten.add.Tensor``), an
    augmented assignment of ``operator`` (``operator.iadd`` -> ``operator.add``) or a torch
    function (``torch.relu_`` -> ``torch.relu``). One rule for all: the name without its
    in-place mark (a trailing '_', operator's leading 'i'), where that names an operation.
    Modules built with ``inplace=True`` and ``inplace=True`` arguments are the caller's.
    """
    if isinstance(target, fx.Node):
        if target.op not in ("call_function", "call_method"):
            return None
        target = target.target
    if isinstance(target, str):  # a Tensor method
        stem = _in_place_stem(target)
        return stem if stem is not None and callable(getattr(torch.Tensor, stem, None)) else None
    name = getattr(target, "__name__", "")
    if name.startswith("i") and getattr(operator, name, None) is target:
        twin = getattr(operator, name[1:], None)
        return twin if callable(twin) else None
    packet = aten_name(target)
    if packet is not None:
        stem = _in_place_stem(packet)
        twins = getattr(torch.ops.aten, stem, None) if stem is not None else None
        return getattr(twins, getattr(target, "_overloadname", "default"), None)
    stem = _in_place_stem(name)
    return getattr(torch, stem, None) if stem is not None else None


def _aten_overload(spelling: str) -> Any:
    """``torch.ops.aten.conv2d.default`` for 'conv2d.default'; None where torch lacks it."""
    packet, _, overload = spelling.partition(".")
    return getattr(getattr(torch.ops.aten, packet, None), overload, None)


def _in_place_twin(overload: Any) -> Any:
    """``aten.add_.Tensor`` for ``aten.add.Tensor`` (None if there is none): the overload
    whose ``out_of_place`` twin is this one."""
    twins = getattr(torch.ops.aten, f"{aten_name(overload)}_", None)
    twin = getattr(twins, overload._overloadname, None)
    return twin if twin is not None and out_of_place(twin) is overload else None


# The lookups, derived from the rows once. ATEN_TO_TORCH: ATen overloads -> the torch
# function computing them from the same positional arguments, in-place overloads included
# (innspect keeps every recorded value as it was produced, so TorchScript's `out += x` and
# `relu_` become their out-of-place twins' functions). LAYER_CALLS: ATen overloads -> the
# nn layer whose forward such a call is.
_BY_FUNCTION: dict[object, Op] = {}
_BY_NAME: dict[str, Op] = {}
_BY_QUALNAME: dict[str, Op] = {}
_BY_FAMILY: dict[str, list[Op]] = {}
ATEN_TO_TORCH: dict[Any, Callable[..., Any]] = {}
LAYER_CALLS: dict[Any, Layer] = {}
for _op in OPERATIONS:
    for _function in _op.functions:
        _BY_FUNCTION.setdefault(_function, _op)
    for _name in _op.names:
        _BY_NAME.setdefault(_name, _op)
    for _qualname in _op.qualnames:
        _BY_QUALNAME.setdefault(_qualname, _op)
    _BY_FAMILY.setdefault(_op.family, []).append(_op)
    for _aten in _op.aten:
        _overload = _aten_overload(_aten.overload)
        if _overload is None:
            continue  # not in this torch (tests/test_operations_table.py names it)
        if _aten.function is not None:
            ATEN_TO_TORCH[_overload] = _aten.function
            _twin = _in_place_twin(_overload)
            if _twin is not None:
                ATEN_TO_TORCH[_twin] = _aten.function
        if _aten.layer is not None:
            LAYER_CALLS[_overload] = _aten.layer

# Families whose every row is a gate (sigmoids are gates among other activations).
GATE_FAMILIES = {name for name, rows in _BY_FAMILY.items() if all(op.gate for op in rows)}


def modules_of(*families: str) -> tuple[type, ...]:
    """The module types of the given families, e.g. ``modules_of("dense", "conv")``."""
    return tuple(t for family in families for op in _BY_FAMILY[family] for t in op.modules)


def torch_function(target: object) -> Callable[..., Any] | None:
    """The torch function computing an ATen overload from the same positional arguments
    (``F.conv2d`` for ``aten.conv2d.default``); None for anything else."""
    return ATEN_TO_TORCH.get(target) if aten_name(target) is not None else None


def layer_call(node: fx.Node) -> Layer | None:
    """The nn layer whose forward the node's ATen call can be (``Layer``); None otherwise.
    Whether it is depends on its arguments: the caller checks them."""
    if node.op != "call_function" or aten_name(node.target) is None:
        return None
    return LAYER_CALLS.get(node.target)


def op_name(node: fx.Node) -> str:
    """The operation's plain name: 'add' for operator.add, torch.add, x.add and aten.add."""
    if node.op == "call_method":
        return str(node.target)
    return aten_name(node.target) or getattr(node.target, "__name__", str(node.target))


def op_of(node: fx.Node, module: nn.Module | None) -> Op | None:
    """The table entry of the node's operation (None for placeholders, get_attr, unknown ops)."""
    if node.op == "call_module":
        for op in OPERATIONS:
            if op.modules and isinstance(module, op.modules):
                return op
        return None
    if node.op == "call_function":
        op = _BY_FUNCTION.get(node.target)
        if op is not None:
            return op
        qualname = (
            f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', '')}"
        )
        if qualname in _BY_QUALNAME:
            return _BY_QUALNAME[qualname]
        name = aten_name(node.target)
        return _BY_NAME.get(name) if name is not None else None
    if node.op == "call_method":
        return _BY_NAME.get(str(node.target))
    return None


def family(node: fx.Node, module: nn.Module | None) -> str:
    """The node's family ("dense", "conv", "relu", "rectifier", "average", "sum"...; "" if
    unknown); clamps to ``[0, t]`` written as Hardtanh or clamp count as rectifiers."""
    op = op_of(node, module)
    if op is None:
        return ""
    if op.family == "activation" and rectifier_bound(node, module) is not None:
        return "rectifier"
    return op.family


def is_gate(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether the node computes a gate (sigmoid, hard sigmoid, softmax) or a reciprocal
    (``rsqrt``), a factor the gate rule of a product holds constant."""
    op = op_of(node, module)
    return op is not None and op.gate


def is_relu(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether the node computes max(0, x) (module, function or method form)."""
    op = op_of(node, module)
    return op is not None and op.family == "relu"


def is_plain_relu(node: fx.Node, module: nn.Module | None) -> bool:
    """A ReLU that ``torch.relu`` reproduces exactly (not a subclass with its own forward)."""
    return is_relu(node, module) and (module is None or type(module) is nn.ReLU)


def _argument(node: fx.Node, position: int, name: str, default: object) -> object:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def rectifier_bound(node: fx.Node, module: nn.Module | None) -> float | None:
    """``t`` when the node computes ``min(max(x, 0), t)`` (``inf`` for a ReLU), else None.

    ReLU6 (MobileNetV2), ``Hardtanh(0, t)``, ``F.hardtanh(x, 0, t)``, ``clamp(x, 0, t)``
    and ``clamp_min(x, 0)`` are rectifiers: their forward mask is ``0 < x < t``.
    """
    op = op_of(node, module)
    if op is None or op.kind is not Kind.ACTIVATION:
        return None
    if op.family == "relu":
        return math.inf
    if node.op == "call_module":
        if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
            low, high = module.min_val, module.max_val
        else:
            return None
    else:
        name = op_name(node).rstrip("_")
        if name == "relu6":
            low, high = 0.0, 6.0
        elif name == "hardtanh":
            low = _argument(node, 1, "min_val", -1.0)
            high = _argument(node, 2, "max_val", 1.0)
        elif name in ("clamp", "clip"):
            low = _argument(node, 1, "min", None)
            high = _argument(node, 2, "max", None)
        elif name == "clamp_min":
            low, high = _argument(node, 1, "min", None), None
        else:
            return None
    if isinstance(low, fx.Node) or isinstance(high, fx.Node) or low is None:
        return None
    high = math.inf if high is None else high
    if float(low) != 0.0 or not float(high) > 0.0:
        return None
    return float(high)


def is_nonnegative_op(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether the node's output is >= 0 whatever its input (ReLU and clamps to [0, t])."""
    op = op_of(node, module)
    if op is not None and op.nonnegative:
        return True
    return rectifier_bound(node, module) is not None


_ATEN_SHAPE_QUERIES = {"sym_size", "sym_numel", "sym_stride", "sym_storage_offset"}


def is_shape_query(node: fx.Node) -> bool:
    """Whether the node reads only a tensor's metadata (``x.shape``, ``x.ndim``, ``x.dtype``,
    ``x.size()``, ``x.dim()``, torch.export's ``sym_size``): its value is no tensor and
    carries no signal."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "dtype", "device", "ndim")
    if node.op == "call_function" and aten_name(node.target) in _ATEN_SHAPE_QUERIES:
        return True  # torch.export with a dynamic batch dimension: aten.sym_size.int
    return node.op == "call_method" and node.target in ("size", "dim", "numel")


def metadata_arguments(node: fx.Node, module: nn.Module | None) -> set[fx.Node]:
    """The argument nodes read for their dtype, device or shape only, never their values
    (``x.type_as(y)``, ``x.to(y)``, ``x.view_as(y)``: ``y``), per the row's ``metadata_args``.
    Such an argument carries no signal even when it depends on the input."""
    op = op_of(node, module)
    if op is None or not op.metadata_args or op.signal_args is None or node.op == "call_module":
        return set()
    signal: list[fx.Node] = []
    for position in op.signal_args:
        if position < len(node.args):
            fx.node.map_arg(node.args[position], signal.append)
    fx.node.map_arg(node.kwargs.get("input"), signal.append)  # a signal passed by keyword
    every: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), every.append)
    return set(every) - set(signal)


def _function_or_method(node: fx.Node) -> Op | None:
    return op_of(node, None) if node.op in ("call_function", "call_method") else None


def is_sum(node: fx.Node) -> bool:
    """``add`` or ``sub`` in any form (function, operator, method, ATen)."""
    op = _function_or_method(node)
    return op is not None and op.family == "sum"


def is_difference(node: fx.Node) -> bool:
    """``sub`` in any form: the second term enters with a minus sign."""
    op = _function_or_method(node)
    return op is not None and op.family == "sum" and 1 in op.negated


def is_product(node: fx.Node) -> bool:
    """``mul`` or ``div`` in any form (function, operator, method, ATen)."""
    op = _function_or_method(node)
    return op is not None and op.family == "product"


def _upsample_kind(mode: str | None) -> Kind:
    return (
        Kind.REARRANGE if mode in UPSAMPLE_NEAREST_MODES or mode is None else Kind.LINEAR_NO_PARAM
    )


def classify(node: fx.Node, module: nn.Module | None) -> Kind:
    """Return the category of ``node``; ``module`` is the submodule for call_module nodes."""
    if node.op == "placeholder":
        return Kind.INPUT
    if node.op == "get_attr":
        return Kind.CONSTANT
    op = op_of(node, module)
    if op is None:
        return Kind.OTHER
    if op.family == "upsample":
        mode = module.mode if node.op == "call_module" else node.kwargs.get("mode", "nearest")
        return _upsample_kind(mode)
    if op.family == "product":
        return _classify_product(node)
    if op.family == "sum":
        return _classify_sum(node)
    if op.kind is Kind.ACTIVATION and node.op != "call_module" and len(_node_args(node)) > 1:
        return Kind.OTHER  # clamp(x, lower_tensor): not element-wise in x alone
    return op.kind


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _classify_sum(node: fx.Node) -> Kind:
    # x + 3 is a shift, not a sum of signals: relevance passes through it unchanged.
    if len(_node_args(node)) < 2:
        return Kind.IDENTITY
    return Kind.LINEAR_NO_PARAM


def _classify_product(node: fx.Node) -> Kind:
    # A product of two input-dependent tensors (gating, attention) is not linear; whether a
    # factor depends on the input is decided later, once constants are known (see graph.py).
    if len(_node_args(node)) < 2:
        return Kind.SCALE
    return Kind.OTHER


def operation_name(node: fx.Node, module: nn.Module | None) -> str:
    """A short human-readable description of the node's operation, for error messages."""
    if node.op == "call_module":
        return type(module).__name__
    if node.op == "call_function":
        return op_name(node)
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return node.op
