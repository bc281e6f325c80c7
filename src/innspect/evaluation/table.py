"""``evaluate``: several methods scored by several metrics on one batch, as a table.

Each method explains ``x`` once (for the target class of each sample); each metric then scores
every method's attributions. The table keeps the per-sample scores and gives each cell's mean
with a 95 % confidence interval (Student's t over the samples where the score is defined).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from innspect.analyzers.api import Analyzer
from innspect.analyzers.registry import create_analyzer
from innspect.errors import InputError
from innspect.evaluation.aggregate import ScoreSummary
from innspect.evaluation.metric import (
    Metric,
    MetricResult,
    as_batch,
    as_labels,
    create_metric,
    predict,
)
from innspect.util.files import write_text
from innspect.util.tensors import model_device_dtype


def mean_interval(scores: torch.Tensor) -> tuple[float, float, float, int]:
    """Mean, 95 % interval (low, high) and count of the finite scores (NaN interval for n<2)."""
    summary = ScoreSummary.of(scores)
    return (summary.mean, *summary.interval(), summary.n)


@dataclass
class EvaluationTable:
    """Methods x metrics: per-sample results, means with 95 % intervals, ranks.

    Attributes
    ----------
    methods, metrics
        Row and column names, in the order asked.
    results
        ``results[method][metric]``: the :class:`MetricResult` (per-sample scores, curves).
    targets
        The class explained for each sample.
    """

    methods: list[str]
    metrics: list[str]
    results: dict[str, dict[str, MetricResult]] = field(default_factory=dict)
    targets: torch.Tensor | None = None

    def scores(self, method: str, metric: str) -> torch.Tensor:
        """Per-sample scores of one cell."""
        return self.results[method][metric].scores

    def rows(self) -> list[dict[str, Any]]:
        """One record per cell: method, metric, mean, ci_low, ci_high, n, higher_is_better,
        rank (1 = best among the methods for that metric; None where no direction)."""
        records = []
        for metric in self.metrics:
            ranks = self.ranks(metric)
            for method in self.methods:
                result = self.results[method][metric]
                mean, low, high, n = mean_interval(result.scores)
                records.append(
                    {
                        "method": method,
                        "metric": metric,
                        "mean": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "n": n,
                        "higher_is_better": result.higher_is_better,
                        "rank": ranks.get(method),
                    }
                )
        return records

    def ranks(self, metric: str) -> dict[str, int]:
        """Rank of each method by its mean score on ``metric`` (1 = best; NaN means last).

        Equal means share a rank, the best of their places ("1224" ranking): the order of
        the methods asked must not decide between equal scores."""
        direction = self.results[self.methods[0]][metric].higher_is_better
        if direction is None:
            return {}
        means = {m: self.results[m][metric].mean() for m in self.methods}

        def key(method: str) -> float:
            value = means[method]
            if math.isnan(value):
                return math.inf
            return -value if direction else value

        keys = {m: key(m) for m in self.methods}
        return {m: 1 + sum(keys[o] < keys[m] for o in self.methods) for m in self.methods}

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The ``rows`` as CSV text; written (atomically) to ``path`` when given."""
        buffer = io.StringIO()
        names = ["method", "metric", "mean", "ci_low", "ci_high", "n", "higher_is_better", "rank"]
        writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        if path is not None:
            write_text(path, buffer.getvalue())
        return buffer.getvalue()

    def __str__(self) -> str:
        width = max(len(m) for m in self.methods) + 2
        header = "method".ljust(width) + "".join(f"{m[:22]:>24}" for m in self.metrics)
        lines = [header]
        for method in self.methods:
            cells = []
            for metric in self.metrics:
                mean, low, high, _ = mean_interval(self.scores(method, metric))
                half = (high - low) / 2 if not math.isnan(low) else math.nan
                cells.append(f"{mean:>13.4g} ± {half:<8.2g}")
            lines.append(method.ljust(width) + "".join(cells))
        return "\n".join(lines)


