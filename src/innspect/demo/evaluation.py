"""The demo's "which method is most faithful on this model": every method the demo runs, scored
on the grid's digits by the faithfulness and complexity metrics and MPRT (``innspect.evaluation``),
as a ranked table (results.json, index.html) and the heat table ``evaluation_ranks.png``."""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from innspect.analyzers.api import Analyzer
from innspect.evaluation import evaluate
from innspect.evaluation.plots import mean_rank, plot_ranks
from innspect.evaluation.table import EvaluationTable

FIGURE = "evaluation_ranks.png"
# The metrics and their options, sized for 32 x 32 digits (1024 pixels) and 58 methods in a
# few tens of seconds. Left out as too slow for every method here (each is a command-line
# option away): monotonicity_correlation, selectivity, IROF and ROAD (tens of seconds each);
# and sufficiency, 0 for every method on this model at Quantus's default threshold.
METRIC_OPTIONS: dict[str, dict[str, Any]] = {
    "pixel_flipping": {"features_in_step": 64},  # 16 steps
    "region_perturbation": {"patch_size": 4, "regions_evaluation": 16},
    "faithfulness_correlation": {"nr_runs": 20, "subset_size": 64},
    "faithfulness_estimate": {"features_in_step": 64},
    "sparseness": {},
    "complexity": {},
    "effective_complexity": {},
    "mprt": {},
}


def run_evaluation_demo(
    model: nn.Module, images: torch.Tensor, analyzers: dict[str, Analyzer], out: Path
) -> dict[str, Any]:
    """Score every analyzer's explanations of ``images`` (their predicted classes) with the
    metrics of ``METRIC_OPTIONS``, write ``out/evaluation_ranks.png`` and return the summary
    for results.json (methods ordered by their mean rank over the metrics)."""
    started = time.perf_counter()
    table = evaluate(
        model,
        images,
        methods=analyzers,
        metrics=list(METRIC_OPTIONS),
        metric_options=METRIC_OPTIONS,
        seed=0,
    )
    plot_ranks(table, out / FIGURE)
    with Image.open(out / FIGURE) as image:  # the page gives the picture's size
        width, height = image.size
    return summary(table, len(images), time.perf_counter() - started) | {
        "file": FIGURE,
        "width": width,
        "height": height,
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def summary(table: EvaluationTable, n_images: int, seconds: float) -> dict[str, Any]:
    """The table as JSON-ready data: per method its mean rank, and per metric mean and rank."""
    overall = mean_rank(table)
    order = sorted(table.methods, key=lambda m: (math.isnan(overall[m]), overall[m]))
    cells = {(r["method"], r["metric"]): r for r in table.rows()}
    directions = {m: table.results[order[0]][m].higher_is_better for m in table.metrics}
    return {
        "n_images": n_images,
        "seconds": seconds,
        "metrics": [
            {"name": m, "higher_is_better": directions[m], "options": METRIC_OPTIONS.get(m, {})}
            for m in table.metrics
        ],
        "ranking": [
            {
                "method": method,
                "mean_rank": _number(overall[method]),
                "scores": {
                    metric: {
                        "mean": _number(cells[method, metric]["mean"]),
                        "rank": cells[method, metric]["rank"],
                    }
                    for metric in table.metrics
                },
            }
            for method in order
        ],
    }


def evaluation_html(evaluation: dict[str, Any], titles: dict[str, str]) -> str:
    """The page's section: the ranked table and the heat-table figure."""
    e = html.escape
    arrows = {True: " &uarr;", False: " &darr;", None: ""}
    head = "".join(
        f"<th>{e(m['name'])}{arrows[m['higher_is_better']]}</th>" for m in evaluation["metrics"]
    )
    rows = []
    for place, item in enumerate(evaluation["ranking"], start=1):
        cells = []
        for metric in evaluation["metrics"]:
            cell = item["scores"][metric["name"]]
            mean = "n/a" if cell["mean"] is None else f"{cell['mean']:.3g}"
            rank = "" if cell["rank"] is None else f" <small>#{cell['rank']}</small>"
            cells.append(f'<td class="num">{mean}{rank}</td>')
        mean_rank_text = "n/a" if item["mean_rank"] is None else f"{item['mean_rank']:.1f}"
        title = titles.get(item["method"], item["method"])
        rows.append(
            f'<tr><td class="num">{place}</td><td>{e(title)}<br><code>{e(item["method"])}'
            f'</code></td><td class="num"><b>{mean_rank_text}</b></td>{"".join(cells)}</tr>'
        )
    return f"""
<h2>Which method is most faithful on this model</h2>
<p>Every method above explains the {evaluation["n_images"]} digits of the grid (their predicted
classes), and <code>innspect.evaluation</code> scores the explanations with Quantus's
faithfulness metrics (does removing what the method calls relevant change the output most?),
its complexity metrics (how concentrated is the map?) and the model parameter randomisation test
(MPRT: does the map change when the model's layers are randomised? lower similarity is better).
Each method is ranked per metric (#1 best; &uarr; higher is better, &darr; lower is better) and
the table is sorted by the mean rank over the metrics; took {evaluation["seconds"]:.0f}&nbsp;s.
Rankings on {evaluation["n_images"]} digits are noisy and metrics disagree: read the columns,
not only the mean. The same analysis for any model: <code>innspect evaluate</code>.</p>
<figure>
<img src="{e(evaluation["file"])}" alt="methods by metrics: mean score and rank per cell"
 width="{evaluation["width"]}" height="{evaluation["height"]}">
<figcaption>Methods (rows, best mean rank first) by metrics (columns): each cell the mean score
and the method's rank for that metric, green best, red last.</figcaption>
</figure>
<table><thead><tr><th>#</th><th>method</th><th>mean rank</th>{head}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
"""
