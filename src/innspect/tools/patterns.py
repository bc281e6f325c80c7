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

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.data import iter_batches, model_device_dtype, num_batches
from innspect.engine.collect import Statistics, collect
from innspect.engine.reducers import Observation, Reducer
from innspect.errors import InputError
from innspect.fileio import write_npz
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.kinds import Kind
from innspect.graph.linear_ops import LinearOp

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


class PatternComputer:
    """Compute PatternNet / PatternAttribution patterns of ``model`` on data.

    Parameters
    ----------
    model
        The model (never modified). BatchNorm after a convolution is folded first, as in
        the pattern analyzers, so patterns belong to the folded layers.
    pattern_type
        "linear", "relu" (= "relu.positive"), "relu.negative" or "dummy" (see the module
        docstring).
    compute_dtype
        dtype of the per-batch products (None: the model's, e.g. float32 on a GPU); the sums
        across batches are always float64. "float64" makes every step float64.

    ``compute(X)`` / ``compute_generator(stream)`` return ``{layer name: pattern}`` (numpy,
    the weight's shape) and can be called again to add data; ``merge`` adds another
    computer's statistics; ``save_npz`` / ``load_npz`` keep statistics and patterns.
    """

    def __init__(
        self, model: nn.Module, pattern_type: str = "linear", compute_dtype: str | None = None
    ) -> None:
        if pattern_type not in PATTERN_TYPES:
            raise InputError(f"pattern_type must be one of {PATTERN_TYPES}, got {pattern_type!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.pattern_type = pattern_type
        self.compute_dtype = compute_dtype
        self.statistics: Statistics | None = None
        self._graph: ModelGraph | None = None

    # -- the graph and its layers ---------------------------------------------------------
    def graph(self, example_input: torch.Tensor | None = None) -> ModelGraph:
        if self._graph is None:
            # A model without linear layers gets no patterns (PatternNet is then the
            # gradient's walk started from the output value), as in iNNvestigate.
            self._graph = ModelGraph(self.model, example_input, fuse_batchnorm=True)
        else:
            self._graph.refresh()  # the model may have changed since (a training step)
        return self._graph

    def _reducers(self, graph: ModelGraph) -> dict[str, dict[str, Reducer]]:
        reducers: dict[str, dict[str, Reducer]] = {}
        for info in pattern_layers(graph):
            following = graph.following_activation(info)
            reducer = PatternStatistics(
                self.pattern_type, following.name if following else None, self.compute_dtype
            )
            reducers[info.name] = {"pattern": reducer}
        self._attach(graph, reducers)
        return reducers

    def _attach(self, graph: ModelGraph, reducers: Mapping[str, Mapping[str, Reducer]]) -> None:
        for name, rs in reducers.items():
            info = graph.by_name.get(name)
            if info is None or info.kind is not Kind.LINEAR:
                raise InputError(
                    f"these pattern statistics name layer '{name}', which this model does not have "
                    f"as a linear layer; its linear layers: {[i.name for i in pattern_layers(graph)]}"
                )
            reducer = rs["pattern"]
            assert isinstance(reducer, PatternStatistics)
            reducer.op = graph.linear_op(info)
            reducer.output_axis = -1 if reducer.op.extras.get("output_axis") == -1 else 1

    # -- computing ----------------------------------------------------------------------
    def compute(
        self,
        X: Any,
        batch_size: int = 32,
        verbose: bool = False,
        *,
        backend: str = "local",
        model_spec: Any = None,
        num_workers: int | None = None,
        address: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Accumulate statistics over ``X`` (array, tensor, ``(X, Y)``) in batches; return
        the patterns.

        ``backend="ray"`` reduces ranges of ``X`` (also a ``.npy``/HDF5 path or a torch
        Dataset) on ``num_workers`` Ray actors that build the model from ``model_spec``
        (``innspect.dataset.ModelSpec`` or a spec string; it must give this computer's
        weights) and merges their statistics in a tree (``innspect.distributed``).
        """
        if backend == "ray":
            from innspect.distributed.stats import patterns_on_ray

            other = patterns_on_ray(self, X, model_spec, batch_size, num_workers, address, verbose)
            return self.merge(other).patterns()
        if backend != "local":
            raise InputError(f"backend must be 'local' or 'ray', got {backend!r}")
        return self.compute_generator(X, batch_size=batch_size, verbose=verbose)

    def compute_generator(
        self, generator: Any, verbose: bool = False, **kwargs: Any
    ) -> dict[str, np.ndarray]:
        """Accumulate statistics over a stream of batches (an iterable of ``x`` or ``(x, y)``,
        a DataLoader, or anything :func:`innspect.data.iter_batches` takes); return the
        patterns. ``kwargs`` as for :meth:`update`."""
        self.update(generator, verbose=verbose, **kwargs)
        return self.patterns()

    def update(
        self,
        data: Any,
        verbose: bool = False,
        *,
        batch_size: int = 32,
        skip_batches: int = 0,
        on_batch: Any = None,
        total: int | None = None,
    ) -> None:
        """Accumulate statistics over ``data`` without computing the patterns.

        ``skip_batches`` / ``on_batch`` serve resumable runs (the CLI); ``total`` is the
        number of batches for the progress bar when the stream has no length.
        """
        generator = data
        device, dtype = model_device_dtype(self.model)
        total = num_batches(generator, batch_size) if total is None else total
        stream = iter_batches(generator, batch_size, device=device, dtype=dtype)
        first = next(stream)  # raises InputError on an empty data set
        graph = self.graph(first.x)
        if self.statistics is None:
            self.statistics = Statistics(self._reducers(graph))
        else:
            self._attach(graph, self.statistics.reducers)

        def chained():
            yield first
            yield from stream

        collect(
            graph,
            chained(),
            statistics=self.statistics,
            verbose=verbose,
            total=total,
            skip_batches=skip_batches,
            on_batch=on_batch,
        )

    def merge(self, other: PatternComputer) -> PatternComputer:
        """Add another computer's statistics (another shard of the data) to these."""
        if other.statistics is None:
            return self
        if other.pattern_type != self.pattern_type:
            raise InputError(
                f"cannot merge '{other.pattern_type}' statistics into '{self.pattern_type}' ones"
            )
        if self.statistics is None:
            self.statistics = Statistics({}, 0)
            self.statistics.reducers = {
                n: {k: r.fresh() for k, r in rs.items()} for n, rs in other.statistics.items()
            }
        self.statistics.merge(other.statistics)
        return self

    def patterns(self) -> dict[str, np.ndarray]:
        """``{layer name: pattern}`` from the statistics so far."""
        if self.statistics is None:
            raise InputError("no statistics yet: call compute(X) or compute_generator(data) first")
        graph = self.graph()
        self._attach(graph, self.statistics.reducers)
        result = {}
        for name, rs in self.statistics.items():
            reducer = rs["pattern"]
            assert isinstance(reducer, PatternStatistics)
            result[name] = reducer.pattern(graph.linear_op(graph.by_name[name]).weight)
        return result

    # -- files --------------------------------------------------------------------------
    def save_npz(
        self,
        path: str | os.PathLike,
        meta: dict[str, Any] | None = None,
        with_patterns: bool = True,
    ) -> None:
        """Write statistics and patterns to ``path`` (.npz) atomically; ``meta`` (JSON)
        describes the run (the CLI keeps its arguments there to resume safely).
        ``with_patterns=False`` writes the statistics only (a cheap checkpoint)."""
        if self.statistics is None:
            raise InputError("nothing to save: no statistics yet")
        arrays = self.statistics.to_arrays()
        if with_patterns:
            for name, pattern in self.patterns().items():
                arrays[f"pattern/{name}"] = pattern
        arrays["__patterns__"] = np.array(
            json.dumps(
                {"pattern_type": self.pattern_type, "run": meta or {}, "complete": with_patterns}
            )
        )
        write_npz(path, arrays)

    @classmethod
    def load_npz(cls, path: str | os.PathLike, model: nn.Module) -> PatternComputer:
        """A computer with the statistics saved in ``path``, ready to add data or merge."""
        arrays = _read_npz(path)
        if "__patterns__" not in arrays:
            raise InputError(f"{path} is not a PatternComputer file (no '__patterns__' entry)")
        meta = json.loads(str(arrays["__patterns__"]))
        computer = cls(model, meta["pattern_type"])
        computer.statistics = Statistics.from_arrays(arrays)
        computer.compute_dtype = next(
            (rs["pattern"].compute_dtype for rs in computer.statistics.values()), None
        )
        return computer


def _read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(f"patterns file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read patterns file {path}: {error}") from error


def load_patterns(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The ``{layer name: pattern}`` stored in a PatternComputer or pattern analyzer file."""
    arrays = _read_npz(path)
    found = {k[len("pattern/") :]: v for k, v in arrays.items() if k.startswith("pattern/")}
    if not found:
        found = {
            k[len("state/pattern/") :]: v
            for k, v in arrays.items()
            if k.startswith("state/pattern/")
        }
    if "__patterns__" in arrays and json.loads(str(arrays["__patterns__"])).get("complete", True):
        return found  # a finished run (no entries: a model without linear layers)
    if "__patterns__" in arrays:
        raise InputError(
            f"{path} holds the statistics of an unfinished run: rerun `innspect patterns "
            "compute` with the same arguments to finish it, or use "
            "PatternComputer.load_npz(path, model).patterns()"
        )
    if not found and "state/fitted" not in arrays:  # a fitted analyzer's save_npz has it
        raise InputError(f"{path} holds no patterns (write one with PatternComputer.save_npz)")
    return found
