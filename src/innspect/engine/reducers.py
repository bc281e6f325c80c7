"""Reducers: running statistics over a stream of batches, mergeable and serialisable.

A reducer sees one :class:`Observation` per batch (a node's inputs, output and, on request,
the gradient of a target at the node) and folds it into a fixed-size state. Every reducer

- accumulates in float64 (sums, counts, and Chan et al.'s pairwise update for moments), so
  one pass over the data, two half passes merged, and the statistic of the concatenated
  data agree to rounding (1e-12 relative);
- merges: ``a.merge(b)`` makes ``a`` the reducer of both streams, in any order, so
  workers (a Ray backend, several processes) each reduce a shard and combine the results;
- serialises: ``config()`` (JSON) and ``state()`` (numpy arrays) rebuild it with
  ``Reducer.restore(class_name, config, state)``; ``innspect.engine.collect.Statistics``
  saves them to one ``.npz`` file atomically.

Generic reducers take ``of`` (what to reduce: ``"output"``, ``"input"`` / ``"input:k"`` (the
k-th signal input), ``"grad"`` (target gradient at the output), ``"grad_x_output"``, or a
callable ``observation -> tensor``), ``dims`` (axes reduced; the batch axis 0 always) and
``groups`` (per-group statistics: ``"y"`` the labels, ``"prediction"`` the model's argmax,
or a callable ``observation -> (B,) int tensor``; group ids are non-negative integers and
the state grows as new ids appear).

Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise algorithm for computing
sample variances", give the merge of means and second moments used by :class:`Moments`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from innspect.errors import InputError


@dataclass
class Observation:
    """What a reducer sees of one node on one batch.

    Attributes
    ----------
    name
        The node's name (``innspect.engine.collect.node_names`` lists them).
    inputs
        The node's signal inputs (tensors that depend on the model input), in order.
    output
        The node's output.
    grad
        The gradient of the target at the node's output (``collect(gradients=True)``).
    y
        The batch's labels, when the data has them.
    model_output
        The model's output on the batch.
    others
        Outputs of further nodes a reducer asked for (its ``needs``), by name.
    batch_index
        Position of the batch in the stream.
    """

    name: str
    inputs: list[Any]
    output: Any
    grad: torch.Tensor | None = None
    y: torch.Tensor | None = None
    model_output: torch.Tensor | None = None
    others: dict[str, Any] = field(default_factory=dict)
    batch_index: int = 0


Selector = str | Callable[[Observation], torch.Tensor]


def select(obs: Observation, of: Selector) -> torch.Tensor:
    """The tensor ``of`` names in ``obs`` (see the module docstring)."""
    if callable(of):
        return of(obs)
    if of == "output":
        value = obs.output
    elif of == "input" or of.startswith("input:"):
        k = int(of.split(":")[1]) if ":" in of else 0
        if k >= len(obs.inputs):
            raise InputError(
                f"node '{obs.name}' has {len(obs.inputs)} signal input(s); {of!r} does not exist"
            )
        value = obs.inputs[k]
    elif of in ("grad", "grad_x_output"):
        if obs.grad is None:
            raise InputError(f"reducing {of!r} needs collect(..., gradients=True)")
        value = obs.grad if of == "grad" else obs.grad * obs.output
    else:
        raise InputError(
            f"unknown selector {of!r}: use 'output', 'input', 'input:K', 'grad', "
            "'grad_x_output' or a callable"
        )
    if not isinstance(value, torch.Tensor):
        raise InputError(f"node '{obs.name}': {of} is a {type(value).__name__}, not a tensor")
    return value


def group_ids(obs: Observation, groups: Selector) -> torch.Tensor:
    """Per-sample non-negative integer group ids, shape (B,)."""
    if callable(groups):
        ids = groups(obs)
    elif groups == "y":
        if obs.y is None:
            raise InputError("groups='y' needs labels: give (X, Y) data or batches of (x, y)")
        ids = obs.y
    elif groups == "prediction":
        ids = obs.model_output.reshape(obs.model_output.shape[0], -1).argmax(dim=1)
    else:
        raise InputError(f"unknown groups {groups!r}: use 'y', 'prediction' or a callable")
    ids = torch.as_tensor(ids).reshape(-1)
    if ids.is_floating_point() or ids.dtype == torch.bool:
        if ids.is_floating_point() and not bool((ids == ids.round()).all()):
            raise InputError(f"group ids must be integers, got {ids.dtype} values")
    ids = ids.long()
    if ids.numel() and int(ids.min()) < 0:
        raise InputError(f"group ids must be >= 0, got {int(ids.min())}")
    return ids


class Reducer:
    """Base of every reducer: ``update``, ``merge``, ``result``, ``config``/``state``.

    ``needs`` names further nodes whose outputs the reducer reads from
    ``Observation.others`` (e.g. the activation after a linear layer).
    """

    kind: ClassVar[str] = "reducer"
    _classes: ClassVar[dict[str, type[Reducer]]] = {}
    needs: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Reducer._classes[cls.__name__] = cls

    def update(self, obs: Observation) -> None:
        raise NotImplementedError

    def merge(self, other: Reducer) -> Reducer:
        """Fold ``other`` (a reducer of the same type and configuration) into this one."""
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (callables are not kept)."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def fresh(self) -> Reducer:
        """An empty reducer with this one's configuration (callables included)."""
        raise NotImplementedError

    @staticmethod
    def restore(class_name: str, config: dict[str, Any], state: dict[str, np.ndarray]) -> Reducer:
        """Rebuild a reducer from ``type(r).__name__``, ``r.config()`` and ``r.state()``."""
        cls = Reducer._classes.get(class_name)
        if cls is None:
            raise InputError(
                f"unknown reducer class {class_name!r} (import the module defining it first); "
                f"known: {', '.join(sorted(Reducer._classes))}"
            )
        reducer = cls.from_config(config)
        reducer.set_state(state)
        return reducer

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Reducer:
        return cls(**config)

    def _check_same(self, other: Reducer) -> None:
        if type(other) is not type(self) or other.config() != self.config():
            raise InputError(
                f"cannot merge {type(other).__name__}({other.config()}) into "
                f"{type(self).__name__}({self.config()}): reducers must be alike"
            )


