"""Linear operations: a layer's forward with replaceable weights, and its transpose.

Every LRP rule on a linear layer is "a forward with modified weights, a division, and the
transposed operation". This module gives that pair for Linear (on any rank),
Conv1d/2d/3d, ConvTranspose1d/2d/3d and an eval-mode BatchNorm seen as a per-channel affine
map, so each rule is written once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@dataclass
class LinearOp:
    """A linear map ``z = op(x, weight) + bias`` whose weights can be swapped.

    Attributes
    ----------
    weight, bias
        The layer's own tensors (never modified).
    forward
        ``forward(x, weight, bias)`` computes the layer with the given tensors.
    transpose
        ``transpose(signal, weight, x)`` computes ``W^T signal`` with the given weight; ``x``
        supplies the input's shape.
    description
        Human-readable layer type, for messages.
    weight_gradient
        ``weight_gradient(x, signal)``: the gradient of ``<signal, op(x, W)>`` with respect to
        ``W`` (the weight's shape), i.e. the sum over samples and positions of
        ``input patch x output signal``, computed without unfolding patches (one
        ``convolution_backward`` for convolutions, a matmul for Linear). Statistics over
        receptive fields (PatternComputer) use it. None: derive it by autograd.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    transpose: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    description: str
    extras: dict = field(default_factory=dict)
    weight_gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __call__(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None | str = "own",
    ) -> torch.Tensor:
        """Apply the layer with ``weight`` (default: its own) and ``bias`` (default: own)."""
        w = self.weight if weight is None else weight
        b = self.bias if isinstance(bias, str) else bias
        return self.forward(x, w, b)

    @property
    def is_dense(self) -> bool:
        """A dense layer: weight ``(out, in)``, outputs on the last axis (Linear, any rank)."""
        return self.extras.get("output_axis") == -1 and self.weight.dim() == 2

    def output_blocks(self, max_bytes: int) -> list[tuple[slice, LinearOp]] | None:
        """The op split by output units into pieces whose weight fits ``max_bytes``.

        Only for dense layers (weight ``(out, in)``, outputs on the last axis) whose weight
        is larger than ``max_bytes``; None otherwise. Every LRP rule is a sum over output
        units, so a rule applied piece by piece and summed is the rule on the whole layer,
        and a modified copy of the weight (W+, W-) is then made one piece at a time.
        """
        weight = self.weight
        if not self.is_dense:
            return None
        row_bytes = weight.shape[1] * weight.element_size()
        if row_bytes * weight.shape[0] <= max_bytes:
            return None
        rows = max(1, max_bytes // row_bytes)
        blocks = []
        for start in range(0, weight.shape[0], rows):
            index = slice(start, start + rows)
            bias = None if self.bias is None else self.bias[index]
            blocks.append((index, replace(self, weight=weight[index], bias=bias)))
        return blocks

    def bias_broadcast(self, bias: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Reshape a bias vector so that it broadcasts against the layer's output."""
        axis = self.extras.get("channel_axis", -1)
        if axis == -1:
            return bias
        shape = [1] * output.dim()
        shape[axis] = -1
        return bias.reshape(shape)


def _autograd_transpose(forward):
    """Transpose of an arbitrary linear forward, through autograd (one extra forward)."""

    def transpose(signal: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = torch.zeros_like(x).requires_grad_(True)
            z = forward(leaf, weight, None)
            (grad,) = torch.autograd.grad(z, leaf, signal)
        return grad

    return transpose


def _dense_weight_gradient(x: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """``sum over samples (and leading axes) of signal^T x``, the shape of a Linear weight."""
    return signal.reshape(-1, signal.shape[-1]).T.matmul(x.reshape(-1, x.shape[-1]))


def linear_op_from_module(module: nn.Module) -> LinearOp:
    """Build the LinearOp of a Linear, ConvNd, ConvTransposeNd or eval-mode BatchNorm module."""
    if isinstance(module, nn.Linear):
        return LinearOp(
            module.weight,
            module.bias,
            forward=F.linear,
            transpose=lambda s, w, x: s.matmul(w),
            description="Linear",
            extras={"output_axis": -1},
            weight_gradient=_dense_weight_gradient,
        )
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_op(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _batchnorm_op(module)
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def _conv_op(module: nn.modules.conv._ConvNd) -> LinearOp:
    if module.padding_mode != "zeros":
        dims = len(module.kernel_size)
        conv = _CONV[dims]
        pad = module._reversed_padding_repeated_twice
        mode, stride, dilation, groups = (
            module.padding_mode,
            module.stride,
            module.dilation,
            module.groups,
        )

        def forward(x, w, b):
            return conv(F.pad(x, pad, mode=mode), w, b, stride, 0, dilation, groups)

        return LinearOp(
            module.weight,
            module.bias,
            forward=forward,
            transpose=_autograd_transpose(forward),
            description=type(module).__name__,
            extras={"channel_axis": 1},
        )
    return convolution_op(
        module.weight,
        module.bias,
        transposed=module.transposed,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        output_padding=module.output_padding,
        description=type(module).__name__,
    )


def _as_tuple(value, dims: int) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,) * dims


def convolution_op(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    transposed: bool,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    output_padding=0,
    description: str = "convolution",
) -> LinearOp:
    """LinearOp of a (transposed) convolution of any dimension with zero padding."""
    dims = weight.dim() - 2
    stride, dilation = _as_tuple(stride, dims), _as_tuple(dilation, dims)
    output_padding = _as_tuple(output_padding, dims)
    if not isinstance(padding, str):
        padding = _as_tuple(padding, dims)
    if transposed:
        conv_t = _CONV_T[dims]

        def forward(x, w, b):
            return conv_t(x, w, b, stride, padding, output_padding, groups, dilation)

    else:
        conv = _CONV[dims]

        def forward(x, w, b):
            return conv(x, w, b, stride, padding, dilation, groups)

    weight_gradient = None
    if isinstance(padding, str):
        transpose = _autograd_transpose(forward)  # 'same' may pad unevenly
    else:
        out_pad = list(output_padding) if transposed else [0] * dims

        def backward(s, x, w, which: int):
            # autograd's own convolution kernel for one gradient, without a forward:
            # which=0 grad_input (the transposed convolution), 1 grad_weight.
            mask = [which == 0, which == 1, False]
            return torch.ops.aten.convolution_backward(
                s,
                x,
                w,
                None,
                list(stride),
                list(padding),
                list(dilation),
                transposed,
                out_pad,
                groups,
                mask,
            )[which]

        def transpose(s, w, x):
            return backward(s, x, w, 0)

        def weight_gradient(x, s):
            # sums of patch(x) * s over positions; the weight is read for its shape only
            return backward(s, x, weight.detach().to(x.dtype), 1)

    return LinearOp(
        weight,
        bias,
        forward=forward,
        transpose=transpose,
        description=description,
        extras={"channel_axis": 1, "groups": groups, "transposed": transposed},
        weight_gradient=weight_gradient,
    )


_FUNCTIONAL_CONV_ARGS = ("stride", "padding", "dilation", "groups")
_FUNCTIONAL_CONV_T_ARGS = ("stride", "padding", "output_padding", "groups", "dilation")


def linear_op_from_function(function, args: tuple, kwargs: dict) -> LinearOp:
    """LinearOp of a functional call ``F.linear`` / ``F.convNd`` / ``F.conv_transposeNd`` /
    ``F.batch_norm`` (eval mode).

    ``args`` and ``kwargs`` are the call's arguments with values (the input first).
    """
    name = getattr(function, "__name__", str(function))
    if function is F.batch_norm:
        scale, shift = functional_batchnorm_scale_shift(args, kwargs)
        return batchnorm_op(scale, shift, "batch_norm")
    positional = list(args[1:])
    weight = positional.pop(0) if positional else kwargs["weight"]
    bias = positional.pop(0) if positional else kwargs.get("bias")
    if function is F.linear or name.startswith("linear"):
        return LinearOp(
            weight,
            bias,
            forward=F.linear,
            transpose=lambda s, w, x: s.matmul(w),
            description=name,
            extras={"output_axis": -1},
            weight_gradient=_dense_weight_gradient,
        )
    transposed = name.startswith("conv_transpose")
    names = _FUNCTIONAL_CONV_T_ARGS if transposed else _FUNCTIONAL_CONV_ARGS
    options = dict(zip(names, positional, strict=False))
    options.update({k: v for k, v in kwargs.items() if k in names})
    return convolution_op(weight, bias, transposed=transposed, description=name, **options)


def batchnorm_scale_shift(
    module: nn.modules.batchnorm._BatchNorm,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale`` and ``shift`` with ``bn(x) = x * scale + shift`` in eval mode."""
    if module.running_mean is None or module.running_var is None:
        raise ValueError(
            f"{type(module).__name__} has no running statistics (track_running_stats=False); "
            "it normalises with batch statistics, which is not a fixed affine map"
        )
    return affine_scale_shift(
        module.running_mean, module.running_var, module.weight, module.bias, module.eps
    )


def affine_scale_shift(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``x * scale + shift`` (Ioffe & Szegedy 2015)."""
    inv_std = torch.rsqrt(running_var + eps)
    gamma = weight if weight is not None else torch.ones_like(inv_std)
    beta = bias if bias is not None else torch.zeros_like(inv_std)
    scale = gamma * inv_std
    shift = beta - running_mean * scale
    return scale.detach(), shift.detach()


def functional_batchnorm_scale_shift(
    args: tuple, kwargs: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale, shift`` of an ``F.batch_norm(input, running_mean, running_var, weight, bias,
    training, momentum, eps)`` call (values, the input first), in eval mode."""
    names = (
        "input",
        "running_mean",
        "running_var",
        "weight",
        "bias",
        "training",
        "momentum",
        "eps",
    )
    values = {**dict(zip(names, args, strict=False)), **kwargs}
    if values.get("training", False) or values.get("running_mean") is None:
        raise ValueError(
            "a batch_norm that normalises with batch statistics (training=True or no running "
            "statistics) is not a fixed affine map"
        )
    return affine_scale_shift(
        values["running_mean"],
        values["running_var"],
        values.get("weight"),
        values.get("bias"),
        float(values.get("eps", 1e-5)),
    )


def batchnorm_op(scale: torch.Tensor, shift: torch.Tensor, description: str) -> LinearOp:
    """LinearOp of a per-channel affine map ``x * scale + shift`` on axis 1."""

    def per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.reshape([1, -1] + [1] * (x.dim() - 2))

    def forward(x, w, b):
        out = x * per_channel(w, x)
        return out if b is None else out + per_channel(b, x)

    return LinearOp(
        scale,
        shift,
        forward=forward,
        transpose=lambda s, w, x: s * per_channel(w, x),
        description=description,
        extras={"channel_axis": 1},
    )


def _batchnorm_op(module: nn.modules.batchnorm._BatchNorm) -> LinearOp:
    scale, shift = batchnorm_scale_shift(module)
    return batchnorm_op(scale, shift, type(module).__name__)
