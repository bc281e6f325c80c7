"""The statistics pass: stream a data set through a model's graph into reducers.

Usage::

    from innspect.engine import collect
    from innspect.engine.reducers import Mean, Moments

    stats = collect(model, (X, Y), nodes=["features.3", "classifier.0"],
                    reducers={"mean": Mean(), "per_class": Mean(groups="y")},
                    batch_size=64, verbose=True)
    stats["classifier.0"]["per_class"].result()   # (classes, features) mean activations
    stats.save_npz("stats.npz"); stats = Statistics.load_npz("stats.npz")
    stats.merge(other_worker_stats)                # two shards -> the statistic of both

``data`` is anything :func:`innspect.util.batches.iter_batches` streams (an array or tensor, an
``(X, Y)`` tuple, an iterable of batches or ``(x, y)`` pairs, a torch ``DataLoader``).
Each batch runs once through the captured graph (the same capture and forward record
every analyzer uses, on the model's eval view); each chosen node's inputs and output (and, with
``gradients=True``, the gradient of ``target`` at its output) go to its reducers as an
:class:`~innspect.engine.reducers.Observation`, then the batch is dropped: memory holds one
batch's forward values plus the reducers' fixed-size states, whatever the data's length.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.engine.forward import run_forward
from innspect.engine.reducers import Observation, Reducer
from innspect.engine.selection import resolve
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.lock import GRAPH_LOCK
from innspect.util.batches import iter_batches, num_batches
from innspect.util.files import write_npz
from innspect.util.progress import progress
from innspect.util.tensors import model_device_dtype

ReducerSpec = Reducer | Mapping[str, Reducer] | Callable[[NodeInfo], Mapping[str, Reducer]]
Target = int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


class Statistics(Mapping[str, dict[str, Reducer]]):
    """Reducers by node name, then by reducer name: ``stats[node][name].result()``."""

    def __init__(self, reducers: dict[str, dict[str, Reducer]], batches: int = 0) -> None:
        self.reducers = reducers
        self.batches = batches  # batches seen (summed over merged shards)

    def __getitem__(self, node: str) -> dict[str, Reducer]:
        return self.reducers[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self.reducers)

    def __len__(self) -> int:
        return len(self.reducers)

    def results(self) -> dict[str, dict[str, Any]]:
        """Every reducer's ``result()``, by node and name."""
        return {n: {k: r.result() for k, r in rs.items()} for n, rs in self.reducers.items()}

    def merge(self, other: Statistics) -> Statistics:
        """Fold another shard's statistics (same nodes and reducers) into these."""
        if set(other.reducers) != set(self.reducers):
            raise InputError(
                f"cannot merge statistics of nodes {sorted(other.reducers)} into statistics of "
                f"nodes {sorted(self.reducers)}"
            )
        for node, reducers in self.reducers.items():
            if set(other[node]) != set(reducers):
                raise InputError(
                    f"node '{node}': cannot merge reducers {sorted(other[node])} into "
                    f"{sorted(reducers)}"
                )
            for name, reducer in reducers.items():
                reducer.merge(other[node][name])
        self.batches += other.batches
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything as named numpy arrays (what ``save_npz`` writes)."""
        meta: dict[str, Any] = {"batches": self.batches, "nodes": {}}
        arrays: dict[str, np.ndarray] = {}
        for n, (node, reducers) in enumerate(self.reducers.items()):
            meta["nodes"][node] = {"key": n, "reducers": {}}
            for name, reducer in reducers.items():
                meta["nodes"][node]["reducers"][name] = {
                    "class": type(reducer).__name__,
                    "config": reducer.config(),
                }
                for field, value in reducer.state().items():
                    arrays[f"{n}/{name}/{field}"] = np.asarray(value)
        arrays["__statistics__"] = np.array(json.dumps(meta))
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Statistics:
        if "__statistics__" not in arrays:
            raise InputError("these arrays hold no innspect statistics (no '__statistics__')")
        meta = json.loads(str(arrays["__statistics__"]))
        reducers: dict[str, dict[str, Reducer]] = {}
        for node, entry in meta["nodes"].items():
            reducers[node] = {}
            for name, spec in entry["reducers"].items():
                prefix = f"{entry['key']}/{name}/"
                state = {k[len(prefix) :]: arrays[k] for k in arrays if k.startswith(prefix)}
                reducers[node][name] = Reducer.restore(spec["class"], spec["config"], state)
        return cls(reducers, int(meta["batches"]))

    def save_npz(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (an .npz file) atomically."""
        write_npz(path, self.to_arrays())

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> Statistics:
        """Read statistics written by ``save_npz``."""
        with np.load(path, allow_pickle=False) as data:
            return cls.from_arrays({k: data[k] for k in data.files})


