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

GRID_LAYOUT = GridLayout(cell=64, label_width=70, header=40, dpi=100)
GRID_MAX_COLUMNS = 15  # the digit column + up to 14 methods per block
PANEL_SIZE = (660, 330)  # pixels of one family's panel in the perturbation figure
PERTURBATION_DPI = 100


def _column_groups(groups: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, list[int]]]:
    """(family title, grid column indices) with column 0 the digit."""
    result, column = [], 1
    for title, names in groups:
        result.append((title, list(range(column, column + len(names)))))
        column += len(names)
    return result


def grid_size(n_images: int, groups: Sequence[tuple[str, Sequence[str]]]) -> tuple[int, int]:
    """(width, height) in pixels of the analysis grid the demo writes."""
    n_methods = sum(len(names) for _, names in groups)
    return GRID_LAYOUT.size(
        n_images, n_methods + 1, GRID_MAX_COLUMNS, 1, column_groups=_column_groups(groups)
    )


def perturbation_size(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the perturbation figure: two panels per row."""
    columns = min(2, n_panels)
    rows = -(-n_panels // 2)
    return PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows


def write_analysis_grid(
    path: str | os.PathLike,
    images: torch.Tensor,
    attributions: dict[str, np.ndarray],
    row_labels: Sequence[str],
    groups: Sequence[tuple[str, Sequence[str]]],
    titles: dict[str, str],
) -> None:
    """Rows: the images; first column the digit, then the methods, family by family.

    ``groups`` lists (family title, method names) in order; ``titles`` the column titles.
    Heatmaps use the "seismic" map per image: red positive, blue negative, white zero,
    each image scaled by its own largest absolute value.
    """
    names = [name for _, members in groups for name in members]
    columns = [images[:, 0].numpy()] + [
        heatmap(attributions[name], reduce_axis=1) for name in names
    ]
    grid = [[column[i] for column in columns] for i in range(images.shape[0])]
    plot_grid(
        grid,
        row_labels,
        ["digit", *(titles[name] for name in names)],
        file_name=path,
        layout=GRID_LAYOUT,
        max_columns=GRID_MAX_COLUMNS,
        fixed_columns=1,
        column_groups=_column_groups(groups),
    )


def write_perturbation_plot(
    path: str | os.PathLike,
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
    baseline: str,
    groups: Sequence[tuple[str, Sequence[str]]],
    titles: dict[str, str],
    x_label: str,
    y_label: str,
) -> None:
    """Small multiples: one panel per family, its methods' curves and the baseline in each.

    ``curves[name] = (n_regions, scores, aopc)``; legends are sorted by AOPC (largest first);
    ``baseline`` is drawn black and dashed in every panel, and all panels share their axes.
    """
    panels = [(title, [n for n in names if n != baseline]) for title, names in groups]
    panels = [(title, names) for title, names in panels if names]
    width, height = perturbation_size(len(panels))
    figure = Figure(figsize=(width / PERTURBATION_DPI, height / PERTURBATION_DPI))
    n_rows = -(-len(panels) // 2)
    axes_grid = figure.subplots(
        n_rows, min(2, len(panels)), sharex=True, sharey=True, squeeze=False
    )
    colours = matplotlib.colormaps["tab10"].colors
    styles = ["-", "--", ":"]
    for index, (title, names) in enumerate(panels):
        axes = axes_grid[index // 2][index % 2]
        ordered = sorted(names, key=lambda n: -curves[n][2])
        for k, name in enumerate(ordered):
            n_regions, scores, aopc = curves[name]
            axes.plot(
                n_regions,
                scores,
                color=colours[k % len(colours)],
                linestyle=styles[(k // len(colours)) % len(styles)],
                linewidth=1.5,
                label=f"{titles[name]} ({aopc:.2f})",
            )
        if baseline in curves:
            n_regions, scores, aopc = curves[baseline]
            axes.plot(
                n_regions,
                scores,
                color="black",
                linestyle="--",
                linewidth=1.8,
                label=f"{titles[baseline]} ({aopc:.2f})",
            )
        axes.set_title(title, fontsize=9, fontweight="bold")
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=7)
        axes.legend(
            fontsize=6,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            ncol=1,
            title="method (AOPC, larger is better)",
            title_fontsize=6,
        )
        if index // 2 == n_rows - 1:
            axes.set_xlabel(x_label, fontsize=8)
        if index % 2 == 0:
            axes.set_ylabel(y_label, fontsize=8)
    for index in range(len(panels), n_rows * min(2, len(panels))):
        axes_grid[index // 2][index % 2].set_visible(False)
    figure.suptitle(
        "Most relevant regions first: the faster the score falls, the better", fontsize=10
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(figure, path, dpi=PERTURBATION_DPI)