def _pad_groups(tensor: torch.Tensor, n: int) -> torch.Tensor:
    if tensor.shape[0] >= n:
        return tensor
    pad = tensor.new_zeros((n - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad])


def _to_numpy(tensor: torch.Tensor | None) -> np.ndarray:
    return np.zeros(0) if tensor is None else tensor.detach().cpu().numpy()


class _Grouped(Reducer):
    """Shared machinery: per-group (or single-group) float64 arrays of a fixed shape."""

    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        of: Selector = "output",
        dims: Sequence[int] = (0,),
        groups: Selector | None = None,
    ) -> None:
        dims = tuple(int(d) for d in dims)
        if 0 not in dims or any(d < 0 for d in dims):
            raise InputError(f"dims must contain the batch axis 0 and be >= 0, got {dims}")
        self.of, self.dims, self.groups = of, dims, groups
        self.count: torch.Tensor | None = None  # (G,) float64: elements reduced per group
        self.arrays: dict[str, torch.Tensor] = {}

    def config(self) -> dict[str, Any]:
        return {
            "of": self.of if isinstance(self.of, str) else None,
            "dims": list(self.dims),
            "groups": self.groups if isinstance(self.groups, str) or self.groups is None else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Reducer:
        config = dict(config)
        if config.get("of") is None:
            config["of"] = "output"  # a callable selector is not saved; state still merges
        return cls(**config)

    def fresh(self) -> Reducer:
        return type(self)(self.of, self.dims, self.groups)

    @property
    def grouped(self) -> bool:
        return self.groups is not None

    def _values(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(values reduced over the non-batch ``dims`` and kept per sample, group ids,
        elements per sample) in float64."""
        value = select(obs, self.of).detach().to(torch.float64)
        extra = tuple(d for d in self.dims if d != 0)
        if any(d >= value.dim() for d in extra):
            raise InputError(
                f"node '{obs.name}': dims {self.dims} do not fit a tensor of shape "
                f"{tuple(value.shape)}"
            )
        per_sample = 1
        for d in extra:
            per_sample *= value.shape[d]
        ids = (
            group_ids(obs, self.groups).to(value.device)
            if self.grouped
            else torch.zeros(value.shape[0], dtype=torch.long, device=value.device)
        )
        if ids.numel() != value.shape[0]:
            raise InputError(
                f"node '{obs.name}': {ids.numel()} group ids for a batch of {value.shape[0]}"
            )
        return value, ids, per_sample

    def _reduce_extra(self, value: torch.Tensor, op: str = "sum") -> torch.Tensor:
        extra = [d for d in self.dims if d != 0]
        if not extra:
            return value
        if op == "sum":
            return value.sum(dim=extra)
        reduced = value
        for d in sorted(extra, reverse=True):
            reduced = reduced.amin(dim=d) if op == "min" else reduced.amax(dim=d)
        return reduced

    def _ensure(self, n_groups: int, shape: tuple[int, ...], device: torch.device) -> None:
        if self.count is None:
            self.count = torch.zeros(n_groups, dtype=torch.float64, device=device)
            for name in self.fields:
                self.arrays[name] = self._initial(name, (n_groups, *shape), device)
            return
        self.count = _pad_groups(self.count, n_groups)
        for name in self.fields:
            array = self.arrays[name]
            if array.shape[0] < n_groups:
                extra = self._initial(name, (n_groups - array.shape[0], *shape), array.device)
                self.arrays[name] = torch.cat([array, extra])

    def _initial(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float64, device=device)

    def state(self) -> dict[str, np.ndarray]:
        return {"count": _to_numpy(self.count), **{k: _to_numpy(v) for k, v in self.arrays.items()}}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        count = np.asarray(state["count"])
        if count.size == 0:
            self.count, self.arrays = None, {}
            return
        self.count = torch.as_tensor(count, dtype=torch.float64)
        self.arrays = {k: torch.as_tensor(np.asarray(state[k])) for k in self.fields}

    def _aligned(self, other: _Grouped) -> _Grouped | None:
        """Check ``other`` and pad both to the same number of groups; None if it is empty."""
        self._check_same(other)
        if other.count is None:
            return None
        if self.count is None:
            device = other.count.device
            self.count = torch.zeros(0, dtype=torch.float64, device=device)
            shape = next(iter(other.arrays.values())).shape[1:] if other.arrays else ()
            self.arrays = {k: self._initial(k, (0, *shape), device) for k in self.fields}
        n = max(self.count.shape[0], other.count.shape[0])
        shape = tuple(next(iter(self.arrays.values())).shape[1:]) if self.arrays else ()
        self._ensure(n, shape, self.count.device)
        device = self.count.device
        padded = other.fresh()
        assert isinstance(padded, _Grouped)
        padded.count = _pad_groups(other.count.to(device), n)
        padded.arrays = {}
        for k, v in other.arrays.items():
            v = v.to(device)
            if v.shape[0] < n:
                v = torch.cat([v, self._initial(k, (n - v.shape[0], *v.shape[1:]), device)])
            padded.arrays[k] = v
        return padded

    def _out(self, tensor: torch.Tensor) -> np.ndarray:
        array = _to_numpy(tensor)
        return array if self.grouped else array[0]


class Count(_Grouped):
    """Number of samples (times the elements reduced along ``dims``), per group."""

    kind = "count"

    def update(self, obs: Observation) -> None:
        value, ids, per_sample = self._values(obs)
        self._ensure(int(ids.max()) + 1, (), value.device)
        self.count.index_add_(0, ids, torch.full_like(ids, per_sample, dtype=torch.float64))

    def merge(self, other: Reducer) -> Reducer:
        padded = self._aligned(other)  # type: ignore[arg-type]
        if padded is not None:
            self.count += padded.count
        return self

    def result(self) -> np.ndarray:
        return self._out(self.count)


class Sum(_Grouped):
    """Sum over the batch axis (and ``dims``), per group, in float64."""

    kind = "sum"
    fields = ("sum",)

    def update(self, obs: Observation) -> None:
        value, ids, per_sample = self._values(obs)
        reduced = self._reduce_extra(value)
        self._ensure(int(ids.max()) + 1, tuple(reduced.shape[1:]), value.device)
        self.count.index_add_(0, ids, torch.full_like(ids, per_sample, dtype=torch.float64))
        self.arrays["sum"].index_add_(0, ids, reduced)

    def merge(self, other: Reducer) -> Reducer:
        padded = self._aligned(other)  # type: ignore[arg-type]
        if padded is not None:
            self.count += padded.count
            self.arrays["sum"] += padded.arrays["sum"]
        return self

    def result(self) -> np.ndarray:
        return self._out(self.arrays["sum"])


class Mean(Sum):
    """Mean over the batch axis (and ``dims``), per group (NaN for a group never seen)."""

    kind = "mean"

    def result(self) -> np.ndarray:
        count = self.count.reshape(-1, *([1] * (self.arrays["sum"].dim() - 1)))
        return self._out(self.arrays["sum"] / count)


class Moments(_Grouped):
    """Count, mean and variance (population, ``ddof=0``) per element, per group.

    Batches and workers combine with Chan et al.'s pairwise update (numerically stable:
    no sum of squares is ever formed). ``result()`` returns a dict with ``count``, ``mean``,
    ``var`` and ``std``.
    """

    kind = "moments"
    fields = ("mean", "m2")

    def update(self, obs: Observation) -> None:
        value, ids, per_sample = self._values(obs)
        n_groups = int(ids.max()) + 1
        flat_shape = value.shape[1:]
        extra = [d for d in self.dims if d != 0]
        # Samples of the reduced axes count as observations: move them onto the batch axis.
        kept = [d for d in range(1, value.dim()) if d not in extra]
        moved = value.permute(0, *extra, *kept).reshape(-1, *[flat_shape[d - 1] for d in kept])
        sample_ids = ids.repeat_interleave(per_sample)
        shape = tuple(moved.shape[1:])
        ones = torch.ones_like(sample_ids, dtype=torch.float64)
        n_b = torch.zeros(n_groups, dtype=torch.float64, device=value.device).index_add_(
            0, sample_ids, ones
        )
        view = (-1,) + (1,) * len(shape)
        sums = torch.zeros((n_groups, *shape), dtype=torch.float64, device=value.device)
        sums.index_add_(0, sample_ids, moved)
        mean_b = sums / n_b.clamp(min=1).reshape(view)
        deviation = moved - mean_b[sample_ids]
        m2_b = torch.zeros_like(sums).index_add_(0, sample_ids, deviation * deviation)
        self._ensure(n_groups, shape, value.device)
        self._combine(n_b, mean_b, m2_b)

    def _combine(self, n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        n_groups = n_b.shape[0]
        n_a = self.count[:n_groups]
        mean_a, m2_a = self.arrays["mean"][:n_groups], self.arrays["m2"][:n_groups]
        n = n_a + n_b
        view = (-1,) + (1,) * (mean_a.dim() - 1)
        safe_n = n.clamp(min=1).reshape(view)
        delta = mean_b - mean_a
        mean_a += delta * (n_b.reshape(view) / safe_n)
        m2_a += m2_b + delta * delta * (n_a * n_b).reshape(view) / safe_n
        self.count[:n_groups] = n

    def merge(self, other: Reducer) -> Reducer:
        padded = self._aligned(other)  # type: ignore[arg-type]
        if padded is not None:
            self._combine(padded.count, padded.arrays["mean"], padded.arrays["m2"])
        return self

    def result(self) -> dict[str, np.ndarray]:
        view = (-1,) + (1,) * (self.arrays["mean"].dim() - 1)
        var = self.arrays["m2"] / self.count.reshape(view)
        return {
            "count": self._out(self.count),
            "mean": self._out(self.arrays["mean"]),
            "var": self._out(var),
            "std": self._out(var.sqrt()),
        }


class MinMax(_Grouped):
    """Element-wise minimum and maximum over the batch axis (and ``dims``), per group."""

    kind = "min_max"
    fields = ("min", "max")

    def _initial(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        fill = float("inf") if name == "min" else float("-inf")
        return torch.full(shape, fill, dtype=torch.float64, device=device)

    def update(self, obs: Observation) -> None:
        value, ids, per_sample = self._values(obs)
        low, high = self._reduce_extra(value, "min"), self._reduce_extra(value, "max")
        self._ensure(int(ids.max()) + 1, tuple(low.shape[1:]), value.device)
        self.count.index_add_(0, ids, torch.full_like(ids, per_sample, dtype=torch.float64))
        index = ids.reshape(-1, *([1] * (low.dim() - 1))).expand_as(low)
        self.arrays["min"].scatter_reduce_(0, index, low, "amin")
        self.arrays["max"].scatter_reduce_(0, index, high, "amax")

    def merge(self, other: Reducer) -> Reducer:
        padded = self._aligned(other)  # type: ignore[arg-type]
        if padded is not None:
            self.count += padded.count
            torch.minimum(self.arrays["min"], padded.arrays["min"], out=self.arrays["min"])
            torch.maximum(self.arrays["max"], padded.arrays["max"], out=self.arrays["max"])
        return self

    def result(self) -> dict[str, np.ndarray]:
        return {"min": self._out(self.arrays["min"]), "max": self._out(self.arrays["max"])}


def dumps_config(config: dict[str, Any]) -> str:
    """A reducer configuration as JSON (for files)."""
    return json.dumps(config, sort_keys=True)