def node_names(graph: ModelGraph) -> list[str]:
    """Names of the nodes a statistics pass can observe: the model's input(s) and every node
    computed from them (shape queries excluded)."""
    return [i.name for i in graph.nodes if i.depends_on_input and not i.is_metadata]


def resolve_nodes(graph: ModelGraph, nodes: Sequence[str] | None) -> list[NodeInfo]:
    """The NodeInfos of ``nodes`` (every observable node for None); unknown names raise
    InputError listing the available ones."""
    available = node_names(graph)
    if nodes is None:
        return [graph.by_name[n] for n in available]
    if isinstance(nodes, str):
        nodes = [nodes]
    unknown = [n for n in nodes if n not in available]
    if unknown:
        raise InputError(
            f"unknown node name(s) {unknown}; the model's nodes are: {', '.join(available)}"
        )
    return [graph.by_name[n] for n in nodes]


def _reducers_for(info: NodeInfo, spec: ReducerSpec) -> dict[str, Reducer]:
    if isinstance(spec, Reducer):
        return {spec.kind: spec.fresh()}
    if isinstance(spec, Mapping):
        return {name: r.fresh() for name, r in spec.items()}
    if callable(spec):
        made = spec(info)
        return {made.kind: made} if isinstance(made, Reducer) else dict(made)
    raise InputError(
        "reducers must be a Reducer, a dict name -> Reducer, or a callable NodeInfo -> those"
    )


def target_start(output: torch.Tensor, target: Target) -> torch.Tensor:
    """``dt/dy``: the gradient at the output of the per-sample scalar ``t`` (N,) whose
    gradient ``gradients=True`` records.

    None: the largest output per sample (iNNvestigate's "max_activation"); an int: that
    output (flattened index); output weights or a callable ``f(y) -> (N,)``: as for
    analyzers' ``target=``. Resolved by ``engine.selection``, as every analyzer's call is.
    """
    if target is None:
        selection = resolve(output, "max_activation")
    elif isinstance(target, int | np.integer) and not isinstance(target, bool):
        selection = resolve(output, "index", int(target))
    elif isinstance(target, torch.Tensor | np.ndarray) or callable(target):
        selection = resolve(output, "max_activation", target=target)
    else:
        raise InputError(f"target must be None, an int, a tensor or a callable, got {target!r}")
    return selection.start(output, torch.ones_like)


