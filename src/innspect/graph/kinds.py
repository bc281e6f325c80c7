"""Node categories: what kind of operation each node of a captured graph performs.

Methods choose their mapping per category, so a new operation needs one entry here and
works with every method that has a mapping for its category.
"""

from __future__ import annotations

import operator
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


LINEAR_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
RELU_MODULES = (nn.ReLU,)
ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
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
)
MAX_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
AVG_POOL_MODULES = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
REARRANGE_MODULES = (
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
)
IDENTITY_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
OUTPUT_ACTIVATION_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmax2d)

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_ACTIVATION_FUNCTIONS = _RELU_FUNCTIONS | {
    F.relu6,
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
    torch.nn.functional.logsigmoid,
}
_ACTIVATION_METHODS = {"relu", "sigmoid", "tanh"}
_MAX_POOL_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    torch.amax,
}
_LINEAR_NO_PARAM_FUNCTIONS = {
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    torch.mean,
    torch.sum,
    torch.add,
    torch.sub,
    operator.add,
    operator.sub,
    operator.neg,
    torch.neg,
}
_LINEAR_NO_PARAM_METHODS = {"mean", "sum", "add", "sub", "neg"}
_REARRANGE_FUNCTIONS = {
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
    F.pixel_shuffle,
    F.pixel_unshuffle,
    F.channel_shuffle,
    torch.channel_shuffle,
}
_REARRANGE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "split",
    "chunk",
    "narrow",
    "expand",
    "expand_as",
    "repeat",
    "movedim",
    "unflatten",
    "view_as",
    "reshape_as",
    "t",
    "roll",
    "flip",
}
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
_IDENTITY_METHODS = {"contiguous", "clone", "float", "double", "to", "type_as"}
_OUTPUT_ACTIVATION_FUNCTIONS = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax}
_OUTPUT_ACTIVATION_METHODS = {"softmax", "log_softmax"}
_SCALE_FUNCTIONS = {operator.mul, torch.mul, operator.truediv, torch.div}
_SCALE_METHODS = {"mul", "div"}

UPSAMPLE_NEAREST_MODES = {"nearest", "nearest-exact"}

# torch.export (the capture fallback) and TorchScript conversion give ATen operators; they
# are classified by their overload packet's name so they never fall through silently.
_ATEN_KINDS: dict[str, Kind] = {}
for _kind, _names in {
    Kind.LINEAR: "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d",
    Kind.BATCHNORM: "batch_norm _native_batch_norm_legit_no_training",
    Kind.ACTIVATION: "relu relu_ relu6 hardtanh hardtanh_ leaky_relu leaky_relu_ elu selu celu "
    "gelu silu silu_ mish tanh sigmoid softplus hardswish hardswish_ hardsigmoid softsign "
    "log_sigmoid",
    Kind.MAX_POOL: "max_pool1d max_pool2d max_pool3d max_pool2d_with_indices "
    "max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d amax",
    Kind.LINEAR_NO_PARAM: "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d "
    "adaptive_avg_pool2d adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d mean sum "
    "add add_ sub sub_ neg upsample_bilinear2d upsample_linear1d upsample_trilinear3d",
    Kind.REARRANGE: "view _unsafe_view reshape flatten unflatten permute transpose t squeeze "
    "unsqueeze cat concat stack split split_with_sizes chunk slice select narrow expand repeat "
    "pad constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d "
    "upsample_nearest1d upsample_nearest2d upsample_nearest3d _upsample_nearest_exact1d "
    "_upsample_nearest_exact2d _upsample_nearest_exact3d movedim roll flip pixel_shuffle "
    "pixel_unshuffle channel_shuffle",
    Kind.IDENTITY: "dropout feature_dropout alpha_dropout clone contiguous alias _to_copy to "
    "lift_fresh_copy",
    Kind.OUTPUT_ACTIVATION: "softmax _softmax log_softmax _log_softmax",
    Kind.EMBEDDING: "embedding",
}.items():
    _ATEN_KINDS.update(dict.fromkeys(_names.split(), _kind))
_ATEN_PRODUCTS = {"mul", "mul_", "div", "div_"}


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


