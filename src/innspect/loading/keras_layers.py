"""Keras layers as torch's own layers: one builder per Keras layer class, each registering
``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``... under the Keras layer's name and adding
the step that calls it.

Tensors are held channels-first inside the rebuilt model wherever Keras holds them
channels-last (``TensorInfo.cf``), so that convolutions, batch norms and pooling are torch's
layers applied directly; a tensor is permuted back to Keras's layout only where the layout
matters (Flatten, Reshape, Dense on rank > 2, ...). Facts from ``../shared/KERAS.md`` and
Keras 3's source (``keras/src/layers``, ``keras/src/backend/torch/nn.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from innspect.errors import LoadingError, first_line

# Keras's backend epsilon (keras.config.epsilon()), used by Normalization.
_KERAS_EPSILON = 1e-7


@dataclass
class TensorInfo:
    """A tensor of the Keras model while the module is built."""

    slot: int  # where the forward pass keeps it
    value: Any  # an example value (batch of 1) in its stored layout, for shapes
    cf: bool = False  # stored channels-first while Keras holds it channels-last
    known: bool = True  # every non-batch size is fixed by the model's input shape

    @property
    def rank(self) -> int:
        return self.value.dim()


@dataclass
class Step:
    """One operation of the forward pass: ``fn(model, inputs)`` from slots to a slot."""

    fn: Callable[..., Any]
    inputs: list[int]
    output: int


@dataclass
class LayerSpec:
    """A Keras layer's config and where it sits."""

    name: str
    class_name: str
    config: dict[str, Any]
    path: list[str]  # layer names from the top model down (legacy weight lookup)
    keras_path: list[str]  # Keras 3 weight-file path ("layers", "dense_1", ...)


@dataclass
class Builder:
    """Builds one (sub)model: its modules, steps and tensors."""

    module: nn.Module
    file: Path
    keras_version: str
    weights: Any  # keras_files.WeightStore
    nested: Callable[..., Any]  # builds a nested model: (Builder, LayerSpec, inputs) -> T
    steps: list[Step] = field(default_factory=list)
    slots: int = 0
    _converted: dict[tuple[int, bool], TensorInfo] = field(default_factory=dict)
    softmax_slots: set[int] = field(default_factory=set)
    layer: str = ""  # the Keras layer being built
    # (layer, requested name) -> attribute: a shared layer's later calls reuse its modules
    registered: dict[tuple[str, str], str] = field(default_factory=dict)
    nested_models: dict[str, tuple[str, list[bool], list[bool]]] = field(default_factory=dict)
    # Modules are built on the meta device (shapes only, no initialisation or compute) and
    # get the file's tensors at the end: (module, {parameter or buffer name: tensor}).
    loads: list[tuple[nn.Module, dict[str, Any]]] = field(default_factory=list)
    pool: Any = None  # a concurrent.futures executor for Deferred kernels

    def load(self, module: nn.Module, **tensors: Any) -> None:
        """Give ``module``'s parameters and buffers these values once the build is done."""
        self.loads.append((module, tensors))

    def new_slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def unique(self, name: str) -> str:
        """``name`` as a free attribute of the module being built."""
        base = name.replace(".", "_") or "layer"
        attr, k = base, 0
        while hasattr(self.module, attr):
            k += 1
            attr = f"{base}_{k}"
        return attr

    def add_module(self, name: str, module: nn.Module) -> str:
        """Register ``module`` under the Keras name (made unique and valid); its attribute.
        A shared layer called again gets the module of its first call."""
        key = (self.layer, name)
        if key not in self.registered:
            self.registered[key] = self.unique(name)
            self.module.add_module(self.registered[key], module.eval())
        return self.registered[key]

    def op(
        self,
        fn: Callable[..., Any],
        inputs: Sequence[TensorInfo],
        cf: bool | None = None,
        where: LayerSpec | None = None,
    ) -> TensorInfo:
        """Add a step and run it on the example values; ``cf`` of the output defaults to the
        first input's."""
        try:
            with torch.no_grad():
                value = fn(self.module, [t.value for t in inputs])
        except Exception as error:  # noqa: BLE001 - a config torch cannot run is bad input
            what = f"layer '{where.name}' ({where.class_name})" if where else "a layer"
            raise LoadingError(
                f"{self.file}: {what} does not fit its input of shape "
                f"{[tuple(t.value.shape) for t in inputs]}: {first_line(error)}"
            ) from error
        slot = self.new_slot()
        self.steps.append(Step(fn, [t.slot for t in inputs], slot))
        if cf is None:
            cf = bool(inputs and inputs[0].cf)
        known = all(t.known for t in inputs)
        return TensorInfo(slot, value, cf and value.dim() >= 3, known)

    def want(self, t: TensorInfo, cf: bool) -> TensorInfo:
        """``t`` stored channels-first (``cf``) or in Keras's layout (each made once)."""
        if t.rank < 3 or t.cf == cf:
            return t
        key = (t.slot, cf)
        if key not in self._converted:
            r = t.rank
            dims = (0, r - 1, *range(1, r - 1)) if cf else (0, *range(2, r), 1)
            out = self.op(functools.partial(_permute, dims=dims), [t], cf=cf)
            self._converted[key] = out
        return self._converted[key]

    def channels(self, t: TensorInfo, data_format: str) -> TensorInfo:
        """``t`` with its channels on axis 1, as torch's layers take them."""
        return self.want(t, data_format == "channels_last")

    def variables(self, layer: LayerSpec, count: int) -> list[torch.Tensor]:
        arrays = self.weights.variables(layer.path, layer.keras_path, count)
        return [torch.as_tensor(np.asarray(a, dtype=np.float32), device="cpu") for a in arrays]

    def call(
        self, layer: LayerSpec, module: nn.Module, x: TensorInfo, name: str = ""
    ) -> TensorInfo:
        attr = self.add_module(name or layer.name, module)
        return self.op(functools.partial(_call, attr=attr), [x], where=layer)


