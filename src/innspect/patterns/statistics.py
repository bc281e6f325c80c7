"""PatternComputer: the signal patterns of PatternNet and PatternAttribution.

Kindermans et al. 2018, "Learning how to explain neural networks: PatternNet and
PatternAttribution" (ICLR, arXiv 1705.05598), section 4, and iNNvestigate 1.0.9's
``tools/pattern.py``. For every linear layer (Linear on any rank, Conv1d/2d/3d,
ConvTranspose, functional calls, inside residual or concatenating blocks alike):

- ``y = x W`` without bias, ``x`` the layer input (for a convolution, the receptive-field
  patch at every output position: patches times positions count as samples);
- the mask of active output neurons from the layer's *activated* output (the activation
  that follows it, else the layer's own output): all ones for ``"linear"``, ``y_act > 0``
  for ``"relu"`` (= ``"relu.positive"``), ``y_act <= 0`` for ``"relu.negative"``;
- ``E[x]`` and ``E[x y]`` over active samples per output neuron, ``E[y]`` over all samples;
- ``A = cov(x, y) / diag(W^T cov(x, y))`` with ``cov = E[xy] - E[x] E[y]`` and the safe
  division ``a / (b + (b == 0))``, in the weight's shape.

The statistics are sums and counts in float64 on the engine's statistics pass
(:func:`innspect.engine.collect`), so batches, shards and resumed runs merge exactly. The
sums over positions of ``patch(x) * (y * mask)`` and ``patch(x) * mask`` are the layer's
weight gradients for the output signals ``y * mask`` and ``mask`` (``LinearOp.
weight_gradient``: one ``convolution_backward`` each), so patches are never unfolded.

``"dummy"`` (a test aid in iNNvestigate) gives each layer its own weight as pattern: PatternNet
then is the gradient with ReLU masks, started from the output value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from innspect.engine.reducers import Observation, Reducer
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.linear_ops import LinearOp
from innspect.graph.ops import Kind

PATTERN_TYPES = ("linear", "relu", "relu.positive", "relu.negative", "dummy")


_FIELDS = ("count", "count_all", "sum_x", "sum_y", "sum_xy")


# Elements per block when large sums are added to (a float32 block of 4 MiB stays in cache).
_BLOCK_ELEMENTS = 1 << 20


def safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / (b + (b == 0))``: iNNvestigate's division that leaves 0 where ``b`` is 0."""
    return a / (b + (b == 0))


