"""Attributions for a whole data set, written as resumable shards (``explain_dataset``).

The samples are cut into shards of ``shard_size``; each shard's attributions (per method:
the attribution, the selected output neuron and its score) go to one HDF5 file, written
atomically, and an ``index.json`` lists the shards with their sample ranges and SHA-256
checksums. The index also records the model (a fingerprint of its weights), the methods and
their options, the batch and shard sizes and the data's length and sample shape: a second
call with the same ``out`` skips the shards whose checksum still matches, redoes missing or
corrupted ones, and refuses a folder written for another model, method set or data.

A shard is computed batch by batch from its first sample by :class:`ShardRunner`, the same
code on every backend, so a shard's bytes do not depend on the backend or on which worker
computed it. ``backend="ray"`` (``innspect.distributed``) runs ShardRunners as Ray actors.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.analyzers.api import analyzer_parameters
from innspect.analyzers.options import jsonable, stable_repr
from innspect.analyzers.parameters import options_for_methods
from innspect.analyzers.registry import analyzer_class, create_analyzer
from innspect.distributed.ray_backend import run_jobs
from innspect.distributed.shards import FORMAT, ShardIndex, write_shard
from innspect.errors import InputError
from innspect.loading.inputs import default_preprocess
from innspect.loading.models import ModelSpec, model_fingerprint
from innspect.loading.sources import DataSource, as_source
from innspect.util.progress import progress_bar


# -- computing one shard -----------------------------------------------------------------------
class ShardRunner:
    """Builds each method's analyzer once (the captured graph is kept across shards) and
    computes shards: per method the attribution, the selected neuron and its score."""

    def __init__(
        self,
        model: nn.Module | ModelSpec,
        source: DataSource,
        methods: Sequence[str],
        options: dict[str, dict[str, Any]],
        batch_size: int,
        neuron: int | None,
        num_threads: int | None = None,
        relevances: Sequence[str] = (),
    ) -> None:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.source = source
        if isinstance(model, ModelSpec):
            model = model.load(torch.as_tensor(source.read(0, 1)[0]))
        self.model = model
        self.fingerprint = model_fingerprint(model)
        self.batch_size = batch_size
        self.neuron = neuron
        self.options = options
        self.relevances = list(relevances)
        self.analyzers = {m: create_analyzer(m, model, **options.get(m, {})) for m in methods}

    def compute(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Arrays of samples [start, stop), batch by batch from ``start``."""
        parts: dict[str, list[np.ndarray]] = {}
        for first in range(start, stop, self.batch_size):
            # NumPy in: the analyzers put it on the model's device (a worker's GPU too).
            x, y = self.source.read(first, min(first + self.batch_size, stop))
            if y is not None:
                parts.setdefault("labels", []).append(np.asarray(y))
            for method, analyzer in self.analyzers.items():
                explanation = analyzer.explain(x, self.neuron)
                parts.setdefault(f"{method}/attribution", []).append(
                    explanation.attribution.detach().cpu().numpy().astype(np.float32)
                )
                selected = explanation.selected
                if selected is not None:
                    parts.setdefault(f"{method}/selected", []).append(
                        selected.detach().cpu().numpy().astype(np.int64)
                    )
                parts.setdefault(f"{method}/scores", []).append(
                    explanation.scores.detach().cpu().numpy().astype(np.float64)
                )
                for node in self.relevances:
                    if node not in explanation.relevances:
                        raise InputError(
                            f"{method} has no layer-wise relevance at node '{node}'; nodes: "
                            f"{', '.join(explanation.relevances)}"
                        )
                    value = explanation.relevances[node].detach().cpu().numpy()
                    parts.setdefault(f"{method}/relevances/{node}", []).append(
                        value.astype(np.float32)
                    )
        return {name: np.concatenate(values) for name, values in parts.items()}


# -- the index ---------------------------------------------------------------------------------
def _header(
    fingerprint: str,
    source: DataSource,
    methods: Sequence[str],
    options: dict[str, dict[str, Any]],
    batch_size: int,
    shard_size: int,
    neuron: int | None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": fingerprint,
        "methods": list(methods),
        "options": {m: jsonable(options.get(m, {}), fallback=stable_repr) for m in methods},
        "neuron": neuron,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "samples": len(source),
        "sample_shape": list(source.sample_shape),
    }


# -- the entry point ---------------------------------------------------------------------------
def model_and_source(
    model: nn.Module | ModelSpec | str,
    data: Any,
    backend: str,
    batch_size: int,
    shard_size: int,
    weights: str | None,
    preprocess: str | None,
    seed: int,
) -> tuple[nn.Module | ModelSpec, DataSource]:
    """A data-set run's model (a module, or the spec workers build it from) and its data as
    a source, after the checks every data-set runner makes."""
    if backend not in ("local", "ray"):
        raise InputError(f"backend must be 'local' or 'ray', got {backend!r}")
    if batch_size < 1 or shard_size < 1:
        raise InputError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    if isinstance(model, str):
        model = ModelSpec(model, weights, seed)
    elif weights is not None:
        raise InputError("weights= goes with a model spec string, not with a module")
    if backend == "ray" and not isinstance(model, ModelSpec):
        raise InputError(
            "backend='ray' builds the model on each worker from a spec: give model as "
            "'torchvision:NAME', 'package.module:factory', a TorchScript file or 'keras:FILE', "
            "with weights='state_dict.pt' where it has them (modules are never pickled)"
        )
    spec = model.spec if isinstance(model, ModelSpec) else ""
    source = as_source(data, preprocess or default_preprocess(spec))
    if len(source) == 0:
        raise InputError("the data set is empty")
    return model, source