# -- step functions (module-level so that models deep-copy and pickle) --------------------------
def _call(model: nn.Module, xs: list[Any], attr: str) -> Any:
    return getattr(model, attr)(xs[0])


def _call_all(model: nn.Module, xs: list[Any], attr: str) -> Any:
    return getattr(model, attr)(*xs)


def _permute(model: nn.Module, xs: list[Any], dims: tuple[int, ...]) -> Any:
    # contiguous: a channels-last tensor makes the convolution's weight gradient
    # channels-last too, which code that flattens gradients with view() cannot take
    return torch.permute(xs[0], dims).contiguous()


def _getitem(model: nn.Module, xs: list[Any], index: Any) -> Any:
    return xs[0][index]


def _flatten(model: nn.Module, xs: list[Any]) -> Any:
    return torch.flatten(xs[0], 1)


def _reshape(model: nn.Module, xs: list[Any], shape: tuple[int, ...]) -> Any:
    return torch.reshape(xs[0], shape)


def _affine(model: nn.Module, xs: list[Any], scale: float, offset: float) -> Any:
    y = xs[0] * scale if scale != 1.0 else xs[0]
    return y + offset if offset != 0.0 else y


def _hard_sigmoid_tf2(model: nn.Module, xs: list[Any]) -> Any:
    # tf.keras 2.x: clip(0.2 x + 0.5, 0, 1) (Keras 3 uses relu6(x + 3) / 6)
    return torch.clamp(xs[0] * 0.2 + 0.5, 0.0, 1.0)


def _reduce(model: nn.Module, xs: list[Any], how: str) -> Any:
    out = xs[0]
    for x in xs[1:]:
        if how == "add" or how == "average":
            out = out + x
        elif how == "multiply":
            out = out * x
        elif how == "maximum":
            out = torch.maximum(out, x)
        else:
            out = torch.minimum(out, x)
    return out / len(xs) if how == "average" else out


def _subtract(model: nn.Module, xs: list[Any]) -> Any:
    return xs[0] - xs[1]


def _cat(model: nn.Module, xs: list[Any], dim: int) -> Any:
    return torch.cat(xs, dim=dim)


def _mean(model: nn.Module, xs: list[Any], dims: tuple[int, ...], keep: bool) -> Any:
    return torch.mean(xs[0], dim=dims, keepdim=keep)


def _amax(model: nn.Module, xs: list[Any], dims: tuple[int, ...], keep: bool) -> Any:
    return torch.amax(xs[0], dim=dims, keepdim=keep)


def _repeat_vector(model: nn.Module, xs: list[Any], n: int) -> Any:
    return torch.unsqueeze(xs[0], 1).repeat(1, n, 1)


def _repeat_axes(model: nn.Module, xs: list[Any], sizes: tuple[int, ...]) -> Any:
    out = xs[0]
    for i, size in enumerate(sizes):
        if size != 1:
            out = torch.repeat_interleave(out, size, dim=2 + i)
    return out


def _dot(model: nn.Module, xs: list[Any], axes: tuple[int, int], normalize: bool) -> Any:
    a, b = xs
    if normalize:
        a = F.normalize(a, dim=axes[0])
        b = F.normalize(b, dim=axes[1])
    if a.dim() == 2 and b.dim() == 2:
        return torch.sum(a * b, dim=1, keepdim=True)
    # Keras's batch_dot: the batch axis kept, a's other axes then b's other axes.
    a = torch.movedim(a, axes[0], -1)
    b = torch.movedim(b, axes[1], 1)
    if a.dim() == 3 and b.dim() == 3:
        return torch.matmul(a, b)
    rows, cols = a.shape[1:-1], b.shape[2:]
    product = torch.matmul(a.reshape(a.shape[0], -1, a.shape[-1]), b.flatten(2))
    out = product.reshape(a.shape[0], *rows, *cols)
    return out if out.dim() >= 2 else out.unsqueeze(1)