def is_relu(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether the node computes max(0, x) (module, function or method form)."""
    if node.op == "call_module":
        return isinstance(module, RELU_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS or aten_name(node.target) in {"relu", "relu_"}
    if node.op == "call_method":
        return node.target in {"relu", "relu_"}
    return False


def is_plain_relu(node: fx.Node, module: nn.Module | None) -> bool:
    """A ReLU that ``torch.relu`` reproduces exactly (not a subclass with its own forward)."""
    return is_relu(node, module) and (module is None or type(module) is nn.ReLU)


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
    if node.op == "call_module":
        return _classify_module(module)
    if node.op == "call_function":
        return _classify_function(node)
    if node.op == "call_method":
        return _classify_method(node)
    return Kind.OTHER


def _classify_module(module: nn.Module | None) -> Kind:
    if isinstance(module, LINEAR_MODULES):
        return Kind.LINEAR
    if isinstance(module, BATCHNORM_MODULES):
        return Kind.BATCHNORM
    if isinstance(module, ACTIVATION_MODULES):
        return Kind.ACTIVATION
    if isinstance(module, MAX_POOL_MODULES):
        return Kind.MAX_POOL
    if isinstance(module, AVG_POOL_MODULES):
        return Kind.LINEAR_NO_PARAM
    if isinstance(module, REARRANGE_MODULES):
        return Kind.REARRANGE
    if isinstance(module, IDENTITY_MODULES):
        return Kind.IDENTITY
    if isinstance(module, nn.Upsample):
        return _upsample_kind(module.mode)
    if isinstance(module, nn.Embedding):
        return Kind.EMBEDDING
    if isinstance(module, OUTPUT_ACTIVATION_MODULES):
        return Kind.OUTPUT_ACTIVATION
    return Kind.OTHER


def _classify_function(node: fx.Node) -> Kind:
    target = node.target
    aten = aten_name(target)
    if aten is not None:
        if aten in _ATEN_PRODUCTS:
            return _classify_product(node)
        kind = _ATEN_KINDS.get(aten, Kind.OTHER)
        return _classify_sum(node) if kind is Kind.LINEAR_NO_PARAM else kind
    if target in (F.linear, F.conv1d, F.conv2d, F.conv3d) or target in (
        F.conv_transpose1d,
        F.conv_transpose2d,
        F.conv_transpose3d,
    ):
        return Kind.LINEAR
    if target is F.batch_norm:
        return Kind.BATCHNORM
    if target in _ACTIVATION_FUNCTIONS:
        return Kind.ACTIVATION
    if target in _MAX_POOL_FUNCTIONS:
        return Kind.MAX_POOL
    if target in _SCALE_FUNCTIONS:
        return _classify_product(node)
    if target in _LINEAR_NO_PARAM_FUNCTIONS:
        return _classify_sum(node)
    if target in _REARRANGE_FUNCTIONS:
        return Kind.REARRANGE
    if target in _IDENTITY_FUNCTIONS:
        return Kind.IDENTITY
    if target in _OUTPUT_ACTIVATION_FUNCTIONS:
        return Kind.OUTPUT_ACTIVATION
    if target in (F.interpolate, F.upsample):
        return _upsample_kind(node.kwargs.get("mode", "nearest"))
    if target is F.embedding:
        return Kind.EMBEDDING
    return Kind.OTHER


def _classify_method(node: fx.Node) -> Kind:
    name = node.target
    if name in _ACTIVATION_METHODS:
        return Kind.ACTIVATION
    if name in _SCALE_METHODS:
        return _classify_product(node)
    if name in _LINEAR_NO_PARAM_METHODS:
        return _classify_sum(node)
    if name in _REARRANGE_METHODS:
        return Kind.REARRANGE
    if name in _IDENTITY_METHODS:
        return Kind.IDENTITY
    if name in _OUTPUT_ACTIVATION_METHODS:
        return Kind.OUTPUT_ACTIVATION
    if name == "amax":
        return Kind.MAX_POOL
    return Kind.OTHER


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _classify_sum(node: fx.Node) -> Kind:
    # x + 3 is a shift, not a sum of signals: relevance passes through it unchanged.
    if op_name(node).rstrip("_") in ("add", "sub") and len(_node_args(node)) < 2:
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
