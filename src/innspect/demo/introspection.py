"""The demo's introspection: NAPs per digit class and topographic maps of two layers.

The test digits are written as an iNNtrospect corpus (one batch file per class) and go through
the same resumable run as ``innspect introspect``; the SOM layout and PCA projections keep it
within a few seconds (UMAP's first call compiles for about 15 s).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from innspect.demo.data import Digits
from innspect.graph.graph import ModelGraph
from innspect.introspect.layers import default_layers
from innspect.introspect.pipeline import IntrospectionSettings, run_introspection
from innspect.util.files import atomic_path

FOLDER = "introspection"


def run_introspection_demo(
    model: nn.Module, data: Digits, out: Path, fast: bool, verbose: bool
) -> dict[str, Any]:
    """Write ``out/introspection/`` (corpus, NAPs, maps, index.html); returns its summary with
    file paths relative to ``out``."""
    folder = out / FOLDER
    corpus = folder / "corpus"
    per_class = 20 if fast else 60
    rows = []
    labels = data.y_test.numpy()
    for digit in range(10):
        index = np.flatnonzero(labels == digit)[:per_class]
        name = f"digit{digit}.npy"
        with atomic_path(corpus / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, data.x_test[index].numpy())
        rows.append(f"{name},{digit},{digit}")
    with atomic_path(corpus / "corpus.csv") as tmp:
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    # the last two activations after linear layers: the last convolution's and the dense one's
    layers = default_layers(ModelGraph(model, data.x_test[:1]))[-2:]
    settings = IntrospectionSettings(
        data=str(corpus),
        out=str(folder),
        layers=layers,
        gradients=False,
        layout="som",
        projection="pca",
        projection_samples=20,
    )
    summary = run_introspection(settings, model=model, verbose=verbose, log=lambda _: None)
    for entry in summary["layers"]:
        for key in ("topomaps", "contrastive_topomaps", "projection"):
            if entry.get(key):
                entry[key] = f"{FOLDER}/{entry[key]}"
    summary["index"] = f"{FOLDER}/index.html"
    return summary


def introspection_html(summary: dict[str, Any]) -> str:
    """The demo page's section: contrastive topomaps per layer, a link to the full page."""
    figures = []
    for entry in summary["layers"]:
        if "contrastive_topomaps" not in entry:
            continue
        src = html.escape(entry["contrastive_topomaps"])
        name = html.escape(entry["name"])
        figures.append(
            f'<figure><img src="{src}" alt="contrastive topomaps of layer {name}">'
            f"<figcaption>Layer <code>{name}</code> ({entry['shape'][-1]} channels)."
            "</figcaption></figure>"
        )
    return f"""
<h2>What the network learned: topographic maps</h2>
<p>Each map places one layer's channels so that channels responding alike to the ten digit
classes lie close together (Krug et al., HHAI 2023), and colours the map by each class's mean
activation minus the mean over the classes (contrastive NAPs): red above average, blue below.
Classes are in clustering order. NAPs, layouts, instance projections and quality metrics:
<a href="{html.escape(summary["index"])}">{html.escape(summary["index"])}</a>.</p>
{"".join(figures)}
"""