def collect(
    model: nn.Module | ModelGraph,
    data: Any,
    nodes: Sequence[str] | None = None,
    reducers: ReducerSpec | None = None,
    target: Target = None,
    gradients: bool = False,
    batch_size: int = 32,
    verbose: bool = False,
    *,
    statistics: Statistics | None = None,
    skip_batches: int = 0,
    on_batch: Callable[[Statistics], None] | None = None,
    total: int | None = None,
) -> Statistics:
    """Run a statistics pass of ``data`` through ``model`` (see the module docstring).

    Parameters
    ----------
    model
        The model (captured here, never modified) or an already captured ModelGraph.
    data
        Arrays, tensors, ``(X, Y)``, an iterable of batches or ``(x, y)``, a DataLoader.
    nodes
        Node names to observe (``node_names(graph)`` lists them; None: every node).
    reducers
        One Reducer (stored under its ``kind``), a dict ``name -> Reducer`` (each node gets
        fresh copies), or a callable ``NodeInfo -> Reducer | dict`` for per-node reducers.
    target, gradients
        With ``gradients=True`` each observation carries the gradient of ``target`` (see
        :func:`target_start`; summed over the batch, so each sample gets its own
        gradient) at the node's output.
    batch_size
        Rows per batch when ``data`` is an array or an ``(X, Y)`` tuple.
    verbose
        Show a progress bar.
    statistics, skip_batches, on_batch
        Resuming: continue into existing ``statistics`` after skipping the first
        ``skip_batches`` batches of the stream; ``on_batch(statistics)`` is called after
        every batch (e.g. to save a checkpoint). ``total``: the number of batches for the
        progress bar when ``data`` has no length.
    """
    if reducers is None and statistics is None:
        raise InputError("collect needs reducers=..., e.g. reducers=Mean() or {'mean': Mean()}")
    if isinstance(model, ModelGraph):
        graph, module = model, model.model
    else:
        graph, module = None, model
    device, dtype = model_device_dtype(module)
    stream = iter_batches(data, batch_size, device=device, dtype=dtype)
    total = num_batches(data, batch_size) if total is None else total
    infos: list[NodeInfo] = []
    needs: dict[str, NodeInfo] = {}
    seen = 0
    for batch in progress(stream, verbose, total=total, desc="statistics"):
        if batch.index < skip_batches:
            continue
        if graph is None:
            graph = ModelGraph(module, batch.x)
        if statistics is None:
            infos = resolve_nodes(graph, nodes)
            assert reducers is not None
            statistics = Statistics({i.name: _reducers_for(i, reducers) for i in infos})
        if not infos:
            infos = resolve_nodes(graph, list(statistics.reducers))
        if not needs:
            wanted = {
                n for rs in statistics.reducers.values() for r in rs.values() for n in r.needs
            }
            needs = {i.name: i for i in resolve_nodes(graph, sorted(wanted))}
        _observe(graph, batch, infos, needs, statistics, target, gradients)
        statistics.batches += 1
        seen += 1
        if on_batch is not None:
            on_batch(statistics)
    if statistics is None or (seen == 0 and skip_batches == 0):
        raise InputError("the data set is empty: there is not a single batch to process")
    return statistics


def _observe(
    graph: ModelGraph,
    batch: Any,
    infos: list[NodeInfo],
    needs: dict[str, NodeInfo],
    statistics: Statistics,
    target: Target,
    gradients: bool,
) -> None:
    x = batch.x
    # The graph's layers are eval views (views.eval_view): no training flag is touched;
    # the shared lock keeps captures in other threads out while modules run.
    with GRAPH_LOCK.shared(), torch.set_grad_enabled(gradients):
        if gradients:
            x = x.detach().requires_grad_(x.is_floating_point())
        # Only the observed nodes (and the inputs and extra nodes their observations carry)
        # outlive their last use: the pass allocates what a plain forward does.
        observed = {i.node for i in infos} | {i.node for i in needs.values()}
        observed |= {n for i in infos for n in i.signal_inputs}
        record = run_forward(graph, x, keep=observed, global_autograd=gradients)
        values = record.values
        output = record.output(graph)
        grads: dict[str, torch.Tensor | None] = {}
        if gradients:
            grads = _gradients(graph, infos, values, output, target)
    model_output = output.detach()
    others = {name: values[info.node] for name, info in needs.items()}
    for info in infos:
        out = values[info.node]
        obs = Observation(
            name=info.name,
            inputs=[_detach(values[n]) for n in info.signal_inputs],
            output=_detach(out),
            grad=grads.get(info.name),
            y=batch.y,
            model_output=model_output,
            others={k: _detach(v) for k, v in others.items()},
            batch_index=batch.index,
        )
        for reducer in statistics[info.name].values():
            reducer.update(obs)


def _gradients(
    graph: ModelGraph,
    infos: list[NodeInfo],
    values: Any,
    output: torch.Tensor,
    target: Target,
) -> dict[str, torch.Tensor | None]:
    start = target_start(output, target)  # sum_i t_i's gradient: each sample gets its own
    tensors = [values[i.node] for i in infos]
    wanted = [k for k, t in enumerate(tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
    found: dict[str, torch.Tensor | None] = {}
    if wanted and output.requires_grad:
        grads = torch.autograd.grad(
            output, [tensors[k] for k in wanted], grad_outputs=start, allow_unused=True
        )
        for k, g in zip(wanted, grads, strict=True):
            found[infos[k].name] = torch.zeros_like(tensors[k]) if g is None else g.detach()
    for k, info in enumerate(infos):
        if info.name not in found and isinstance(tensors[k], torch.Tensor):
            found[info.name] = torch.zeros_like(tensors[k])  # the target does not depend on it
    return found


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value
