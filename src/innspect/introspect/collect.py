"""NAPs of a PyTorch model in one streaming pass (the engine's statistics pass).

``collect`` captures the model once, runs every batch through the graph
(:func:`innspect.engine.collect.collect`) and folds each chosen node's output, and with
``gradients=True`` the gradient of the predicted (or given) output at it, into a
:class:`NapReducer`: memory holds one batch plus the per-group sums.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.engine.collect import Statistics
from innspect.engine.collect import collect as engine_collect
from innspect.engine.reducers import Observation, Reducer, group_ids
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph
from innspect.introspect.corpus import read_corpus_csv
from innspect.introspect.layers import observed_layers, output_index_target
from innspect.introspect.naps import NapAccumulator, Naps, channels_last, group_labels
from innspect.introspect.ray import naps_on_ray
from innspect.util.batches import as_tensor
from innspect.util.progress import progress
from innspect.util.tensors import model_device_dtype


class NapReducer(Reducer):
    """Per-group sums of a node's channels-last output (optionally aligned on its gradient),
    or of the target gradient at it (``of="grad"``), keyed by the integer group ids of
    ``Observation.y``; mergeable and serialisable."""

    kind = "naps"

    def __init__(self, align: bool = False, channel_axis: int = 1, of: str = "output") -> None:
        if of not in ("output", "grad"):
            raise InputError(f"NapReducer reduces 'output' or 'grad', got {of!r}")
        self.align = align
        self.channel_axis = channel_axis
        self.of = of
        self.accumulator = NapAccumulator(align=align)

    def update(self, obs: Observation) -> None:
        labels = [str(i) for i in group_ids(obs, "y").tolist()]
        if self.of == "grad" and obs.grad is None:
            raise InputError("gradient profiles need collect(..., gradients=True)")
        acts = channels_last(obs.output if self.of == "output" else obs.grad, self.channel_axis)
        grads = None
        if self.align and acts.ndim >= 3:
            if obs.grad is None:
                raise InputError("aligned NAPs need gradients: collect(..., gradients=True)")
            grads = {"node": channels_last(obs.grad, self.channel_axis)}
        # one node per reducer: a fixed key, so that a restored state merges with a live one
        self.accumulator.update({"node": acts}, labels, grads)

    def merge(self, other: Reducer) -> NapReducer:
        self._check_same(other)
        assert isinstance(other, NapReducer)
        self.accumulator.merge(other.accumulator)
        return self

    def result(self) -> NapAccumulator:
        return self.accumulator

    def config(self) -> dict[str, Any]:
        return {"align": self.align, "channel_axis": self.channel_axis, "of": self.of}

    def state(self) -> dict[str, np.ndarray]:
        counts = self.accumulator.counts
        n = max((int(g) for g in counts), default=-1) + 1
        sums = next(iter(self.accumulator.sums.values()), {})
        shape = next(iter(sums.values())).shape if sums else (0,)
        table = np.zeros((n, *shape))
        for g, total in sums.items():
            table[int(g)] = total
        return {
            "counts": np.array([counts.get(str(i), 0) for i in range(n)], dtype=np.int64),
            "sums": table,
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.accumulator = NapAccumulator(align=self.align)
        counts = np.asarray(state["counts"])
        present = [i for i in range(len(counts)) if counts[i] > 0]
        self.accumulator.counts = {str(i): int(counts[i]) for i in present}
        self.accumulator.sums = {"node": {str(i): np.asarray(state["sums"][i]) for i in present}}

    def fresh(self) -> NapReducer:
        return NapReducer(self.align, self.channel_axis, self.of)


class SampleReducer(Reducer):
    """The first ``limit`` samples of each group, flattened (float32): what instance
    projections need, memory bounded by ``limit`` x groups x layer size."""

    kind = "samples"

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self.ids: list[int] = []
        self.values: list[np.ndarray] = []
        self.counts: dict[int, int] = {}

    def _add(self, ids: Iterable[int], rows: np.ndarray) -> None:
        for group, row in zip(ids, rows, strict=True):
            if self.counts.get(group, 0) < self.limit:
                self.counts[group] = self.counts.get(group, 0) + 1
                self.ids.append(group)
                self.values.append(row)

    def update(self, obs: Observation) -> None:
        flat = obs.output.detach().reshape(obs.output.shape[0], -1).float().cpu().numpy()
        self._add(group_ids(obs, "y").tolist(), flat)

    def merge(self, other: Reducer) -> SampleReducer:
        self._check_same(other)
        assert isinstance(other, SampleReducer)
        self._add(other.ids, np.asarray(other.values).reshape(len(other.ids), -1))
        return self

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(group ids (n,), flattened samples (n, D))``."""
        values = np.stack(self.values) if self.values else np.zeros((0, 0), np.float32)
        return np.asarray(self.ids, dtype=np.int64), values

    def config(self) -> dict[str, Any]:
        return {"limit": self.limit}

    def state(self) -> dict[str, np.ndarray]:
        ids, values = self.result()
        return {"ids": ids, "values": values}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.ids, self.values, self.counts = [], [], {}
        self._add(np.asarray(state["ids"]).tolist(), np.asarray(state["values"]))

    def fresh(self) -> SampleReducer:
        return SampleReducer(self.limit)