class Affine(nn.Module):
    """``x * scale + offset`` with constant tensors (Rescaling, Normalization)."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


def _affine_module(b: Builder, scale: torch.Tensor, offset: torch.Tensor) -> Affine:
    module = Affine(torch.empty(scale.shape), torch.empty(offset.shape))  # on the build device
    b.load(module, scale=scale, offset=offset)
    return module


# -- helpers -----------------------------------------------------------------------------------
def _tuple(value: Any, n: int, what: str, layer: LayerSpec) -> tuple[int, ...]:
    if isinstance(value, int | float):
        return (int(value),) * n
    items = tuple(int(v) for v in value)
    if len(items) == 1 and n > 1:
        items = items * n
    if len(items) != n:
        raise LoadingError(f"layer '{layer.name}': {what} {value} is not {n} numbers")
    return items


def _format(layer: LayerSpec) -> str:
    return layer.config.get("data_format") or "channels_last"


def _unsupported(layer: LayerSpec, file: Path, what: str) -> LoadingError:
    return LoadingError(
        f"{file}: layer '{layer.name}' ({layer.class_name}) uses {what}, which innspect's Keras "
        "loader does not support"
    )


def _same_padding(
    sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilation: Sequence[int]
) -> list[tuple[int, int]]:
    """Keras/TensorFlow 'same' padding per axis: the odd pixel goes at the end."""
    pads = []
    for n, k, s, d in zip(sizes, kernel, strides, dilation, strict=True):
        effective = (k - 1) * d + 1
        total = max((math.ceil(n / s) - 1) * s + effective - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _effective(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    return tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True))


def _torch_pad(pads: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """F.pad's argument (last axis first) for per-axis (before, after) pairs."""
    return tuple(p for pair in reversed(pads) for p in pair)


def _spatial_pads(b: Builder, layer: LayerSpec, x: TensorInfo, kernel, strides, dilation):
    padding = str(layer.config.get("padding", "valid")).lower()
    sizes = tuple(x.value.shape[2:])
    if padding == "valid":
        return [(0, 0)] * len(sizes)
    if padding in ("same", "causal") and not x.known and any(s > 1 for s in strides):
        raise LoadingError(
            f"{b.file}: layer '{layer.name}' ({layer.class_name}) pads {padding!r} with strides "
            f"{tuple(strides)} on an input of unknown size; save the model with a fixed input "
            "shape (keras.Input(shape=(...)) without None)"
        )
    if padding == "same":
        return _same_padding(sizes, kernel, strides, dilation)
    if padding == "causal" and len(sizes) == 1:
        return [((kernel[0] - 1) * dilation[0], 0)]
    raise _unsupported(layer, b.file, f"padding={padding!r}")


def _torch_padding(
    pads: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[int],
    effective: Sequence[int],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[slice, ...] | None]:
    """Torch's symmetric ``padding=`` for Keras's (before, after) pads: (padding, strides,
    the output slice or None).

    On an axis padded unevenly, the layer pads ``max(before, after)`` on both sides with
    stride 1, and the slice keeps Keras's outputs (every ``stride``-th from the first whose
    window starts ``before`` pixels early). The padding stays inside the layer, so that rules
    which depend on it (LRP's flat and w^2 rules normalise over the pixels inside the image,
    max pooling pads with -inf, average pooling leaves padding out of the mean) see Keras's
    layer, not a padded input.
    """
    padding, torch_strides, index, sliced = [], [], [slice(None), slice(None)], False
    for (before, after), s, n, k in zip(pads, strides, sizes, effective, strict=True):
        if before == after:
            padding.append(before)
            torch_strides.append(s)
            index.append(slice(None))
            continue
        sliced = True
        pad = max(before, after)
        start = pad - before
        padding.append(pad)
        torch_strides.append(1)
        if s == 1:  # the extra outputs at either end, whatever the input's size
            index.append(slice(start, -(pad - after) or None))
        else:
            count = (n + before + after - k) // s + 1
            index.append(slice(start, start + (count - 1) * s + 1, s))
    return tuple(padding), tuple(torch_strides), (tuple(index) if sliced else None)


def _sliced(b: Builder, layer: LayerSpec, out: TensorInfo, index: tuple | None) -> TensorInfo:
    if index is None:
        return out
    return b.op(functools.partial(_getitem, index=index), [out], where=layer)


# -- activations -------------------------------------------------------------------------------
def _activation_name(value: Any) -> str:
    if isinstance(value, dict):  # Keras 3 may serialise a built-in as {"config": "relu", ...}
        value = value.get("config", value.get("class_name"))
        if isinstance(value, dict):
            value = value.get("name")
    return str(value or "linear").lower()


def activation(
    b: Builder, layer: LayerSpec, x: TensorInfo, value: Any, name: str = ""
) -> TensorInfo:
    """Apply Keras activation ``value`` (a name) to ``x`` as a module named ``name``."""
    act = _activation_name(value)
    if act in ("linear", "none"):
        return x
    name = name or f"{layer.name}_{act}"
    if act == "hard_sigmoid" and not b.keras_version.startswith("3"):
        return b.op(_hard_sigmoid_tf2, [x], where=layer)
    modules: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "hard_sigmoid": nn.Hardsigmoid,
        "softplus": nn.Softplus,
        "softsign": nn.Softsign,
        "swish": nn.SiLU,
        "silu": nn.SiLU,
        "gelu": nn.GELU,  # Keras's default approximate=False
        "mish": nn.Mish,
        "leaky_relu": functools.partial(nn.LeakyReLU, 0.2),  # keras.activations default
        "softmax": functools.partial(nn.Softmax, dim=-1),
        "log_softmax": functools.partial(nn.LogSoftmax, dim=-1),
    }
    if act not in modules:
        raise _unsupported(layer, b.file, f"activation {act!r}")
    if act in ("softmax", "log_softmax"):
        x = b.want(x, False)  # over Keras's last axis
    out = b.call(layer, modules[act](), x, name)
    if act == "softmax":
        b.softmax_slots.add(out.slot)
    return out