def explain_dataset(
    model: nn.Module | ModelSpec | str,
    data: Any,
    methods: str | Sequence[str],
    out: str | os.PathLike,
    backend: str = "local",
    num_workers: int | None = None,
    batch_size: int = 32,
    shard_size: int = 256,
    neuron: int | None = None,
    weights: str | None = None,
    preprocess: str | None = None,
    address: str | None = None,
    verbose: bool = True,
    relevances: Sequence[str] = (),
    gpus_per_worker: float = 0.0,
    **options: Any,
) -> Path:
    """Explain every sample of ``data`` with every method, writing shards to ``out``.

    Parameters
    ----------
    model
        An ``nn.Module`` (local backend only), or a model spec string / :class:`ModelSpec`
        (TorchScript file, ``torchvision:NAME``, ``package.module:factory``) with ``weights``
        a state dict file: the form workers on other processes or machines build it from.
    data
        An array or ``(X, Y)`` pair, a ``.npy`` / HDF5 path, a folder of images
        (preprocessed as ``innspect analyze`` does), or a map-style torch ``Dataset``.
    methods
        Analyzer names; ``options`` go to the methods that take them.
    backend
        "local" (this process, no Ray needed) or "ray" (``num_workers`` actors on the Ray
        cluster at ``address``, or a local one; needs ``innspect[ray]``).
    neuron
        The output neuron to explain for every sample (default: each sample's largest).
    relevances
        Node names (``innspect.engine.collect.node_names``) whose layer-wise relevance (the
        signal there) each method also writes, as ``METHOD/relevances/NODE``.
    gpus_per_worker
        Ray only: GPUs each worker reserves and runs its model on (0.5: two workers share
        one). The local backend runs where the module is: move it with ``model.to("cuda")``.

    Returns the output folder; :func:`read_shards` reads it back.
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise InputError("no method given: name at least one analyzer")
    seed = options.pop("seed", 0)
    if gpus_per_worker and backend != "ray":
        raise InputError(
            "gpus_per_worker goes with backend='ray'; locally, pass a module already on the "
            "GPU (model.to('cuda')): the data follows the model"
        )
    model, source = model_and_source(
        model, data, backend, batch_size, shard_size, weights, preprocess, seed
    )
    per_method = options_for_methods(methods, options, seed, neuron)
    relevances = [relevances] if isinstance(relevances, str) else list(relevances)
    if relevances:
        for method in methods:
            if "reverse_keep_tensors" not in analyzer_parameters(analyzer_class(method))[0]:
                raise InputError(f"{method} has no layer-wise relevances: leave relevances=")
            per_method[method]["reverse_keep_tensors"] = True
    runner = ShardRunner(model, source, methods, per_method, batch_size, neuron, None, relevances)
    header = _header(
        runner.fingerprint, source, methods, per_method, batch_size, shard_size, neuron
    )
    header["relevances"] = relevances
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = ShardIndex(out, header, source.describe())
    todo = index.pending()
    index.save()
    if backend == "local":
        _run_local(runner, index, todo, verbose)
    else:
        _run_ray(model, runner, index, todo, num_workers, address, verbose, gpus_per_worker)
    return out


def _bar(index: ShardIndex, todo: list[int], verbose: bool) -> Any:
    total = sum(index.shards[i]["stop"] - index.shards[i]["start"] for i in todo)
    return progress_bar(total, verbose, desc="explaining", unit="sample")


def _run_local(runner: ShardRunner, index: ShardIndex, todo: list[int], verbose: bool) -> None:
    bar = _bar(index, todo, verbose)
    for i in todo:
        shard = index.shards[i]
        arrays = runner.compute(shard["start"], shard["stop"])
        index.finish(i, write_shard(index.out / shard["file"], arrays, **_range(shard)))
        if bar is not None:
            bar.update(shard["stop"] - shard["start"])
    if bar is not None:
        bar.close()


class ShardJob:
    """A Ray task's work: the shard of samples [start, stop) (the ShardRunner, with its
    analyzers and captured graphs, stays in the worker's cache)."""

    def __init__(
        self,
        source: DataSource,
        methods: list[str],
        options: dict,
        batch_size: int,
        neuron: int | None,
        relevances: list[str],
    ) -> None:
        self.settings = (source, methods, options, batch_size, neuron, None, relevances)
        self.token = uuid.uuid4().hex  # the worker's cache is this job's only

    def __call__(self, model: nn.Module, cache: dict, start: int, stop: int) -> dict:
        if "runner" not in cache:
            cache["runner"] = ShardRunner(model, *self.settings)
        return cache["runner"].compute(start, stop)


def _run_ray(
    spec: ModelSpec,
    runner: ShardRunner,
    index: ShardIndex,
    todo: list[int],
    num_workers: int | None,
    address: str | None,
    verbose: bool,
    gpus_per_worker: float = 0.0,
) -> None:
    bar = _bar(index, todo, verbose)
    job = ShardJob(
        runner.source,
        list(runner.analyzers),
        runner.options,
        runner.batch_size,
        runner.neuron,
        runner.relevances,
    )

    def on_result(k: int, arrays: dict[str, np.ndarray]) -> None:
        shard = index.shards[todo[k]]
        index.finish(todo[k], write_shard(index.out / shard["file"], arrays, **_range(shard)))
        if bar is not None:
            bar.update(shard["stop"] - shard["start"])

    example = runner.source.read(0, 1)[0]
    ranges = [(index.shards[i]["start"], index.shards[i]["stop"]) for i in todo]
    run_jobs(
        spec, example, runner.fingerprint, job, ranges, on_result, num_workers, address,
        gpus_per_worker=gpus_per_worker,
    )  # fmt: skip
    if bar is not None:
        bar.close()


def _range(shard: dict[str, Any]) -> dict[str, int]:
    return {"start": shard["start"], "stop": shard["stop"]}