class GroupIds:
    """Group names <-> the integer ids the engine's reducers key on (in order of appearance)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}

    def ids(self, labels: Any) -> torch.Tensor:
        found = []
        for name in group_labels(labels):
            if name not in self.index:
                self.index[name] = len(self.names)
                self.names.append(name)
            found.append(self.index[name])
        return torch.tensor(found, dtype=torch.long)

    def stream(self, data: Iterable[Any]) -> Iterator[tuple[Any, torch.Tensor]]:
        for item in data:
            if not isinstance(item, tuple | list) or len(item) < 2:
                raise InputError(
                    "collect needs group labels: stream (x, group) pairs, or give arrays with "
                    "groups=..."
                )
            yield item[0], self.ids(item[1])


def collect(
    model: nn.Module | ModelGraph,
    data: Any,
    layers: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    gradients: bool = True,
    *,
    align: bool = False,
    target: int | None = None,
    batch_size: int = 32,
    channel_axis: int = 1,
    keep_samples: int = 0,
    verbose: bool = False,
    backend: str = "local",
    model_spec: Any = None,
    num_workers: int | None = None,
    address: str | None = None,
) -> Naps:
    """Neuron activation profiles of ``model``'s ``layers`` over ``data``, in one pass.

    Parameters
    ----------
    model
        Any ``nn.Module`` with one input (never modified; run in eval mode), or its
        already captured :class:`~innspect.graph.graph.ModelGraph` (no capture per call).
    data
        An array/tensor of inputs with ``groups`` (one label per sample), an ``(X, groups)``
        tuple, an iterable or ``DataLoader`` of ``(x, group labels)`` batches, or the path of
        an iNNtrospect corpus folder (``corpus.csv`` rows ``file.npy, group[, output index]``).
    layers
        Node names of the captured graph (any node; an unknown name lists the available ones).
        Default: the outputs of every activation after a linear layer.
    gradients
        Take the gradient of the predicted output (the largest; ``target`` or the corpus'
        output index when given) at each layer: its per-group mean goes to
        ``Naps.gradients``, and ``align`` needs it.
    align
        Align each sample's spatial maps on its gradient saliency before averaging
        (iNNtrospect's ``align_data`` along the spatial axes only).
    channel_axis
        The channel axis of the model's activations (1 for PyTorch); NAPs are channels-last.
    keep_samples
        Also keep the first ``keep_samples`` samples of each group per layer, flattened, as
        ``Naps.samples`` / ``Naps.sample_groups`` (for :func:`instance_projection`).
    verbose
        Show a progress bar.
    backend, model_spec, num_workers, address
        ``backend="ray"``: ``num_workers`` Ray actors build the model from ``model_spec``
        (``innspect.loading.models.ModelSpec`` or a spec string, giving ``model``'s weights),
        reduce ranges of the arrays and the driver merges them in a tree
        (``innspect.distributed``); data as arrays with ``groups`` or ``(X, groups)``.

    Returns
    -------
    :class:`Naps` keyed by node name, groups sorted by name.
    """
    if align and not gradients:
        raise InputError("align=True needs gradients=True (alignment follows the gradient)")
    registry = GroupIds()
    reducers: dict[str, Reducer] = {"naps": NapReducer(align=align, channel_axis=channel_axis)}
    if gradients:
        reducers["gradients"] = NapReducer(channel_axis=channel_axis, of="grad")
    if keep_samples > 0:
        reducers["samples"] = SampleReducer(keep_samples)
    if backend == "ray":
        options = {"target": target, "gradients": gradients, "batch_size": batch_size}
        statistics = naps_on_ray(
            model,
            data,
            groups,
            layers,
            reducers,
            registry,
            options,
            model_spec,
            num_workers,
            address,
            verbose,
        )
    elif backend != "local":
        raise InputError(f"backend must be 'local' or 'ray', got {backend!r}")
    elif isinstance(data, str | os.PathLike):
        statistics = _collect_corpus(
            model, Path(data), layers, reducers, registry, gradients, target, batch_size, verbose
        )
    else:
        graph, stream = _prepare(model, data, groups, registry)
        statistics = engine_collect(
            graph,
            stream,
            nodes=observed_layers(graph, layers),
            reducers=reducers,
            target=target,
            gradients=gradients,
            batch_size=batch_size,
            verbose=verbose,
        )
    return _naps(statistics, registry)


def _prepare(
    model: nn.Module | ModelGraph, data: Any, groups: Sequence[Any] | None, registry: GroupIds
) -> tuple[ModelGraph, Any]:
    """The captured graph (before any work, so that unknown layer names fail early) and the
    data as the engine streams it, group labels replaced by integer ids."""
    if isinstance(model, ModelGraph):
        graph: ModelGraph | None = model
        model = model.model
    else:
        graph = None
    device, dtype = model_device_dtype(model)
    if groups is not None or (isinstance(data, tuple) and len(data) == 2):
        inputs, labels = (data, groups) if groups is not None else data
        if not isinstance(inputs, np.ndarray | torch.Tensor):
            inputs = np.asarray(inputs)  # e.g. a list of samples
        if len(labels) != len(inputs):
            raise InputError(f"{len(labels)} group labels for {len(inputs)} samples")
        if len(inputs) == 0:
            raise InputError("the data set is empty: there is not a single sample")
        example = as_tensor(inputs[:1], device, dtype)
        return graph or ModelGraph(model, example), (inputs, registry.ids(labels))
    batches = registry.stream(data)
    first = next(batches, None)
    if first is None:
        raise InputError("the data set is empty: there is not a single batch to process")
    example = as_tensor(first[0], device, dtype)
    return graph or ModelGraph(model, example), itertools.chain([first], batches)


def _collect_corpus(
    model: nn.Module | ModelGraph,
    folder: Path,
    layers: Sequence[str] | None,
    reducers: dict[str, Reducer],
    registry: GroupIds,
    gradients: bool,
    target: int | None,
    batch_size: int,
    verbose: bool,
) -> Statistics:
    rows = read_corpus_csv(folder)  # every file checked before any work
    statistics = None
    graph = model if isinstance(model, ModelGraph) else None
    chosen = observed_layers(graph, layers) if graph is not None else None
    for row in progress(rows, verbose, total=len(rows), desc="NAPs"):
        x = np.load(row.file, allow_pickle=False)
        if graph is None:
            device, dtype = model_device_dtype(model)
            graph = ModelGraph(model, as_tensor(x[:1], device, dtype))
            chosen = observed_layers(graph, layers)
        labels = registry.ids([row.group] * len(x))
        row_target: Any = target
        if row.output_index is not None and target is None:
            row_target = output_index_target(row.output_index)
        statistics = engine_collect(
            graph,
            (x, labels),
            nodes=chosen,
            reducers=reducers,
            target=row_target,
            gradients=gradients,
            batch_size=batch_size,
            statistics=statistics,
        )
    assert statistics is not None
    return statistics


def _group_sums(reducer: Reducer, registry: GroupIds) -> tuple[dict, dict]:
    accumulator = reducer.result()
    counts = {registry.names[int(g)]: n for g, n in accumulator.counts.items()}
    sums = {
        registry.names[int(g)]: total
        for per_node in accumulator.sums.values()
        for g, total in per_node.items()
    }
    return counts, sums


def _naps(statistics: Statistics, registry: GroupIds) -> Naps:
    merged, gradients = NapAccumulator(), NapAccumulator()
    samples, sample_groups = {}, []
    for node, reducers in statistics.items():
        merged.counts, merged.sums[node] = _group_sums(reducers["naps"], registry)
        if "gradients" in reducers:
            gradients.counts, gradients.sums[node] = _group_sums(reducers["gradients"], registry)
        if "samples" in reducers:
            ids, samples[node] = reducers["samples"].result()
            sample_groups = [registry.names[int(i)] for i in ids]
    profiles = merged.result()
    profiles.samples, profiles.sample_groups = samples, sample_groups
    if gradients.counts:
        profiles.gradients = gradients.result(profiles.groups).layers
    return profiles
