"""Figures of an :class:`~innspect.evaluation.table.EvaluationTable`.

One figure of curves per metric family with ordered curves (pixel flipping, region perturbation,
ROAD... in ``curves_faithfulness.png``; MPRT's similarity per randomised layer in
``curves_randomisation.png``): one panel per metric, one line per method (the mean curve over
the samples). And ``ranks.png``: the methods x metrics heat table, each cell the method's mean
score and its rank among the methods for that metric, coloured by rank, rows sorted by the
mean rank. matplotlib is imported when a figure is drawn, not with the package.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from innspect.errors import OptionError
from innspect.evaluation.metric import metric_class
from innspect.evaluation.table import EvaluationTable, mean_interval
from innspect.viz.files import save_figure

DPI = 100
PANEL_SIZE = (5.2, 3.4)  # inches of one curve panel (the legend sits inside it)
RANKS_FILE = "ranks.png"
# Metrics whose curve is a series in order: the score after each perturbation step (most
# relevant first) or, for MPRT, after each randomised layer. Other metrics' curves are
# unordered draws (faithfulness correlation's random subsets, robustness' perturbations).
CURVE_METRICS = (
    "pixel_flipping",
    "region_perturbation",
    "selectivity",
    "irof",
    "monotonicity",
    "road",
    "mprt",
    "smooth_mprt",
)


def family_of_metric(name: str) -> str:
    """The family of a metric name (faithfulness, robustness...); "other" for unknown names
    (a Metric subclass the user made without registering it)."""
    try:
        return metric_class(name).family or "other"
    except OptionError:  # an unregistered metric still gets its figure
        return "other"


def curve_metrics(table: EvaluationTable) -> dict[str, list[str]]:
    """Family -> the metrics of the table in ``CURVE_METRICS`` whose every method has a curve
    of >= 2 points."""
    families: dict[str, list[str]] = {}
    for metric in (m for m in table.metrics if m in CURVE_METRICS):
        curves = [table.results[m][metric].curves for m in table.methods]
        if all(c is not None and c.ndim == 2 and c.shape[1] >= 2 for c in curves):
            families.setdefault(family_of_metric(metric), []).append(metric)
    return families


def mean_rank(table: EvaluationTable) -> dict[str, float]:
    """Each method's mean rank over the metrics that have a direction (NaN if none has)."""
    ranked = [table.ranks(metric) for metric in table.metrics]
    ranked = [ranks for ranks in ranked if ranks]
    if not ranked:
        return {m: math.nan for m in table.methods}
    return {m: sum(r[m] for r in ranked) / len(ranked) for m in table.methods}