def to_output_major(op: LinearOp, array: np.ndarray) -> np.ndarray:
    """A kernel-shaped array with the output neuron on axis 0, ``(out, in/groups, *kernel)``.

    Linear and ConvNd weights are already so; ConvTransposeNd weights are
    ``(in, out/groups, *kernel)``, where input channel ``i`` of group ``g`` feeds outputs
    ``g * out/groups + j``.
    """
    if not op.extras.get("transposed", False):
        return array
    groups = int(op.extras.get("groups", 1))
    n_in, per_group, kernel = array.shape[0], array.shape[1], array.shape[2:]
    grouped = array.reshape(groups, n_in // groups, per_group, *kernel).swapaxes(1, 2)
    return grouped.reshape(groups * per_group, n_in // groups, *kernel)


def from_output_major(op: LinearOp, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`to_output_major`, back to the kernel's ``shape``."""
    if not op.extras.get("transposed", False):
        return array
    groups = int(op.extras.get("groups", 1))
    n_in, per_group, kernel = shape[0], shape[1], shape[2:]
    grouped = array.reshape(groups, per_group, n_in // groups, *kernel).swapaxes(1, 2)
    return np.ascontiguousarray(grouped.reshape(shape))


def pattern_from_statistics(
    weight: np.ndarray,
    count: np.ndarray,
    count_all: np.ndarray,
    sum_x: np.ndarray,
    sum_y: np.ndarray,
    sum_xy: np.ndarray,
) -> np.ndarray:
    """The pattern ``A = cov(x, y) / diag(W^T cov(x, y))``, output neuron on axis 0.

    ``count``, ``count_all``, ``sum_y`` are per output neuron; ``weight``, ``sum_x`` and
    ``sum_xy`` are ``(out, ...)`` (see :func:`to_output_major`). Written for memory: two
    arrays of the weight's size at a time (VGG16's first dense layer has 103M weights).
    """
    view = (-1,) + (1,) * (weight.ndim - 1)
    active = (count + (count == 0)).reshape(view)
    mean_y = safe_divide(sum_y, count_all).reshape(view)
    cov = sum_xy / active  # E[xy] over active samples
    product = sum_x / active  # E[x] over active samples ...
    product *= mean_y  # ... times E[y] over all samples
    cov -= product
    del product
    rows = weight.shape[0]
    w_cov = np.einsum("ij,ij->i", weight.reshape(rows, -1), cov.reshape(rows, -1))
    cov /= (w_cov + (w_cov == 0)).reshape(view)
    return cov


class PatternStatistics(Reducer):
    """The running sums of one linear layer for its pattern (a reducer of ``collect``).

    ``op`` (the layer's LinearOp) and ``output_axis`` are set by PatternComputer; the state
    is ``count`` and ``count_all`` (per output neuron), ``sum_y`` (per output neuron),
    ``sum_x`` and ``sum_xy`` (weight's shape), all float64.
    """

    kind = "pattern"

    def __init__(
        self,
        pattern_type: str = "relu",
        activation: str | None = None,
        compute_dtype: str | None = None,
    ) -> None:
        if pattern_type not in PATTERN_TYPES:
            raise InputError(f"pattern_type must be one of {PATTERN_TYPES}, got {pattern_type!r}")
        self.pattern_type = pattern_type
        self.activation = activation
        self.compute_dtype = compute_dtype
        self.needs = (activation,) if activation and pattern_type.startswith("relu") else ()
        self.op: LinearOp | None = None
        self.output_axis = 1
        self.sums: dict[str, torch.Tensor] = {}

    def config(self) -> dict[str, Any]:
        return {
            "pattern_type": self.pattern_type,
            "activation": self.activation,
            "compute_dtype": self.compute_dtype,
        }

    def fresh(self) -> PatternStatistics:
        other = PatternStatistics(**self.config())
        other.op, other.output_axis = self.op, self.output_axis
        return other

    def _mask(self, obs: Observation, z: torch.Tensor) -> torch.Tensor:
        if self.pattern_type == "linear":
            return torch.ones_like(z)
        activated = obs.others[self.activation] if self.needs else z
        if activated.shape != z.shape:
            raise InputError(
                f"node '{obs.name}': its activation output has shape {tuple(activated.shape)}, "
                f"the layer's {tuple(z.shape)}; patterns need an element-wise activation"
            )
        # the comparison written straight into a float tensor (no bool mask, then a copy)
        mask = torch.empty_like(z)
        if self.pattern_type in ("relu", "relu.positive"):
            return torch.gt(activated, 0, out=mask)
        return torch.le(activated, 0, out=mask)

    def update(self, obs: Observation) -> None:
        op = self.op
        if op is None:
            raise InputError(
                "PatternStatistics needs its layer's LinearOp (set by PatternComputer)"
            )
        if self.pattern_type == "dummy":
            self._add("count_all", torch.tensor([float(obs.output.shape[0])]))
            return
        dtype = getattr(torch, self.compute_dtype) if self.compute_dtype else obs.output.dtype
        x = obs.inputs[0].to(dtype)
        z = obs.output.to(dtype)
        axis = self.output_axis % z.dim()
        others = [d for d in range(z.dim()) if d != axis]
        per_neuron = z.numel() // z.shape[axis]
        self._add("count_all", torch.full((z.shape[axis],), per_neuron, dtype=torch.float64))
        # y = x W without bias: the recorded output minus the bias (a fresh tensor, so the
        # masking below can run in place)
        y = z - op.bias_broadcast(op.bias.detach().to(dtype), z) if op.bias is not None else z
        self._add("sum_y", y.sum(dim=others))
        mask = self._mask(obs, z)
        self._add("count", mask.sum(dim=others))
        self._add_weight_gradient("sum_x", x, mask)
        masked = y.mul_(mask) if y is not z else y * mask
        del mask, y
        self._add_weight_gradient("sum_xy", x, masked)

    def _add_weight_gradient(self, name: str, x: torch.Tensor, signal: torch.Tensor) -> None:
        """Add ``op.weight_gradient(x, signal)`` to the float64 sum ``name``.

        A dense layer's gradient is computed and added a block of output units at a time:
        VGG16's first classifier layer has a 4096 x 25088 weight, and the whole product,
        then its float64 copy (CPU promotes mixed-dtype operands by copying), cost more than
        the convolutions' statistics.
        """
        op = self.op
        assert op is not None
        if not op.is_dense or op.weight_gradient is None:
            weight_gradient = op.weight_gradient or _autograd_weight_gradient(op)
            self._add(name, weight_gradient(x, signal))
            return
        if name not in self.sums:
            self.sums[name] = torch.zeros(op.weight.shape, dtype=torch.float64, device=x.device)
        total = self.sums[name]
        step = max(1, _BLOCK_ELEMENTS // op.weight.shape[1])
        for start in range(0, op.weight.shape[0], step):
            block = op.weight_gradient(x, signal[..., start : start + step])
            total[start : start + step].add_(block.detach().to(total.device))

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach()
        if name not in self.sums:
            self.sums[name] = value.to(torch.float64, copy=True)
            return
        # Block by block: adding float32 into float64 makes a float64 copy of the operand on
        # CPU, which for a large kernel is a fresh allocation as large as the sum.
        total = self.sums[name].view(-1)
        flat = value.to(total.device).reshape(-1)
        for start in range(0, total.numel(), _BLOCK_ELEMENTS):
            total[start : start + _BLOCK_ELEMENTS].add_(flat[start : start + _BLOCK_ELEMENTS])

    def merge(self, other: Reducer) -> PatternStatistics:
        self._check_same(other)
        assert isinstance(other, PatternStatistics)
        for name, value in other.sums.items():
            self._add(name, value)
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in self.sums.items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.sums = {
            k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in state.items()
        }

    def result(self) -> dict[str, np.ndarray]:
        return self.state()

    def pattern(self, weight: torch.Tensor) -> np.ndarray:
        """The layer's pattern from the statistics so far (``weight``: the layer's kernel)."""
        w = weight.detach().cpu().double().numpy()
        if self.pattern_type == "dummy":
            return w
        if "count" not in self.sums:
            raise InputError("no statistics yet: compute patterns on some data first")
        s = self.state()
        op = self.op
        assert op is not None
        pattern = pattern_from_statistics(
            to_output_major(op, w),
            s["count"],
            s["count_all"],
            to_output_major(op, s["sum_x"]),
            s["sum_y"],
            to_output_major(op, s["sum_xy"]),
        )
        return from_output_major(op, pattern, w.shape)


def _autograd_weight_gradient(op: LinearOp):
    def weight_gradient(x: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            weight = op.weight.detach().to(x.dtype).requires_grad_(True)
            (grad,) = torch.autograd.grad(op.forward(x, weight, None), weight, signal)
        return grad

    return weight_gradient


def pattern_layers(graph: ModelGraph) -> list[NodeInfo]:
    """The layers that get a pattern: every linear layer, in execution order."""
    return [i for i in graph.nodes if i.kind is Kind.LINEAR and i.depends_on_input]
