"""``evaluate_dataset``: methods x metrics over a whole data set, in resumable shards.

The runner of ``explain_dataset`` (``innspect.distributed``): the samples are cut into shards
of ``shard_size``, each computed batch by batch from its first sample (locally, or on Ray
actors that build the model from its spec) and written atomically to one HDF5 file with its
SHA-256 in ``index.json``; a second call with the same ``out`` redoes only the missing or
corrupted shards and refuses a folder written for another model, data, method or metric set.

Each shard holds every cell's per-sample scores (``METHOD/METRIC``) and their summary
(``summary/METHOD/METRIC``: count, mean, squared deviations), merged exactly across shards
(:mod:`innspect.evaluation.aggregate`). Stochastic metrics get a generator seeded from
``seed`` and the batch's first sample index, so a shard's bytes depend neither on the backend
nor on the worker that computed it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from innspect.analyzers.options import jsonable
from innspect.distributed.dataset import model_and_source
from innspect.distributed.ray_backend import run_jobs
from innspect.distributed.shards import ShardIndex, write_shard
from innspect.errors import InputError
from innspect.evaluation.aggregate import ScoreSummary
from innspect.evaluation.table import evaluate, make_metrics, method_analyzer
from innspect.loading.models import ModelSpec, model_fingerprint
from innspect.loading.sources import DataSource
from innspect.util.files import write_text
from innspect.util.progress import progress_bar

FORMAT = "innspect-evaluation/1"
# Inputs a metric takes per sample that a data source (images and labels) does not carry.
_PER_SAMPLE_INPUTS = ("mask", "mosaic_labels")


class EvaluationRunner:
    """Builds the analyzers and metrics once and scores shards, batch by batch."""

    def __init__(
        self,
        model: nn.Module | ModelSpec,
        source: DataSource,
        methods: Sequence[str],
        metrics: Sequence[str],
        method_options: Mapping[str, Mapping[str, Any]],
        metric_options: Mapping[str, Mapping[str, Any]],
        batch_size: int,
        seed: int,
        target: str,
    ) -> None:
        self.source = source
        if isinstance(model, ModelSpec):
            model = model.load(torch.as_tensor(source.read(0, 1)[0]))
        self.model = model
        self.fingerprint = model_fingerprint(model)
        self.settings = (methods, metrics, method_options, metric_options, batch_size, seed, target)
        self.methods = {m: method_analyzer(model, m, method_options.get(m)) for m in methods}
        self.metrics = make_metrics(list(metrics), metric_options)
        for metric in self.metrics:
            needed = [k for k in _PER_SAMPLE_INPUTS if k in metric.inputs]
            if needed:
                raise InputError(
                    f"{metric.name} needs {needed[0]}= per sample, which a data set of inputs "
                    "and labels does not hold: score it with innspect.evaluation.evaluate on "
                    f"batches with {needed[0]}="
                )
        self.batch_size, self.seed, self.target = batch_size, seed, target

    def compute(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Per-sample scores of samples [start, stop) and each cell's summary."""
        parts: dict[str, list[np.ndarray]] = {}
        for first in range(start, stop, self.batch_size):
            x, y = self.source.read(first, min(first + self.batch_size, stop))
            if self.target == "label" and y is None:
                raise InputError("target='label' but the data set has no labels")
            table = evaluate(
                self.model,
                x,
                self.methods,
                self.metrics,
                target=y if self.target == "label" else None,
                seed=self.seed + first,
            )
            parts.setdefault("targets", []).append(table.targets.numpy().astype(np.int64))
            for method in table.methods:
                for metric in table.metrics:
                    scores = table.scores(method, metric).double().numpy()
                    parts.setdefault(f"{method}/{metric}", []).append(scores)
        arrays = {name: np.concatenate(values) for name, values in parts.items()}
        for name in list(arrays):
            if name != "targets":
                arrays[f"summary/{name}"] = ScoreSummary.of(arrays[name]).as_array()
        return arrays


@dataclass
class DatasetEvaluation:
    """The merged result of :func:`evaluate_dataset`.

    Attributes
    ----------
    methods, metrics
        Row and column names, in the order asked.
    summaries
        ``summaries[method][metric]``: the :class:`ScoreSummary` of every sample's score.
    directions
        ``directions[metric]``: True where higher is better, False where lower, None where
        neither.
    out
        The folder holding the shards, ``index.json`` and ``results.json``.
    """

    methods: list[str]
    metrics: list[str]
    summaries: dict[str, dict[str, ScoreSummary]]
    directions: dict[str, bool | None]
    out: Path

    def rows(self) -> list[dict[str, Any]]:
        """One record per cell: method, metric, mean, ci_low, ci_high, n, higher_is_better."""
        records = []
        for metric in self.metrics:
            for method in self.methods:
                summary = self.summaries[method][metric]
                low, high = summary.interval()
                records.append(
                    {
                        "method": method,
                        "metric": metric,
                        "mean": summary.mean,
                        "ci_low": low,
                        "ci_high": high,
                        "n": summary.n,
                        "higher_is_better": self.directions[metric],
                    }
                )
        return records

    def scores(self, method: str, metric: str) -> np.ndarray:
        """Every sample's score of one cell, in sample order (read from the shards)."""
        index = json.loads((self.out / "index.json").read_text(encoding="utf-8"))
        values = []
        for shard in index["shards"]:
            with h5py.File(self.out / shard["file"], "r") as handle:
                values.append(handle[f"{method}/{metric}"][()])
        return np.concatenate(values)


