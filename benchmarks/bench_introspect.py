"""The `--only introspect` group of benchmarks/run.py (issue 18, "Speed").

- ``introspect.collect`` on one batch (graph captured beforehand) at four layers (the last
  activation of each of resnet50's ``layer1`` .. ``layer4``): with gradients against the plain
  forward+gradient pass, target <= 1.3x; without gradients against the plain forward,
  target <= 1.1x (paired runs, as every table of run.py);
- the layout of a 2048-channel layer (synthetic NAPs of 10 groups over 7x7 positions, as
  resnet50's last block) with UMAP (after numba's one-time compilation, reported apart) and
  with the graph method, in seconds.
"""

from __future__ import annotations

import time
from types import ModuleType

import numpy as np
import torch
import torchvision

from innspect.graph.graph import ModelGraph
from innspect.graph.ops import Kind
from innspect.introspect import topomap_layout
from innspect.introspect.collect import collect


def block_outputs(graph: ModelGraph, blocks: int = 4) -> list[str]:
    """The last activation node inside each of ``layer1`` .. ``layer<blocks>``."""
    names = []
    for k in range(1, blocks + 1):
        inside = [
            i.name
            for i in graph.nodes
            if i.name.startswith(f"layer{k}.") and i.kind is Kind.ACTIVATION
        ]
        if inside:
            names.append(inside[-1])
    return names


def collect_rows(bench: ModuleType, model_name: str, batch: int, size: int, repeats: int) -> list:
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    groups = [i % 4 for i in range(batch)]
    graph = ModelGraph(model, x[:1])
    layers = block_outputs(graph)
    print(f"  layers: {', '.join(layers)}", flush=True)
    forward, reference = bench.plain_runs(model, x)
    rows = []
    for gradients, plain, label in (
        (True, reference, "collect with gradients"),
        (False, forward, "collect without gradients"),
    ):
        subject = bench.Subject(
            label,
            lambda g=gradients: collect(graph, x, groups=groups, layers=layers, gradients=g),
        )
        reference_row = bench.measure_paired([subject], plain, repeats)
        reference_row.name = "forward+gradient" if gradients else "forward"
        rows += [reference_row, subject.row()]
    for row in rows:
        print(f"  {row.name}: {row.seconds:.3f} s, ratio {row.ratio or 1.0:.2f}", flush=True)
    return rows


def layout_times(channels: int, groups: int = 10, positions: int = 49) -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    nap = rng.normal(size=(groups, positions, channels))
    start = time.perf_counter()
    topomap_layout(nap[..., :64], method="umap")  # numba compiles UMAP once per process
    results = [("umap: one-time compilation (64 channels)", time.perf_counter() - start)]
    for method in ("umap", "graph"):
        start = time.perf_counter()
        points = topomap_layout(nap, method=method)
        assert points.shape == (channels, 2)
        results.append((f"{method}: {channels} channels", time.perf_counter() - start))
        print(f"  {results[-1][0]}: {results[-1][1]:.1f} s", flush=True)
    return results


def render(model_name: str, batch: int, size: int, rows: list, layouts: list) -> str:
    lines = [
        f"### collect on {model_name}, batch {batch}, {size}x{size}, four layers, random "
        "weights, CPU\n",
        "| run | median s | ratio to the plain pass | target |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in rows:
        if row.name.startswith("collect"):
            target = 1.3 if "with gradients" in row.name else 1.1
            met = "met" if row.ratio <= target else "missed"
            lines.append(
                f"| {row.name} | {row.seconds:.3f} | {row.ratio:.2f} | <= {target} {met} |"
            )
        else:
            lines.append(f"| {row.name} (reference) | {row.seconds:.3f} | 1.00 | |")
    lines += ["", "| layout | seconds |", "| --- | ---: |"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in layouts]
    return "\n".join(lines) + "\n"


def section(
    bench: ModuleType, models: list[str], batch: int, size: int, repeats: int, channels: int
) -> str:
    """The markdown section for RESULTS-introspect.md."""
    parts = ["## Representation analysis: NAPs and topographic maps (issue 18)\n"]
    layouts = layout_times(channels)
    for model_name in models:
        print(f"introspect on {model_name}:", flush=True)
        rows = collect_rows(bench, model_name, batch, size, repeats)
        parts.append(render(model_name, batch, size, rows, layouts))
    return "\n".join(parts)
