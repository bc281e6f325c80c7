"""``index.html`` of an introspection run: every layer's topomaps, contrastive maps, instance
projection and quality metrics on one page (written atomically)."""

from __future__ import annotations

import html
import os
from typing import Any

from innspect.util.files import write_text

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .muted { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.3em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""

_EXPLANATION = (
    "Each map places the layer's channels (one point each) so that channels with similar "
    "activation profiles over the groups lie close together, and colours the area between "
    "the points by interpolation (Krug et al., HHAI 2023). <b>NAPs</b>: each group's mean "
    "activation per channel. <b>Contrastive NAPs</b>: the same minus the mean over the groups; "
    "red is above the average, blue below, white is average or outside the points. Quality: "
    "smoothness errors (resize and blur, area under the error curve; lower is smoother) and "
    "the number and mean area (pixels of 100 x 100) of red and blue regions."
)


def _figure(path: str | None, caption: str) -> str:
    if not path:
        return ""
    src = html.escape(path)
    if path.endswith(".pdf"):
        return f'<p><a href="{src}">{html.escape(caption)} (PDF)</a></p>'
    return (
        f'<figure><img src="{src}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _quality(quality: dict[str, Any] | None) -> str:
    if not quality:
        return ""
    cells = [
        ("resize error AUC", f"{quality['resize_auc']:.1f}"),
        ("blur error AUC", f"{quality['blur_auc']:.1f}"),
        ("components", f"{quality['components']:.2f}"),
        ("mean component area", f"{quality['component_area']:.0f}"),
    ]
    head = "".join(f"<th>{name}</th>" for name, _ in cells)
    body = "".join(f'<td class="num">{value}</td>' for _, value in cells)
    return f"<table><tr>{head}</tr><tr>{body}</tr></table>"


def layer_section(entry: dict[str, Any], heading: str = "h2") -> str:
    """HTML of one layer's results (also used by the demo's page)."""
    name = html.escape(entry["name"])
    shape = " x ".join(str(s) for s in entry["shape"])
    parts = [f"<{heading}>Layer <code>{name}</code> ({shape}, channels last)</{heading}>"]
    if "skipped" in entry:
        parts.append(f'<p class="muted">No map: {html.escape(entry["skipped"])}</p>')
        return "\n".join(parts)
    parts.append(_figure(entry.get("topomaps"), f"{entry['name']}: NAP topomaps per group"))
    parts.append(
        _figure(
            entry.get("contrastive_topomaps"),
            f"{entry['name']}: contrastive topomaps, groups in clustering order",
        )
    )
    parts.append(
        _figure(entry.get("projection"), f"{entry['name']}: samples projected to 2-D by group")
    )
    parts.append(_quality(entry.get("quality")))
    return "\n".join(p for p in parts if p)


def write_report(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Write the page for ``summary`` (what :func:`run_introspection` returns)."""
    settings = summary["settings"]
    groups = ", ".join(
        f"{html.escape(str(g))} ({n})"
        for g, n in zip(summary["groups"], summary["group_sizes"], strict=True)
    )
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td><code>{html.escape(str(value))}</code></td></tr>"
        for key, value in settings.items()
    )
    sections = "\n".join(layer_section(entry) for entry in summary["layers"])
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>innspect introspection</title>
<style>{_STYLE}</style></head><body>
<h1>What the network learned</h1>
<p>{_EXPLANATION}</p>
<p>Groups (samples): {groups}</p>
{sections}
<h2>Settings</h2>
<table>{rows}</table>
</body></html>
"""
    write_text(path, page)