def evaluate_dataset(
    model: nn.Module | ModelSpec | str,
    data: Any,
    methods: str | Sequence[str],
    metrics: str | Sequence[str],
    out: str | os.PathLike,
    *,
    target: str = "prediction",
    backend: str = "local",
    num_workers: int | None = None,
    batch_size: int = 32,
    shard_size: int = 256,
    weights: str | None = None,
    preprocess: str | None = None,
    address: str | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> DatasetEvaluation:
    """Score every method's attributions of every sample of ``data`` with every metric.

    Parameters
    ----------
    model, data, backend, num_workers, batch_size, shard_size, weights, preprocess, address
        As :func:`innspect.explain_dataset`: a module (local backend) or a model spec, and an
        array, ``(X, Y)`` pair, ``.npy`` / HDF5 file, image folder or torch ``Dataset``.
    methods, metrics
        Analyzer names and metric names (``innspect.evaluation.METRICS``). Localisation
        metrics and Focus need a mask per sample: score those with ``evaluate``.
    target
        ``"prediction"`` (default: each sample's predicted class, as ``evaluate``) or
        ``"label"`` (the data set's labels).
    method_options, metric_options
        Options per method / metric name, as ``evaluate``'s.
    seed
        Stochastic metrics get a generator seeded with ``seed`` plus the index of the batch's
        first sample: reruns repeat exactly, on any backend.

    Returns the merged means, intervals and counts (:class:`DatasetEvaluation`); ``out``
    holds the shards and ``results.json``.
    """
    if target not in ("prediction", "label"):
        raise InputError(f"target must be 'prediction' or 'label', got {target!r}")
    methods = [methods] if isinstance(methods, str) else list(methods)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not methods or not metrics:
        raise InputError("name at least one method and one metric")
    if not all(isinstance(m, str) for m in (*methods, *metrics)):
        raise InputError("evaluate_dataset takes method and metric names (workers build them)")
    model, source = model_and_source(
        model, data, backend, batch_size, shard_size, weights, preprocess, seed
    )
    method_options = {m: dict((method_options or {}).get(m, {})) for m in methods}
    metric_options = {m: dict((metric_options or {}).get(m, {})) for m in metrics}
    runner = EvaluationRunner(
        model, source, methods, metrics, method_options, metric_options, batch_size, seed, target
    )
    header = {
        "format": FORMAT,
        "model": runner.fingerprint,
        "methods": methods,
        "metrics": [m.name for m in runner.metrics],
        "method_options": jsonable(method_options, fallback=repr),
        "metric_options": jsonable(metric_options, fallback=repr),
        "target": target,
        "seed": seed,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "samples": len(source),
        "sample_shape": list(source.sample_shape),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = ShardIndex(out, header, source.describe())
    todo = index.pending()
    index.save()
    bar = progress_bar(
        sum(index.shards[i]["stop"] - index.shards[i]["start"] for i in todo),
        verbose,
        desc="evaluating",
        unit="sample",
    )

    def finished(i: int, arrays: dict[str, np.ndarray]) -> None:
        shard = index.shards[i]
        path = out / shard["file"]
        index.finish(i, write_shard(path, arrays, start=shard["start"], stop=shard["stop"]))
        if bar is not None:
            bar.update(shard["stop"] - shard["start"])

    if backend == "local":
        for i in todo:
            finished(i, runner.compute(index.shards[i]["start"], index.shards[i]["stop"]))
    elif todo:
        job = EvaluationJob(source, runner.settings)
        ranges = [(index.shards[i]["start"], index.shards[i]["stop"]) for i in todo]
        run_jobs(
            model, source.read(0, 1)[0], runner.fingerprint, job, ranges,
            lambda k, arrays: finished(todo[k], arrays), num_workers, address,
        )  # fmt: skip
    if bar is not None:
        bar.close()
    return _merge(out, index, methods, runner)


class EvaluationJob:
    """A Ray task's work: scores of the samples [start, stop) (the runner, with its analyzers
    and captured graphs, stays in the worker's cache)."""

    def __init__(self, source: DataSource, settings: tuple) -> None:
        self.source, self.settings = source, settings
        self.token = uuid.uuid4().hex  # the worker's cache is this job's only

    def __call__(self, model: nn.Module, cache: dict, start: int, stop: int) -> dict:
        if "runner" not in cache:
            cache["runner"] = EvaluationRunner(model, self.source, *self.settings)
        return cache["runner"].compute(start, stop)


def _merge(
    out: Path, index: ShardIndex, methods: list[str], runner: EvaluationRunner
) -> DatasetEvaluation:
    """Every shard's summaries merged in shard order; ``results.json`` written atomically."""
    metrics = [m.name for m in runner.metrics]
    parts: dict[str, dict[str, list[ScoreSummary]]] = {m: {k: [] for k in metrics} for m in methods}
    for shard in index.shards:
        with h5py.File(out / shard["file"], "r") as handle:
            for method in methods:
                for metric in metrics:
                    array = handle[f"summary/{method}/{metric}"][()]
                    parts[method][metric].append(ScoreSummary.from_array(array))
    summaries = {
        method: {metric: ScoreSummary.merged(parts[method][metric]) for metric in metrics}
        for method in methods
    }
    directions = {m.name: m.higher_is_better for m in runner.metrics}
    result = DatasetEvaluation(methods, metrics, summaries, directions, out)
    document = {"header": index.header, "rows": result.rows()}
    write_text(out / "results.json", json.dumps(document, indent=1, allow_nan=True) + "\n")
    return result