def _activation_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    return activation(b, layer, xs[0], layer.config.get("activation"), layer.name)


def _relu_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    c = layer.config
    max_value = c.get("max_value")
    slope = float(c.get("negative_slope", 0.0) or 0.0)
    threshold = float(c.get("threshold", 0.0) or 0.0)
    if threshold == 0.0 and slope == 0.0 and max_value is None:
        module: nn.Module = nn.ReLU()
    elif threshold == 0.0 and slope == 0.0 and float(max_value) == 6.0:
        module = nn.ReLU6()
    elif threshold == 0.0 and max_value is None:
        module = nn.LeakyReLU(slope)
    elif threshold == 0.0 and slope == 0.0:
        module = nn.Hardtanh(0.0, float(max_value))
    elif slope == 0.0:
        # Keras: where(x > threshold, x, 0), then clip to [0, max_value] when one is given
        # (keras/src/activations/activations.py, ReLU.static_call): torch's Threshold.
        module = nn.Threshold(threshold, 0.0)
        if max_value is not None:
            module = nn.Sequential(module, nn.Hardtanh(0.0, float(max_value)))
    else:
        raise _unsupported(layer, b.file, "a ReLU with both a threshold and a negative slope")
    return b.call(layer, module, xs[0])


def _leaky_relu_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    c = layer.config
    slope = c.get("negative_slope", c.get("alpha", 0.3))  # Keras default 0.3 (torch 0.01)
    return b.call(layer, nn.LeakyReLU(float(slope)), xs[0])


def _elu_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    return b.call(layer, nn.ELU(float(layer.config.get("alpha", 1.0))), xs[0])


def _thresholded_relu_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    return b.call(layer, nn.Threshold(float(layer.config.get("theta", 1.0)), 0.0), xs[0])


def _softmax_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    axis = layer.config.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise _unsupported(layer, b.file, f"softmax over axes {axis}")
        axis = axis[0]
    x = b.want(xs[0], False)
    out = b.call(layer, nn.Softmax(dim=int(axis)), x)
    if int(axis) in (-1, x.rank - 1):
        b.softmax_slots.add(out.slot)
    return out


def _prelu_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    (alpha,) = b.variables(layer, 1)
    x = xs[0]
    if alpha.numel() == 1:
        module = nn.PReLU(1)
    elif alpha.dim() < 2 or all(s == 1 for s in alpha.shape[:-1]):
        # One slope per channel (shared_axes over every other axis): torch's PReLU, whose
        # slopes are per channel on axis 1.
        x = b.want(x, True)
        module = nn.PReLU(alpha.shape[-1])
    else:
        return _prelu_per_position(b, layer, x, alpha)
    b.load(module, weight=alpha.reshape(-1).contiguous())
    return b.call(layer, module, x)


def _prelu_per_position(
    b: Builder, layer: LayerSpec, x: TensorInfo, alpha: torch.Tensor
) -> TensorInfo:
    """Keras's default PReLU (``shared_axes=None``): a slope per position, ``alpha`` shaped
    as the input without its batch axis (1 on shared axes). Torch's PReLU takes one slope per
    feature of a flat (N, features) input, so the input is flattened in Keras's layout, goes
    through ``nn.PReLU(features)`` and gets its shape back: torch's own layers only."""
    x = b.want(x, False)
    shape = tuple(x.value.shape[1:])
    if not x.known or alpha.dim() != len(shape):
        raise _unsupported(layer, b.file, "a PReLU slope per position on an input of unknown size")
    slopes = alpha.expand(shape).reshape(-1).contiguous()  # shared axes repeated
    flat = b.op(_flatten, [x], cf=False, where=layer)
    module = nn.PReLU(slopes.numel())
    b.load(module, weight=slopes)
    out = b.call(layer, module, flat)
    return b.op(functools.partial(_reshape, shape=(-1, *shape)), [out], cf=False, where=layer)


# -- core layers -------------------------------------------------------------------------------
def _identity_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    # Dropout, noise and regularisation layers do nothing at inference.
    module = nn.Dropout(float(layer.config.get("rate", 0.0) or 0.0))
    if layer.class_name != "Dropout":
        module = nn.Identity()
    return b.call(layer, module, xs[0])