def evaluate(
    model: nn.Module,
    x: Any,
    methods: Sequence[str | Analyzer] | Mapping[str, Any],
    metrics: Sequence[str | Metric],
    target: Any = None,
    *,
    mask: Any = None,
    mosaic_labels: Any = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> EvaluationTable:
    """Score every method's attributions of ``x`` with every metric.

    Parameters
    ----------
    model
        The classifier (N, classes); never modified.
    x
        The inputs (N, ...).
    methods
        Analyzer names (``innspect.list_analyzers()``), analyzers, or a mapping from a label
        to an analyzer name, an analyzer or precomputed attributions (a tensor).
    metrics
        Metric names (``innspect.evaluation.METRICS``) or configured metrics.
    target
        The class to explain and score, an int or one per sample; default: the model's
        prediction.
    mask, mosaic_labels
        Passed to the metrics that take them (localisation metrics, Focus).
    metric_options, method_options
        Options per metric name / method name, e.g. ``{"pixel_flipping":
        {"features_in_step": 16}}``.
    seed
        Seeds a fresh ``torch.Generator`` per metric and method: reruns repeat exactly.
    """
    device, dtype = model_device_dtype(model)
    x = as_batch(x, "x", device, dtype)
    if target is None:
        labels = predict(model, x, softmax=False).argmax(dim=1)
    else:
        labels = as_labels(target, x.shape[0], x.device)
    metric_objects = make_metrics(metrics, metric_options or {})
    table = EvaluationTable([], [m.name for m in metric_objects], targets=labels.cpu())
    entries = methods.items() if isinstance(methods, Mapping) else _labelled(methods)
    extra = {"mask": mask, "mosaic_labels": mosaic_labels}
    for label, method in entries:
        analyzer = method_analyzer(model, method, (method_options or {}).get(label))
        attributions = method if analyzer is None else _attributions(model, x, labels, analyzer)
        table.methods.append(label)
        table.results[label] = {}
        for metric in metric_objects:
            inputs = {k: v for k, v in extra.items() if k in metric.inputs and v is not None}
            if "method" in metric.inputs:
                if analyzer is None:
                    raise InputError(
                        f"{metric.name} re-explains the inputs: give method {label!r} as an "
                        "analyzer name or an analyzer, not as attributions"
                    )
                inputs["method"] = analyzer
            if "generator" in metric.inputs:
                inputs["generator"] = torch.Generator().manual_seed(seed)
            table.results[label][metric.name] = metric(model, x, labels, attributions, **inputs)
    return table


def _labelled(methods: Sequence[str | Analyzer]) -> list[tuple[str, Any]]:
    if isinstance(methods, str):
        methods = [methods]
    return [(m if isinstance(m, str) else type(m).name, m) for m in methods]


def make_metrics(
    metrics: Sequence[str | Metric], options: Mapping[str, Mapping[str, Any]]
) -> list[Metric]:
    """Metric objects from names (with their options) or configured metrics; each once."""
    if isinstance(metrics, str | Metric):
        metrics = [metrics]
    made = []
    for metric in metrics:
        if isinstance(metric, Metric):
            made.append(metric)
        elif isinstance(metric, str):
            made.append(create_metric(metric, **dict(options.get(metric, {}))))
        else:
            raise InputError(f"a metric must be a name or a Metric, got {type(metric).__name__}")
    names = [m.name for m in made]
    if len(set(names)) != len(names):
        raise InputError(f"each metric may appear once, got {names}")
    return made


def method_analyzer(model: nn.Module, method: Any, options: Any) -> Analyzer | None:
    """The analyzer of a method (None for precomputed attributions); names explain the
    class given (``neuron_selection_mode="index"``)."""
    if isinstance(method, torch.Tensor):
        return None
    if isinstance(method, str):
        options = dict(options or {})
        options.setdefault("neuron_selection_mode", "index")
        return create_analyzer(method, model, **options)
    if isinstance(method, Analyzer):
        return method
    raise InputError(
        f"a method must be an analyzer name, an analyzer or attributions, got "
        f"{type(method).__name__}"
    )


def _attributions(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, analyzer: Analyzer
) -> torch.Tensor:
    if analyzer.neuron_selection_mode == "index":
        return analyzer.analyze(x, neuron_selection=labels)
    if analyzer.neuron_selection_mode == "max_activation":
        predicted = predict(model, x, softmax=False).argmax(dim=1)
        if not torch.equal(predicted, labels):
            raise InputError(
                f"analyzer {analyzer.name!r} explains the predicted class but the target "
                "differs: create it with neuron_selection_mode='index'"
            )
        return analyzer.analyze(x)
    raise InputError(
        f"analyzer {analyzer.name!r} has neuron_selection_mode={analyzer.neuron_selection_mode!r}"
        ": evaluate it with neuron_selection_mode='index' or 'max_activation'"
    )
