"""The demo's tables and page: results.csv, results.json and index.html (written atomically)."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from typing import Any

from innspect.analyzers.families import FAMILIES
from innspect.demo.evaluation import evaluation_html
from innspect.demo.introspection import introspection_html
from innspect.util.files import write_text

CSV_COLUMNS = (
    "method",
    "time_per_image_ms",
    "aopc",
    "conservation_error",
    "relevance_method",
    "family",
)


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """One row per method; the conservation error is empty for non-relevance methods."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row["method"],
                f"{row['time_per_image_ms']:.4f}",
                f"{row['aopc']:.6f}",
                "" if row["conservation_error"] is None else f"{row['conservation_error']:.3e}",
                str(row["relevance_method"]).lower(),
                row["family"],
            ]
        )
    write_text(path, buffer.getvalue())


def write_json(path: str | os.PathLike, results: dict[str, Any]) -> None:
    """The whole run: model, settings, per-method results and curves, skipped methods."""
    write_text(path, json.dumps(results, indent=2) + "\n")


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.lead { color: #555; margin-top: 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.35em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f6f6f6; }
h3 { margin-top: 1.4em; }
pre { background: #f6f6f6; padding: 0.6em 1em; overflow-x: auto; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td code, li code { white-space: nowrap; }
tr.baseline td { background: #f3f3f3; }
.note { background: #f7f9fc; border-left: 3px solid #7a9cc6; padding: 0.6em 1em; }
.muted { color: #777; }
"""


def _number(value: float | None, digits: int = 2, scientific: bool = False) -> str:
    if value is None:
        return '<span class="muted">n/a</span>'
    return f"{value:.{digits}e}" if scientific else f"{value:.{digits}f}"


def _options(options: dict[str, Any]) -> str:
    if not options:
        return '<span class="muted">defaults</span>'
    return ", ".join(
        f"<code>{html.escape(k)}={html.escape(repr(v))}</code>" for k, v in options.items()
    )


def _family_section(
    family: dict[str, Any], rows: dict[str, dict[str, Any]], baseline: str | None
) -> str:

    e = html.escape
    members = sorted(family["methods"], key=lambda name: -rows[name]["aopc"])
    body = []
    for name in members:
        row = rows[name]
        row_class = ' class="baseline"' if name == baseline else ""
        note = f'<p class="note">{e(row["note"])}</p>' if row.get("note") else ""
        body.append(
            f"<tr{row_class}><td><b>{e(row['title'])}</b><br><code>{e(name)}</code></td>"
            f"<td>{e(row['explanation'])}<br><small>{_options(row['options'])}</small>{note}</td>"
            f'<td class="num">{_number(row["aopc"], 3)}</td>'
            f'<td class="num">{_number(row["time_per_image_ms"], 2)}</td>'
            f'<td class="num">{_number(row["conservation_error"], 1, scientific=True)}</td></tr>'
        )
    intro = next((f.introduction for f in FAMILIES if f.key == family["key"]), "")
    return (
        f"<h3>{e(family['title'])}</h3>"
        + (f"<p>{e(intro)}</p>" if intro else "")
        + "<table><thead><tr><th>method</th><th>what it does</th><th>AOPC</th>"
        "<th>ms / image</th><th>conservation error</th></tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def render_html(results: dict[str, Any]) -> str:
    """The report page; images are referenced by relative file names in the same folder."""
    model = results["model"]
    perturbation = results["perturbation"]
    files = results["files"]
    rows = {row["method"]: row for row in results["methods"]}
    baseline = perturbation["baseline"] if perturbation["baseline"] in rows else None
    e = html.escape
    sections = "".join(_family_section(f, rows, baseline) for f in results["families"])
    not_run = [("skipped", item) for item in results["skipped"]] + [
        ("failed", item) for item in results["failed"]
    ]
    not_run_html = "".join(
        f"<li><code>{e(item['method'])}</code> ({kind}): {e(item['reason'])}</li>"
        for kind, item in not_run
    )
    not_run_section = (
        f"<h2>Not run</h2><ul>{not_run_html}</ul>"
        if not_run
        else "<p class='muted'>Every registered analyzer ran on this model.</p>"
    )
    evaluation_section = ""
    if "evaluation" in results:
        evaluation_section = evaluation_html(
            results["evaluation"], {r: rows[r]["title"] for r in rows}
        )
    introspection_section = ""
    if "introspection" in results:
        introspection_section = introspection_html(results["introspection"])
    fast_note = (
        '<p class="note">This is a <code>--fast</code> run: fewer training epochs, images '
        "and steps. Run <code>innspect demo</code> for the full version.</p>"
        if results["fast"]
        else ""
    )
    n_methods = len(rows)
    grid, plot = files["analysis_grid"], files["perturbation"]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>innspect demo: explaining a digits CNN</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>innspect demo</h1>
<p class="lead">A small CNN trained on scikit-learn's handwritten digits, explained by
{n_methods} analyzers of innspect {e(results["innspect_version"])}, grouped by family.</p>
{fast_note}
<h2>The model</h2>
<p>Digits of 8&nbsp;&times;&nbsp;8 pixels upsampled to {model["input_shape"][1]}&nbsp;&times;&nbsp;{model["input_shape"][2]},
values in [0, 1]. Three convolution / ReLU / max-pooling stages and two dense layers, trained for
{model["epochs"]} epochs ({model["training_seconds"]:.1f}&nbsp;s):
<strong>test accuracy {model["test_accuracy"]:.1%}</strong>. The trained model is saved as
<a href="{e(files["model"]["file"])}">{e(files["model"]["file"])}</a> (TorchScript) with the digits
below in <code>{e(files["digits"]["file"])}/</code>, so you can explain it yourself:</p>
<pre>innspect analyze --model {e(files["model"]["file"])} --input {e(files["digits"]["file"])} \
    --labels {e(files["labels"]["file"])} --method gradient lrp.epsilon_plus_flat --report</pre>

<h2>What each method sees</h2>
<figure>
<img src="{e(grid["file"])}" alt="analysis grid: one row per test digit, one column per method, grouped by family"
 width="{grid["width"]}" height="{grid["height"]}">
<figcaption>One test digit per class (rows, with the model's prediction and the true label) and
one column per method, explaining the predicted class, grouped by family. Red: evidence for the
class; blue: evidence against it; white: neutral. Each heatmap is scaled to its own largest
absolute value, so compare shapes, not intensities, across columns.</figcaption>
</figure>

<h2>Which method finds what matters: perturbation analysis</h2>
<figure>
<img src="{e(plot["file"])}" alt="perturbation curves, one panel per family"
 width="{plot["width"]}" height="{plot["height"]}">
<figcaption>For {perturbation["n_images"]} test digits, the regions of
{perturbation["region_shape"][0]}&nbsp;&times;&nbsp;{perturbation["region_shape"][1]} pixels are set to
zero ({e(perturbation["function"])}), most relevant first according to each method,
{perturbation["regions_per_step"]} region(s) per step for {perturbation["steps"]} steps, and the
model's {e(perturbation["score"])} is measured. A method that finds what the model relies on makes
the score fall fast. AOPC, the area over this curve (mean drop of the score over the steps), sums
it up: larger is better, and a useful method beats the dashed <code>random</code> baseline, drawn
in every panel.</figcaption>
</figure>

<h2>Results by family</h2>
<p>Within each family sorted by AOPC; the shaded row is the random baseline. Time: analysis time
per image on this machine's CPU (batch of {perturbation["n_images"]}). Conservation error, for
relevance methods (LRP, Deep Taylor): mean over the grid's digits of |sum of relevances &minus;
score| / |score|; 0 means the explained score is exactly redistributed over the pixels. The same
numbers are in <a href="{e(files["csv"]["file"])}">{e(files["csv"]["file"])}</a> and
<a href="results.json">results.json</a> (with the curves and every option).</p>
{sections}
{evaluation_section}
{introspection_section}
{not_run_section}
<p class="muted">Generated by <code>innspect demo</code> in {results.get("seconds", 0):.0f}&nbsp;s
(torch {e(results["torch_version"])}, Python {e(results["python_version"])}).</p>
</body>
</html>
"""


def write_html(path: str | os.PathLike, results: dict[str, Any]) -> None:
    """Write the report page (self-contained apart from the two PNGs beside it)."""
    write_text(path, render_html(results))