def _dense(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    c = layer.config
    use_bias = c.get("use_bias", True)
    weights = b.variables(layer, 2 if use_bias else 1)
    kernel = weights[0]
    x = b.want(xs[0], False)  # Dense acts on Keras's last axis
    module = nn.Linear(kernel.shape[0], kernel.shape[1], bias=use_bias)
    # The transposed view of Keras's (in, out) kernel, not a copy: F.linear multiplies by it
    # as it is, and transposing VGG16's first dense kernel (102M weights) would take several
    # times longer than reading the whole file (benchmarks/bench_keras.py).
    b.load(module, weight=kernel.T, **({"bias": weights[1]} if use_bias else {}))
    out = b.call(layer, module, x)
    return activation(b, layer, out, c.get("activation"))


class Deferred:
    """A convolution kernel moved to torch's layout by a transposing copy on a worker thread,
    while the rest of the file is read (NumPy releases the GIL while it copies, and is about
    twice as fast as torch here). Contiguous: a convolution would copy a strided weight on
    every call."""

    def __init__(self, kernel: torch.Tensor, order: tuple[int, ...], pool: Any) -> None:
        source = kernel.numpy()
        self.shape = torch.Size(source.shape[i] for i in order)
        self.future = pool.submit(np.ascontiguousarray, source.transpose(order))

    def result(self) -> torch.Tensor:
        return torch.from_numpy(self.future.result())


def _conv_weights(b: Builder, layer: LayerSpec, rank: int, count: int) -> list[Any]:
    weights: list[Any] = b.variables(layer, count)
    # (k..., in, out) -> (out, in, k...); transposed convs: (k..., out, in) -> (in, out, k...)
    weights[0] = Deferred(weights[0], (rank + 1, rank, *range(rank)), b.pool)
    return weights


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSES = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _conv(rank: int) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        c = layer.config
        fmt = _format(layer)
        x = b.channels(xs[0], fmt)
        use_bias = c.get("use_bias", True)
        weights = _conv_weights(b, layer, rank, 2 if use_bias else 1)
        kernel = tuple(weights[0].shape[2:])
        strides = _tuple(c.get("strides", 1), rank, "strides", layer)
        dilation = _tuple(c.get("dilation_rate", 1), rank, "dilation_rate", layer)
        groups = int(c.get("groups", 1) or 1)
        pads = _spatial_pads(b, layer, x, kernel, strides, dilation)
        padding, torch_strides, index = _torch_padding(
            pads, strides, x.value.shape[2:], _effective(kernel, dilation)
        )
        module = _CONVS[rank](
            weights[0].shape[1] * groups,
            weights[0].shape[0],
            kernel,
            torch_strides,
            padding,
            dilation,
            groups,
            bias=use_bias,
        )
        b.load(module, weight=weights[0], **({"bias": weights[1]} if use_bias else {}))
        out = _sliced(b, layer, b.call(layer, module, x), index)
        return activation(b, layer, out, c.get("activation"))

    return build


def _depthwise_kernel(kernel: torch.Tensor, rank: int) -> torch.Tensor:
    # (k..., in, multiplier) -> (in * multiplier, 1, k...): output channel c * m + j is input
    # channel c's j-th filter in Keras and group c's j-th output in torch.
    flat = kernel.reshape(*kernel.shape[:rank], -1)
    return flat.permute(rank, *range(rank)).unsqueeze(1).contiguous()


def _depthwise(rank: int, separable: bool) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        c = layer.config
        fmt = _format(layer)
        x = b.channels(xs[0], fmt)
        use_bias = c.get("use_bias", True)
        count = (2 if separable else 1) + (1 if use_bias else 0)
        weights = b.variables(layer, count)
        depthwise = _depthwise_kernel(weights[0], rank)
        channels = weights[0].shape[rank]
        kernel = tuple(depthwise.shape[2:])
        strides = _tuple(c.get("strides", 1), rank, "strides", layer)
        dilation = _tuple(c.get("dilation_rate", 1), rank, "dilation_rate", layer)
        pads = _spatial_pads(b, layer, x, kernel, strides, dilation)
        padding, torch_strides, index = _torch_padding(
            pads, strides, x.value.shape[2:], _effective(kernel, dilation)
        )
        depth = _CONVS[rank](
            channels,
            depthwise.shape[0],
            kernel,
            torch_strides,
            padding,
            dilation,
            groups=channels,
            bias=use_bias and not separable,
        )
        b.load(
            depth, weight=depthwise, **({"bias": weights[1]} if use_bias and not separable else {})
        )
        if not separable:
            out = _sliced(b, layer, b.call(layer, depth, x), index)
        else:
            x = _sliced(b, layer, b.call(layer, depth, x, f"{layer.name}_depthwise"), index)
            pointwise = weights[1].permute(rank + 1, rank, *range(rank)).contiguous()
            point = _CONVS[rank](pointwise.shape[1], pointwise.shape[0], 1, bias=use_bias)
            b.load(point, weight=pointwise, **({"bias": weights[2]} if use_bias else {}))
            out = b.call(layer, point, x)
        return activation(b, layer, out, c.get("activation"))

    return build


def _conv_transpose(rank: int) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        c = layer.config
        if c.get("output_padding") is not None:
            raise _unsupported(layer, b.file, "output_padding")
        x = b.channels(xs[0], _format(layer))
        use_bias = c.get("use_bias", True)
        weights = _conv_weights(b, layer, rank, 2 if use_bias else 1)
        kernel = tuple(weights[0].shape[2:])
        strides = _tuple(c.get("strides", 1), rank, "strides", layer)
        dilation = _tuple(c.get("dilation_rate", 1), rank, "dilation_rate", layer)
        padding = str(c.get("padding", "valid")).lower()
        pads, extra = [0] * rank, [0] * rank
        crop_end = [0] * rank
        if padding == "same":
            # The transpose of a 'same' convolution from n * s to n pixels: Keras crops the
            # full output by the convolution's padding, the odd pixel at the end.
            for i, (k, s, d) in enumerate(zip(kernel, strides, dilation, strict=True)):
                total = max((k - 1) * d + 1 - s, 0)
                pads[i] = total // 2
                crop_end[i] = total - 2 * (total // 2)
                extra[i] = max(s - ((k - 1) * d + 1), 0)
        elif padding != "valid":
            raise _unsupported(layer, b.file, f"padding={padding!r}")
        module = _CONV_TRANSPOSES[rank](
            weights[0].shape[0],
            weights[0].shape[1],
            kernel,
            strides,
            tuple(pads),
            tuple(extra),
            bias=use_bias,
            dilation=dilation,
        )
        b.load(module, weight=weights[0], **({"bias": weights[1]} if use_bias else {}))
        out = b.call(layer, module, x)
        if any(crop_end):
            index = (slice(None), slice(None)) + tuple(slice(0, -e or None) for e in crop_end)
            out = b.op(functools.partial(_getitem, index=index), [out], where=layer)
        return activation(b, layer, out, c.get("activation"))

    return build


_MAX_POOLS = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def _pool(rank: int, kind: str) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        c = layer.config
        x = b.channels(xs[0], _format(layer))
        size = _tuple(c.get("pool_size", 2), rank, "pool_size", layer)
        strides = _tuple(c.get("strides") or size, rank, "strides", layer)
        pads = _spatial_pads(b, layer, x, size, strides, (1,) * rank)
        padding, torch_strides, index = _torch_padding(pads, strides, x.value.shape[2:], size)
        if kind == "max":
            # torch pads max pooling with -inf, as Keras does.
            module: nn.Module = _MAX_POOLS[rank](size, torch_strides, padding)
        else:
            # Keras leaves 'same' padding out of the mean.
            module = _AVG_POOLS[rank](size, torch_strides, padding, count_include_pad=False)
        return _sliced(b, layer, b.call(layer, module, x), index)

    return build


def _global_pool(rank: int, kind: str) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        x = b.channels(xs[0], _format(layer))
        keep = bool(layer.config.get("keepdims", False))
        fn = _mean if kind == "average" else _amax
        dims = tuple(range(2, 2 + rank))
        cf = keep and _format(layer) == "channels_last"
        return b.op(functools.partial(fn, dims=dims, keep=keep), [x], cf=cf, where=layer)

    return build


def _batch_norm(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    c = layer.config
    x = xs[0]
    axis = c.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise _unsupported(layer, b.file, f"batch normalization over axes {axis}")
        axis = axis[0]
    axis = int(axis) % x.rank
    if x.rank >= 3 and axis == x.rank - 1:
        x = b.want(x, True)
    elif axis == 1:
        x = b.want(x, False)
    else:
        raise _unsupported(layer, b.file, f"axis={c.get('axis')} (channels on another axis)")
    center, scale = c.get("center", True), c.get("scale", True)
    weights = b.variables(layer, 2 + int(center) + int(scale))
    gamma = weights.pop(0) if scale else None
    beta = weights.pop(0) if center else None
    mean, variance = weights
    module = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[max(x.rank - 2, 0)](
        mean.numel(), eps=float(c.get("epsilon", 1e-3))
    )
    b.load(
        module,
        weight=gamma if gamma is not None else torch.ones_like(mean),
        bias=beta if beta is not None else torch.zeros_like(mean),
        running_mean=mean,
        running_var=variance,
        num_batches_tracked=torch.zeros((), dtype=torch.long, device="cpu"),
    )
    return b.call(layer, module, x)


def _layer_norm(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    c = layer.config
    if c.get("rms_scaling"):
        raise _unsupported(layer, b.file, "rms_scaling")
    x = b.want(xs[0], False)
    axes = c.get("axis", -1)
    axes = sorted(int(a) % x.rank for a in (axes if isinstance(axes, list) else [axes]))
    if axes != list(range(x.rank - len(axes), x.rank)):
        raise _unsupported(layer, b.file, f"axis={c.get('axis')} (not the last axes)")
    shape = tuple(x.value.shape[axes[0] :])
    center, scale = c.get("center", True), c.get("scale", True)
    weights = b.variables(layer, int(center) + int(scale))
    module = nn.LayerNorm(shape, eps=float(c.get("epsilon", 1e-3)))
    ones = torch.ones(shape, device="cpu")
    b.load(
        module,
        weight=weights.pop(0).reshape(shape) if scale else ones,
        bias=weights.pop(0).reshape(shape) if center else torch.zeros_like(ones),
    )
    return b.call(layer, module, x)


def _flatten_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    x = b.want(xs[0], False)
    if layer.config.get("data_format") == "channels_first" and x.rank >= 3:
        # Keras flattens channels-first data in channels-last order (weights stay portable).
        x = b.op(functools.partial(_permute, dims=(0, *range(2, x.rank), 1)), [x])
    return b.op(_flatten, [x], cf=False, where=layer)


def _reshape_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    x = b.want(xs[0], False)
    target = tuple(int(v) for v in layer.config["target_shape"])
    if not x.known and -1 in target:
        raise _unsupported(layer, b.file, "target_shape with -1 on an input of unknown size")
    if not x.known:
        return b.op(functools.partial(_reshape, shape=(-1, *target)), [x], cf=False, where=layer)
    try:
        shape = tuple(x.value.reshape(x.value.shape[0], *target).shape[1:])
    except RuntimeError as error:
        raise LoadingError(
            f"{b.file}: layer '{layer.name}' (Reshape) cannot reshape "
            f"{tuple(x.value.shape[1:])} to {target}"
        ) from error
    return b.op(functools.partial(_reshape, shape=(-1, *shape)), [x], cf=False, where=layer)


def _permute_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    x = b.want(xs[0], False)
    dims = (0, *(int(d) for d in layer.config["dims"]))
    return b.op(functools.partial(_permute, dims=dims), [x], cf=False, where=layer)


def _repeat_vector_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    fn = functools.partial(_repeat_vector, n=int(layer.config["n"]))
    return b.op(fn, [b.want(xs[0], False)], cf=False, where=layer)


def _pairs(value: Any, rank: int, layer: LayerSpec) -> list[tuple[int, int]]:
    if isinstance(value, int):
        return [(value, value)] * rank
    items = list(value)
    if rank == 1 and len(items) == 2 and all(isinstance(v, int) for v in items):
        return [(items[0], items[1])]
    pairs = [(v, v) if isinstance(v, int) else (int(v[0]), int(v[1])) for v in items]
    if len(pairs) != rank:
        raise LoadingError(f"layer '{layer.name}': {value} is not {rank} (before, after) pairs")
    return pairs


_CONSTANT_PADS = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}


def _zero_padding(rank: int) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        x = b.channels(xs[0], _format(layer))
        pads = _pairs(layer.config.get("padding", 1), rank, layer)
        return b.call(layer, _CONSTANT_PADS[rank](_torch_pad(pads), 0.0), x)

    return build


def _cropping(rank: int) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        x = b.channels(xs[0], _format(layer))
        crops = _pairs(layer.config.get("cropping", 1), rank, layer)
        index = (slice(None), slice(None)) + tuple(slice(a, -e or None) for a, e in crops)
        return b.op(functools.partial(_getitem, index=index), [x], where=layer)

    return build


def _upsampling(rank: int) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        c = layer.config
        x = b.channels(xs[0], _format(layer))
        sizes = _tuple(c.get("size", 2), rank, "size", layer)
        interpolation = str(c.get("interpolation", "nearest")).lower()
        if interpolation == "nearest":
            fn = functools.partial(_repeat_axes, sizes=sizes)
            return b.op(fn, [x], where=layer)
        if interpolation == "bilinear" and rank == 2:
            module = nn.Upsample(scale_factor=sizes, mode="bilinear", align_corners=False)
            return b.call(layer, module, x)
        raise _unsupported(layer, b.file, f"interpolation={interpolation!r}")

    return build


def _merge(how: str) -> Callable[..., TensorInfo]:
    def build(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
        if len(xs) < 2 or (how == "subtract" and len(xs) != 2):
            raise LoadingError(f"{b.file}: layer '{layer.name}' has {len(xs)} inputs")
        xs = _same_layout(b, xs)
        fn = _subtract if how == "subtract" else functools.partial(_reduce, how=how)
        return b.op(fn, xs, where=layer)

    return build


def _same_layout(b: Builder, xs: list[TensorInfo]) -> list[TensorInfo]:
    if len({(t.rank, t.cf) for t in xs}) == 1:
        return xs
    return [b.want(t, False) for t in xs]


def _concatenate(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    xs = _same_layout(b, xs)
    rank = xs[0].rank
    axis = int(layer.config.get("axis", -1)) % rank
    if xs[0].cf:
        # stored dim i holds Keras dim (0, r-1, 1, ..., r-2)[i]
        axis = (0, rank - 1, *range(1, rank - 1)).index(axis)
    return b.op(functools.partial(_cat, dim=axis), xs, where=layer)


def _dot_layer(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    xs = [b.want(t, False) for t in xs]
    axes = layer.config.get("axes", -1)
    axes = (axes, axes) if isinstance(axes, int) else tuple(axes)
    if len(xs) != 2:
        raise _unsupported(layer, b.file, f"a dot product of {len(xs)} inputs")
    axes = (int(axes[0]) % xs[0].rank, int(axes[1]) % xs[1].rank)
    fn = functools.partial(_dot, axes=axes, normalize=bool(layer.config.get("normalize")))
    return b.op(fn, xs, cf=False, where=layer)


def _embedding(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    c = layer.config
    if c.get("mask_zero"):
        raise _unsupported(layer, b.file, "mask_zero=True (masking changes later layers)")
    (table,) = b.variables(layer, 1)
    module = nn.Embedding(table.shape[0], table.shape[1])
    b.load(module, weight=table)
    return b.call(layer, module, b.want(xs[0], False))


def _broadcast(value: np.ndarray, rank: int, axes: list[int]) -> torch.Tensor:
    shape = [1] * rank
    for i, a in enumerate(axes):
        shape[a] = value.shape[i] if value.ndim == len(axes) else -1
    return torch.as_tensor(np.asarray(value, dtype=np.float32), device="cpu").reshape(shape)


def _rescaling(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    c = layer.config
    scale, offset = c.get("scale", 1.0), c.get("offset", 0.0)
    if isinstance(scale, int | float) and isinstance(offset, int | float):
        fn = functools.partial(_affine, scale=float(scale), offset=float(offset))
        return b.op(fn, xs[:1], where=layer)
    x = b.want(xs[0], False)
    s = torch.as_tensor(np.asarray(scale, dtype=np.float32), device="cpu")
    o = torch.as_tensor(np.asarray(offset, dtype=np.float32), device="cpu")
    return b.call(layer, _affine_module(b, s, o), x)


def _normalization(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    c = layer.config
    x = b.want(xs[0], False)
    axes = c.get("axis", -1)
    axes = [] if axes is None else (axes if isinstance(axes, list) else [axes])
    axes = [int(a) % x.rank for a in axes]
    if c.get("mean") is not None and c.get("variance") is not None:
        mean, variance = np.asarray(c["mean"]), np.asarray(c["variance"])
    else:
        mean, variance, _count = (v.numpy() for v in b.variables(layer, 3))
    mean_t = _broadcast(mean, x.rank, axes)
    std = torch.clamp(torch.sqrt(_broadcast(variance, x.rank, axes)), min=_KERAS_EPSILON)
    if c.get("invert"):
        module = _affine_module(b, std, mean_t)
    else:
        module = _affine_module(b, 1.0 / std, -mean_t / std)
    return b.call(layer, module, x)


def _nested(b: Builder, layer: LayerSpec, xs: list[TensorInfo]) -> TensorInfo:
    return b.nested(b, layer, xs)


LayerBuilder = Callable[[Builder, LayerSpec, list[TensorInfo]], Any]

LAYERS: dict[str, LayerBuilder] = {
    "Dense": _dense,
    "Activation": _activation_layer,
    "ReLU": _relu_layer,
    "LeakyReLU": _leaky_relu_layer,
    "PReLU": _prelu_layer,
    "ELU": _elu_layer,
    "ThresholdedReLU": _thresholded_relu_layer,
    "Softmax": _softmax_layer,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "Flatten": _flatten_layer,
    "Reshape": _reshape_layer,
    "Permute": _permute_layer,
    "RepeatVector": _repeat_vector_layer,
    "Add": _merge("add"),
    "Subtract": _merge("subtract"),
    "Multiply": _merge("multiply"),
    "Average": _merge("average"),
    "Maximum": _merge("maximum"),
    "Minimum": _merge("minimum"),
    "Concatenate": _concatenate,
    "Dot": _dot_layer,
    "Embedding": _embedding,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
    "Sequential": _nested,
    "Functional": _nested,
    "Model": _nested,
}
for _name in (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
):
    LAYERS[_name] = _identity_layer
for _rank in (1, 2, 3):
    LAYERS[f"Conv{_rank}D"] = _conv(_rank)
    LAYERS[f"Conv{_rank}DTranspose"] = _conv_transpose(_rank)
    LAYERS[f"MaxPooling{_rank}D"] = _pool(_rank, "max")
    LAYERS[f"AveragePooling{_rank}D"] = _pool(_rank, "average")
    LAYERS[f"GlobalMaxPooling{_rank}D"] = _global_pool(_rank, "max")
    LAYERS[f"GlobalAveragePooling{_rank}D"] = _global_pool(_rank, "average")
    LAYERS[f"ZeroPadding{_rank}D"] = _zero_padding(_rank)
    LAYERS[f"Cropping{_rank}D"] = _cropping(_rank)
    LAYERS[f"UpSampling{_rank}D"] = _upsampling(_rank)
for _rank in (1, 2):
    LAYERS[f"DepthwiseConv{_rank}D"] = _depthwise(_rank, separable=False)
    LAYERS[f"SeparableConv{_rank}D"] = _depthwise(_rank, separable=True)
# tf.keras 2's aliases
for _alias, _target in (
    ("Convolution1D", "Conv1D"),
    ("Convolution2D", "Conv2D"),
    ("Convolution3D", "Conv3D"),
    ("MaxPool1D", "MaxPooling1D"),
    ("MaxPool2D", "MaxPooling2D"),
    ("MaxPool3D", "MaxPooling3D"),
    ("AvgPool1D", "AveragePooling1D"),
    ("AvgPool2D", "AveragePooling2D"),
    ("AvgPool3D", "AveragePooling3D"),
    ("GlobalMaxPool1D", "GlobalMaxPooling1D"),
    ("GlobalMaxPool2D", "GlobalMaxPooling2D"),
    ("GlobalAvgPool1D", "GlobalAveragePooling1D"),
    ("GlobalAvgPool2D", "GlobalAveragePooling2D"),
    ("SeparableConvolution2D", "SeparableConv2D"),
    ("Conv2DTranspose", "Conv2DTranspose"),
):
    LAYERS[_alias] = LAYERS[_target]