def plot_curves(table: EvaluationTable, metrics: list[str], path: str | os.PathLike) -> Any:
    """One panel per metric, one line per method: the mean over the samples of its curve.

    The x axis is the perturbation step (the curve's point), or the randomised layer where the
    metric names its points (MPRT). Returns the matplotlib Figure, written to ``path``.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    columns = min(2, len(metrics))
    rows = -(-len(metrics) // columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows))
    grid = figure.subplots(rows, columns, squeeze=False)
    colours = colormaps["tab10"].colors
    styles = ("-", "--", ":", "-.")
    for index, metric in enumerate(metrics):
        axes = grid[index // columns][index % columns]
        ranks = table.ranks(metric)
        order = sorted(table.methods, key=lambda m: ranks.get(m, 0))
        labels = None
        for k, method in enumerate(order):
            result = table.results[method][metric]
            curve = torch.nanmean(result.curves, dim=0).numpy()
            labels = labels or result.labels
            score = result.mean()
            rank = f", #{ranks[method]}" if method in ranks else ""
            style = (
                {"color": "black", "linestyle": "--"}
                if method == "random"
                else {
                    "color": colours[k % len(colours)],
                    "linestyle": styles[(k // len(colours)) % len(styles)],
                }
            )
            axes.plot(
                range(1, len(curve) + 1),
                curve,
                linewidth=1.4,
                label=f"{method} ({score:.3g}{rank})",
                **style,
            )
        direction = result.higher_is_better
        better = {True: "higher is better", False: "lower is better"}.get(direction, "")
        axes.set_title(f"{metric}" + (f" ({better})" if better else ""), fontsize=9)
        if labels:
            axes.set_xticks(range(1, len(labels) + 1))
            axes.set_xticklabels(labels, rotation=45, ha="right", fontsize=6)
            axes.set_xlabel("randomised layer (in the metric's layer order)", fontsize=8)
        else:
            axes.set_xlabel("perturbation step (most relevant first)", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=6, title="method (score, rank)", title_fontsize=6, ncol=1)
    for index in range(len(metrics), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    figure.tight_layout()
    save_figure(figure, path, dpi=DPI)
    return figure


def plot_ranks(table: EvaluationTable, path: str | os.PathLike) -> Any:
    """The methods x metrics heat table: mean score and rank per cell, coloured by rank
    (dark green best, red last; grey where a metric has no direction), rows sorted by the
    mean rank (last column). Returns the matplotlib Figure, written to ``path``."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    overall = mean_rank(table)
    methods = sorted(table.methods, key=lambda m: (math.isnan(overall[m]), overall[m]))
    columns = [*table.metrics, "mean rank"]
    label_width = 0.09 * max(len(m) for m in methods) + 0.3
    width = label_width + 1.25 * len(columns)
    height = 0.9 + 0.3 * len(methods)
    figure = Figure(figsize=(width, height))
    # room on the left for the method names and on top for the metric names
    axes = figure.add_axes(
        (label_width / width, 0.05 / height, 1 - label_width / width - 0.01, 1 - 0.85 / height)
    )
    colormap = colormaps["RdYlGn"]
    n = len(methods)
    for column, metric in enumerate(columns):
        ranks = {m: overall[m] for m in methods} if metric == "mean rank" else table.ranks(metric)
        for row, method in enumerate(methods):
            rank = ranks.get(method, math.nan)
            colour = (
                (0.9, 0.9, 0.9)
                if math.isnan(rank)
                else colormap(1.0 - (rank - 1) / max(n - 1, 1) * 0.9)
            )
            axes.add_patch(_rectangle((column, n - 1 - row), colour))  # first row on top
            if metric == "mean rank":
                text = "" if math.isnan(rank) else f"{rank:.2f}"
            else:
                mean = mean_interval(table.scores(method, metric))[0]
                text = f"{mean:.3g}" + ("" if math.isnan(rank) else f"  #{int(rank)}")
            axes.text(column + 0.5, n - 0.5 - row, text, ha="center", va="center", fontsize=7)
    axes.set_xlim(0, len(columns))
    axes.set_ylim(0, n)
    axes.set_xticks([c + 0.5 for c in range(len(columns))])
    axes.set_xticklabels([_header(table, m) for m in columns], fontsize=7, rotation=30, ha="left")
    axes.xaxis.tick_top()
    axes.set_yticks([n - 0.5 - r for r in range(n)])
    axes.set_yticklabels(methods, fontsize=7)
    axes.tick_params(length=0)
    for spine in axes.spines.values():
        spine.set_visible(False)
    save_figure(figure, path, dpi=DPI)
    return figure


def _rectangle(corner: tuple[float, float], colour: Any) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(corner, 1, 1, facecolor=colour, edgecolor="white", linewidth=1)


def _header(table: EvaluationTable, metric: str) -> str:
    if metric == "mean rank":
        return metric
    direction = table.results[table.methods[0]][metric].higher_is_better
    return metric + {True: " ↑", False: " ↓"}.get(direction, "")


def write_figures(table: EvaluationTable, folder: str | os.PathLike) -> list[str]:
    """Write ``curves_<family>.png`` per family with curves and ``ranks.png`` into ``folder``;
    returns the file names written (curves first)."""
    folder = Path(folder)
    names = []
    for family, metrics in curve_metrics(table).items():
        name = f"curves_{family}.png"
        plot_curves(table, metrics, folder / name)
        names.append(name)
    plot_ranks(table, folder / RANKS_FILE)
    names.append(RANKS_FILE)
    return names
