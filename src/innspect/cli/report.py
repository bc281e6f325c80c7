"""The comparison figure and the self-contained ``index.html`` of ``innspect analyze``."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from innspect.analyzers.families import title_of
from innspect.util.files import write_text
from innspect.viz import GridLayout, plot_grid

COMPARISON_LAYOUT = GridLayout(cell=150, label_width=150, header=48, dpi=100)
COMPARISON_MAX_COLUMNS = 7  # the input + up to 6 methods per block


def thumbnail(rgb: np.ndarray, max_side: int = 2 * COMPARISON_LAYOUT.cell) -> np.ndarray:
    """(H, W, 3) in [0, 1] shrunk (antialiased) so its longer side is at most ``max_side``."""
    from PIL import Image

    height, width = rgb.shape[:2]
    if max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), mode="RGB")
    image = image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS
    )
    return np.asarray(image, dtype=np.float64) / 255.0


def write_comparison(
    path: str | os.PathLike,
    row_labels: list[str],
    first_column: list[np.ndarray | None],
    methods: list[str],
    cells: dict[tuple[int, str], np.ndarray],
) -> None:
    """Rows inputs, columns the input picture then one overlay (or heatmap) per method."""
    grid = [
        [first_column[i], *(cells.get((i, m)) for m in methods)] for i in range(len(row_labels))
    ]
    plot_grid(
        grid,
        row_labels,
        ["input", *(title_of(m) for m in methods)],
        file_name=path,
        layout=COMPARISON_LAYOUT,
        max_columns=COMPARISON_MAX_COLUMNS,
        fixed_columns=1,
    )


def _data_uri(file: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode("ascii")


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; } .muted { color: #777; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { width: 300px; } .card figcaption { font-size: 0.85em; color: #444; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.3em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #f7f9fc; border-left: 3px solid #7a9cc6; padding: 0.6em 1em; }
"""


def render_report(folder: Path, summary: dict[str, Any], methods: list[str]) -> str:
    """The page, with every picture embedded (it can be mailed or moved on its own)."""
    e = html.escape
    weights = (
        f"random initial weights (seed {summary['seed']}): the classes mean nothing"
        if summary["random_weights"]
        else f"weights {e(str(summary['weights'] or 'in the TorchScript file'))}"
    )
    option_rows = "".join(
        f"<tr><td><code>{e(m)}</code></td><td>{e(title_of(m))}</td><td>"
        + (", ".join(f"<code>{e(k)}={e(str(v))}</code>" for k, v in opts.items()) or "defaults")
        + "</td></tr>"
        for m, opts in summary["methods"].items()
    )
    sections = []
    for item in summary["inputs"]:
        cards = []
        timing_rows = []
        for method in methods:
            info = item["methods"][method]
            explained = "all outputs" if info["neuron"] is None else f"class {info['neuron']}"
            if info["class_name"]:
                explained += f" ({e(info['class_name'])})"
            picture = info["files"]["overlay"] or info["files"]["heatmap"]
            cards.append(
                f'<figure class="card"><img src="{_data_uri(folder / picture)}" '
                f'alt="{e(method)} on {e(item["name"])}"><figcaption><b>{e(title_of(method))}'
                f"</b> <code>{e(method)}</code>: {explained}, score {info['score']:.4g}"
                "</figcaption></figure>"
            )
            timing_rows.append(
                f"<tr><td><code>{e(method)}</code></td><td>{explained}</td>"
                f'<td class="num">{info["score"]:.4g}</td>'
                f'<td class="num">{1000 * info["seconds"]:.1f}</td></tr>'
            )
        predicted = f"class {item['prediction']}"
        if item["prediction_name"]:
            predicted += f" ({e(item['prediction_name'])})"
        sections.append(
            f"<h2>{e(item['name'])}</h2><p><code>{e(item['path'])}</code>: the model predicts "
            f'<b>{predicted}</b>.</p><div class="cards">{"".join(cards)}</div>'
            "<table><thead><tr><th>method</th><th>explained</th><th>score</th>"
            f"<th>ms</th></tr></thead><tbody>{''.join(timing_rows)}</tbody></table>"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>innspect analyze: {e(summary["model"])}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>innspect analyze</h1>
<p>Model <code>{e(summary["model"])}</code> with {weights}; preprocessing
<code>{e(summary["preprocess"])}</code>{"; final softmax stripped" if summary["strip_softmax"] else ""}.
{len(summary["inputs"])} input(s), {len(methods)} method(s).</p>
<p class="note">Red: evidence for the explained class; blue: evidence against it; each map is
scaled to its own largest absolute value and drawn over the input as it was given (the model saw
the resized and cropped version; parts of the picture outside the crop stay uncoloured).</p>
<h2>All inputs and methods</h2>
<img src="{_data_uri(folder / summary["comparison"])}" alt="comparison: rows inputs, columns methods">
<h2>Methods</h2>
<table><thead><tr><th>name</th><th>title</th><th>options</th></tr></thead>
<tbody>{option_rows}</tbody></table>
{"".join(sections)}
<p class="muted">Written by <code>innspect analyze</code>; the files it names are in the same
folder as this page.</p>
</body>
</html>
"""


def write_report(
    path: str | os.PathLike, folder: Path, summary: dict[str, Any], methods: list[str]
) -> None:
    """Write the self-contained report page (atomically)."""
    write_text(path, render_report(folder, summary, methods))
