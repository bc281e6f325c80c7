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

Localisation metrics take a mask per sample and Focus a mosaic's quadrant flags: ``masks=``
and ``mosaic_labels=`` give them aligned with the data
(:mod:`innspect.evaluation.sample_inputs`). Each shard stores the SHA-256 of the values it
was scored with (``inputs_sha256/NAME``); a resumed run recomputes the digests of the shards
already written and refuses a folder scored with other masks, so a result never mixes two
sets of masks.
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

from innspect.analyzers.options import jsonable, stable_repr
from innspect.distributed.dataset import model_and_source
from innspect.distributed.ray_backend import run_jobs
from innspect.distributed.shards import ShardIndex, write_shard
from innspect.errors import InputError
from innspect.evaluation.aggregate import ScoreSummary
from innspect.evaluation.sample_inputs import (
    ARGUMENTS,
    SampleInputs,
    digest,
    sample_inputs,
)
from innspect.evaluation.table import evaluate, make_metrics, method_analyzer
from innspect.loading.models import ModelSpec, model_fingerprint
from innspect.loading.sources import DataSource
from innspect.util.files import write_text
from innspect.util.progress import progress_bar

FORMAT = "innspect-evaluation/1"


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
        per_sample: Mapping[str, SampleInputs] | None = None,
    ) -> None:
        self.source = source
        self.per_sample = dict(per_sample or {})
        self.sample_shape = tuple(source.sample_shape) if self.per_sample else ()
        if isinstance(model, ModelSpec):
            model = model.load(torch.as_tensor(source.read(0, 1)[0]))
        self.model = model
        self.fingerprint = model_fingerprint(model)
        self.settings = (
            methods, metrics, method_options, metric_options, batch_size, seed, target,
            self.per_sample,
        )  # fmt: skip
        self.methods = {m: method_analyzer(model, m, method_options.get(m)) for m in methods}
        self.metrics = make_metrics(list(metrics), metric_options)
        taken = {k for metric in self.metrics for k in metric.inputs if k in ARGUMENTS}
        for metric in self.metrics:
            for name in (k for k in metric.inputs if k in ARGUMENTS):
                if name not in self.per_sample:
                    needed, folder = "mosaic labels", ""
                    if name == "mask":
                        needed, folder = "a mask", ", or a folder of masks named after the images"
                    raise InputError(
                        f"{metric.name} needs {needed} per sample: give evaluate_dataset "
                        f"{ARGUMENTS[name]}= (an array aligned with the data, a .npy file, a "
                        f"function of the sample index{folder})"
                    )
        for name in self.per_sample:
            if name not in taken:
                raise InputError(
                    f"{ARGUMENTS[name]}= given but none of the metrics {list(metrics)} takes "
                    f"{ARGUMENTS[name].replace('_', ' ')}: leave it out, or add a metric that "
                    "uses them"
                )
        self.batch_size, self.seed, self.target = batch_size, seed, target

    def read_per_sample(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The masks / mosaic labels of samples [start, stop), checked, in canonical form."""
        shape = self.sample_shape
        return {name: inputs.read(start, stop, shape) for name, inputs in self.per_sample.items()}

    def digests(self, start: int, stop: int) -> dict[str, bytes]:
        """SHA-256 of each per-sample input of samples [start, stop) (read batch by batch)."""
        running: dict[str, Any] = {}
        for first in range(start, stop, self.batch_size):
            values = self.read_per_sample(first, min(first + self.batch_size, stop))
            for name, array in values.items():
                running[name] = digest(array, running.get(name))
        return {name: value.digest() for name, value in running.items()}

    def compute(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Per-sample scores of samples [start, stop) and each cell's summary."""
        parts: dict[str, list[np.ndarray]] = {}
        running: dict[str, Any] = {}
        for first in range(start, stop, self.batch_size):
            last = min(first + self.batch_size, stop)
            x, y = self.source.read(first, last)
            if self.target == "label" and y is None:
                raise InputError("target='label' but the data set has no labels")
            per_sample = self.read_per_sample(first, last)
            for name, values in per_sample.items():
                running[name] = digest(values, running.get(name))
            table = evaluate(
                self.model,
                x,
                self.methods,
                self.metrics,
                target=y if self.target == "label" else None,
                seed=self.seed + first,
                **{name: torch.from_numpy(values) for name, values in per_sample.items()},
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
        for name, value in running.items():
            # what the shard was scored with: checked when a later run resumes the folder
            arrays[f"inputs_sha256/{name}"] = np.frombuffer(value.digest(), dtype=np.uint8)
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
    masks: Any = None,
    mosaic_labels: Any = None,
) -> DatasetEvaluation:
    """Score every method's attributions of every sample of ``data`` with every metric.

    Parameters
    ----------
    model, data, backend, num_workers, batch_size, shard_size, weights, preprocess, address
        As :func:`innspect.explain_dataset`: a module (local backend) or a model spec, and an
        array, ``(X, Y)`` pair, ``.npy`` / HDF5 file, image folder or torch ``Dataset``.
    methods, metrics
        Analyzer names and metric names (``innspect.evaluation.METRICS``).
    target
        ``"prediction"`` (default: each sample's predicted class, as ``evaluate``) or
        ``"label"`` (the data set's labels).
    method_options, metric_options
        Options per method / metric name, as ``evaluate``'s.
    seed
        Stochastic metrics get a generator seeded with ``seed`` plus the index of the batch's
        first sample: reruns repeat exactly, on any backend.
    masks, mosaic_labels
        The localisation metrics' mask and Focus's quadrant flags of each sample, aligned with
        the data: an array or tensor (N, ...), a ``.npy`` file, a function of the sample
        index (``lambda i: dataset[i][2]``) or, for masks with a folder of images as the data,
        a folder of one mask per image named after it (``.npy`` or an image, non-zero pixels
        the object). A mask has the sample's shape, or lacks or has size 1 on its first
        (channel) axis; errors name the sample. Each shard keeps the digest of the values it
        was scored with: resuming with other masks is refused.

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
    given = {"mask": masks, "mosaic_labels": mosaic_labels}
    per_sample = {k: sample_inputs(k, v, source) for k, v in given.items() if v is not None}
    runner = EvaluationRunner(
        model, source, methods, metrics, method_options, metric_options, batch_size, seed, target,
        per_sample,
    )  # fmt: skip
    header = {
        "format": FORMAT,
        "model": runner.fingerprint,
        "methods": methods,
        "metrics": [m.name for m in runner.metrics],
        "method_options": jsonable(method_options, fallback=stable_repr),
        "metric_options": jsonable(metric_options, fallback=stable_repr),
        "target": target,
        "seed": seed,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "samples": len(source),
        "sample_shape": list(source.sample_shape),
    }
    if per_sample:
        # None (no key) for runs without: folders written before masks existed still resume
        header["per_sample_inputs"] = sorted(per_sample)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = ShardIndex(out, header, source.describe())
    todo = index.pending()
    _check_per_sample(out, index, todo, runner)
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


def _check_per_sample(
    out: Path, index: ShardIndex, todo: list[int], runner: EvaluationRunner
) -> None:
    """Refuse a folder whose written shards were scored with other masks / mosaic labels
    than this run's (their digests are recomputed from this run's values)."""
    if not runner.per_sample:
        return
    for i, shard in enumerate(index.shards):
        if i in todo:
            continue
        expected = runner.digests(shard["start"], shard["stop"])
        with h5py.File(out / shard["file"], "r") as handle:
            stored = {
                name: bytes(handle[f"inputs_sha256/{name}"][()])
                for name in expected
                if f"inputs_sha256/{name}" in handle
            }
        for name, value in expected.items():
            if stored.get(name) != value:
                raise InputError(
                    f"{out / shard['file']} (samples {shard['start']}..{shard['stop'] - 1}) was "
                    f"scored with other {ARGUMENTS[name]} than this run's: give another out "
                    "folder, or delete the folder (or the shards of the samples whose "
                    f"{ARGUMENTS[name]} changed) to score them again"
                )


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
