"""The operations table: what each operation of a captured graph is, in one place.

Every operation innspect knows is one ``Op`` entry of ``OPERATIONS``: its module types,
its functions, its method and ATen names (torch.export gives ATen operators, classified by
their overload packet's name), its ``Kind`` (what the reverse mappings care about), a
finer ``family`` that rules and composites select on (dense, conv, relu, average, sum...),
which arguments carry the signal and whether its output is non-negative by construction.
A new operation is one entry here and works with every method that has a mapping for its
kind.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from enum import Enum

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
class Op:
    """One operation: how it appears in a graph and what it is.

    Attributes
    ----------
    family
        Finer than ``kind``: "dense", "conv", "batchnorm", "relu", "rectifier" (clamps
        ``min(max(x, 0), t)``), "activation", "max_pool", "average", "sum", "product",
        "upsample", "rearrange", "identity", "embedding", "output_activation".
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
    """

    family: str
    kind: Kind
    modules: tuple[type, ...] = ()
    functions: tuple = ()
    names: tuple[str, ...] = ()
    signal_args: tuple[int, ...] | None = None
    nonnegative: bool = False


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

OPERATIONS: tuple[Op, ...] = (
    Op("dense", Kind.LINEAR, (nn.Linear,), (F.linear,), ("linear",), signal_args=(0,)),
    Op(
        "conv",
        Kind.LINEAR,
        _CONVS,
        (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d),
        _names("conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d"),
        signal_args=(0,),
    ),
    Op(
        "batchnorm",
        Kind.BATCHNORM,
        (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
        (F.batch_norm,),
        _names("batch_norm _native_batch_norm_legit_no_training"),
        signal_args=(0,),
    ),
    Op(
        "relu",
        Kind.ACTIVATION,
        (nn.ReLU,),
        (F.relu, torch.relu, torch.relu_, F.relu_),
        _names("relu relu_"),
        nonnegative=True,
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
            nn.Sigmoid,
            nn.Softplus,
            nn.Hardtanh,
            nn.Hardswish,
            nn.Hardsigmoid,
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
            F.hardsigmoid,
            F.softsign,
            F.tanhshrink,
            torch.tanh,
            torch.sigmoid,
            F.tanh,
            F.sigmoid,
            F.logsigmoid,
            torch.clamp,
            torch.clip,
            torch.clamp_min,
        ),
        _names(
            "sigmoid tanh hardtanh hardtanh_ leaky_relu leaky_relu_ elu selu celu gelu silu "
            "silu_ mish softplus hardswish hardswish_ hardsigmoid softsign log_sigmoid clamp "
            "clip clamp_min"
        ),
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
    ),
    # Sums of signals (residual connections); with one input-dependent term, a shift.
    Op(
        "sum",
        Kind.LINEAR_NO_PARAM,
        (),
        (torch.add, torch.sub, operator.add, operator.sub),
        _names("add add_ sub sub_"),
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
            "cat concat stack split split_with_sizes chunk slice select narrow expand expand_as "
            "repeat repeat_interleave view_as reshape_as pad constant_pad_nd reflection_pad1d reflection_pad2d "
            "replication_pad1d replication_pad2d upsample_nearest1d upsample_nearest2d "
            "upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d "
            "_upsample_nearest_exact3d movedim swapaxes swapdims unbind roll flip pixel_shuffle pixel_unshuffle "
            "channel_shuffle"
        ),
    ),
    Op(
        "identity",
        Kind.IDENTITY,
        (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout),
        (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout),
        _names(
            "dropout feature_dropout alpha_dropout clone contiguous alias _to_copy to "
            "lift_fresh_copy float double type_as"
        ),
    ),
    Op("upsample", Kind.REARRANGE, (nn.Upsample,), (F.interpolate, F.upsample)),
    Op("embedding", Kind.EMBEDDING, (nn.Embedding,), (F.embedding,), ("embedding",)),
    # Softmax: the model's output activation when last (analyzers refuse it there), an
    # attention normaliser inside the network (AttnLRP / CP-LRP rules, rules/modern.py).
    Op(
        "softmax",
        Kind.OUTPUT_ACTIVATION,
        (nn.Softmax, nn.Softmax2d),
        (F.softmax, torch.softmax),
        _names("softmax _softmax"),
    ),
    Op(
        "output_activation",
        Kind.OUTPUT_ACTIVATION,
        (nn.LogSoftmax,),
        (F.log_softmax, torch.log_softmax),
        _names("log_softmax _log_softmax"),
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
    Op("reciprocal", Kind.OTHER, (), (torch.rsqrt, torch.reciprocal), _names("rsqrt reciprocal")),
    # x ** c, c ** x: element-wise in their one signal (GPT-2's written-out tanh GELU has
    # x ** 3); x ** y is no activation (classify) and gets no LRP rule.
    Op("power", Kind.ACTIVATION, (), (torch.pow, operator.pow, torch.square), _names("pow square")),
    # Positions set to a constant (attention masks): the signal passes where kept.
    Op("masked_fill", Kind.IDENTITY, (), (torch.masked_fill,), _names("masked_fill")),
)

# Functions of optional packages, by qualified name (torchvision is not a core dependency).
_BY_QUALNAME: dict[str, Op] = {
    # Stochastic depth (EfficientNet, ConvNeXt, Swin): the identity in eval mode.
    "torchvision.ops.stochastic_depth.stochastic_depth": next(
        op for op in OPERATIONS if op.family == "identity"
    ),
    # Swin's patch merging: pad, then four strided slices concatenated (a rearrangement).
    "torchvision.models.swin_transformer._patch_merging_pad": next(
        op for op in OPERATIONS if op.family == "rearrange"
    ),
    # innspect's own decomposition of attention masks (graph/attention.py).
    "innspect.graph.attention.attention_mask": next(
        op for op in OPERATIONS if op.family == "masked_fill"
    ),
}

# Operations whose output a product of two signals treats as a constant weight (gate rule):
# gates in [0, 1] and the reciprocal norms of hand-written normalisations.
GATE_FAMILIES = {"softmax", "reciprocal"}
GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
GATE_NAMES = {"sigmoid", "hardsigmoid"}

_BY_FUNCTION: dict[object, Op] = {}
_BY_NAME: dict[str, Op] = {}
for _op in OPERATIONS:
    for _function in _op.functions:
        _BY_FUNCTION.setdefault(_function, _op)
    for _name in _op.names:
        _BY_NAME.setdefault(_name, _op)
_BY_FAMILY: dict[str, Op] = {op.family: op for op in OPERATIONS}

UPSAMPLE_NEAREST_MODES = {"nearest", "nearest-exact"}


def modules_of(*families: str) -> tuple[type, ...]:
    """The module types of the given families, e.g. ``modules_of("dense", "conv")``."""
    return tuple(t for family in families for t in _BY_FAMILY[family].modules)


def aten_name(target: object) -> str | None:
    """'relu' for ``torch.ops.aten.relu.default``; None for anything that is not ATen."""
    if getattr(target, "namespace", None) != "aten":
        return None
    return getattr(getattr(target, "overloadpacket", None), "__name__", None)


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
    if node.op == "call_module":
        return isinstance(module, GATE_MODULES) or family(node, module) in GATE_FAMILIES
    return op_name(node).rstrip("_") in GATE_NAMES or family(node, module) in GATE_FAMILIES


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


def is_sum(node: fx.Node) -> bool:
    """``add`` or ``sub`` in any form (function, operator, method, ATen)."""
    return node.op in ("call_function", "call_method") and op_name(node).rstrip("_") in _SUM_NAMES


def is_difference(node: fx.Node) -> bool:
    """``sub`` in any form: the second term enters with a minus sign."""
    return is_sum(node) and op_name(node).rstrip("_") in ("sub", "rsub")


def is_product(node: fx.Node) -> bool:
    """``mul`` or ``div`` in any form (function, operator, method, ATen)."""
    return (
        node.op in ("call_function", "call_method") and op_name(node).rstrip("_") in _PRODUCT_NAMES
    )


_SUM_NAMES = {"add", "sub"}
_PRODUCT_NAMES = {"mul", "div", "truediv"}


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
