"""The demo's figures: the method-by-image grid and the perturbation curves."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from innspect.viz import GridLayout, heatmap, plot_grid  # noqa: E402
from innspect.viz.files import save_figure  # noqa: E402

GRID_LAYOUT = GridLayout(cell=72, label_width=90, header=64, dpi=100)
GRID_MAX_COLUMNS = 13  # the digit column + up to 12 methods per block
PERTURBATION_SIZE = (1100, 650)  # pixels
PERTURBATION_DPI = 100


def grid_size(n_images: int, n_methods: int) -> tuple[int, int]:
    """(width, height) in pixels of the analysis grid the demo writes."""
    return GRID_LAYOUT.size(n_images, n_methods + 1, GRID_MAX_COLUMNS, fixed_columns=1)


def write_analysis_grid(
    path: str | os.PathLike,
    images: torch.Tensor,
    attributions: dict[str, np.ndarray],
    row_labels: Sequence[str],
) -> None:
    """Rows: the images; first column the digit, then one heatmap column per method.

    Heatmaps use the "seismic" map per image: red positive, blue negative, white zero,
    each image scaled by its own largest absolute value.
    """
    columns = [images[:, 0].numpy()] + [
        heatmap(attribution, reduce_axis=1) for attribution in attributions.values()
    ]
    grid = [[column[i] for column in columns] for i in range(images.shape[0])]
    plot_grid(
        grid,
        row_labels,
        ["digit", *attributions],
        file_name=path,
        layout=GRID_LAYOUT,
        max_columns=GRID_MAX_COLUMNS,
        fixed_columns=1,
    )


def write_perturbation_plot(
    path: str | os.PathLike,
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
    baseline: str,
    x_label: str,
    y_label: str,
) -> None:
    """One curve per method, legend sorted by AOPC (largest first) with the AOPC value.

    ``curves[name] = (n_regions, scores, aopc)``; ``baseline`` is drawn black and dashed.
    """
    width, height = PERTURBATION_SIZE
    figure = Figure(figsize=(width / PERTURBATION_DPI, height / PERTURBATION_DPI))
    axes = figure.add_axes((0.07, 0.1, 0.55, 0.82))
    ordered = sorted(curves.items(), key=lambda item: -item[1][2])
    colours = [*matplotlib.colormaps["tab20"].colors, *matplotlib.colormaps["tab20b"].colors]
    styles = ["-", "--", ":", "-."]
    for index, (name, (n_regions, scores, aopc)) in enumerate(ordered):
        label = f"{name}  (AOPC {aopc:.2f})"
        if name == baseline:
            axes.plot(n_regions, scores, color="black", linestyle="--", linewidth=2.2, label=label)
        else:
            axes.plot(
                n_regions,
                scores,
                color=colours[index % len(colours)],
                linestyle=styles[(index // len(colours)) % len(styles)] if index >= 20 else "-",
                linewidth=1.4,
                label=label,
            )
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title("Most relevant regions first: the faster the score falls, the better")
    axes.grid(alpha=0.3)
    n_columns = 1 if len(ordered) <= 44 else 2
    axes.legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=7 if n_columns == 1 else 6,
        ncol=n_columns,
        frameon=False,
        title="method (AOPC, larger is better)",
        title_fontsize=7,
    )
    save_figure(figure, path, dpi=PERTURBATION_DPI)
