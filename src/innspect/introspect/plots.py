"""Drawing topographic maps: colour images and figures (PNG or PDF).

Colours follow iNNtrospect and TOPO: the ``bwr`` map with symmetric limits, so zero is white
(red: above the mean of the groups for contrastive NAPs, blue: below). Outside the layout's
convex hull the image is white (TOPO leaves it transparent; INTROSPECT.md section 9.9).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from innspect.errors import InputError  # noqa: E402
from innspect.introspect.topomap import interpolate_topomaps, symmetric_limit  # noqa: E402
from innspect.viz.files import save_figure  # noqa: E402

CMAP = "bwr"
PLOT_MODES = ("all_in_row", "individually")


def render_rgb(images: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Interpolated maps ``(..., H, W)`` -> uint8 RGB ``(..., H, W, 3)``; NaN is white.

    ``limit`` is the colour range ``[-limit, limit]`` (default: max |value|).
    """
    images = np.asarray(images, dtype=np.float64)
    limit = symmetric_limit(images) if limit is None else float(limit)
    scaled = np.clip((images / limit + 1) / 2, 0, 1)
    rgb = colormaps[CMAP](np.nan_to_num(scaled, nan=0.5))[..., :3]
    rgb[np.isnan(images)] = 1.0
    return np.round(rgb * 255).astype(np.uint8)


def safe_file_name(name: str) -> str:
    """A group or layer name usable as a file name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return cleaned or "group"


def plot_topomaps(
    coordinates: np.ndarray,
    activations: np.ndarray,
    groups: Sequence[str],
    path: str | os.PathLike,
    *,
    mode: str = "all_in_row",
    order: Sequence[int] | None = None,
    resolution: int = 100,
    scale: float = 2.0,
    limit: float | None = None,
    title: str | None = None,
    file_format: str = "png",
) -> list[Path]:
    """Draw one topographic map per group.

    Parameters
    ----------
    coordinates, activations
        ``(C, 2)`` layout and ``(G, C)`` per-channel values (:func:`topomap_activations`).
    groups
        G group names (panel titles, file names).
    path
        ``"all_in_row"``: the figure file (``.png`` or ``.pdf``); ``"individually"``: a
        folder that gets one ``<group>.<file_format>`` per group.
    order
        Group indices in display order (e.g. :func:`group_order`); default as given.
    limit
        Colour range ``[-limit, limit]``, shared by all groups (default: max |value|).

    Returns
    -------
    The files written (atomically).
    """
    if mode not in PLOT_MODES:
        raise InputError(f"unknown plot mode '{mode}'; choose one of {', '.join(PLOT_MODES)}")
    activations = np.asarray(activations, dtype=np.float64)
    if activations.ndim != 2 or len(groups) != len(activations):
        raise InputError(
            f"{len(groups)} group names for activations of shape {activations.shape} "
            "(expected (groups, channels))"
        )
    order = list(range(len(groups))) if order is None else list(order)
    images = interpolate_topomaps(coordinates, activations, resolution)
    limit = symmetric_limit(activations) if limit is None else limit
    path = Path(path)
    if mode == "all_in_row":
        figure, axes = plt.subplots(
            1, len(order), figsize=(scale * len(order), 1.1 * scale), squeeze=False
        )
        for ax, g in zip(axes[0], order, strict=True):
            _draw(ax, images[g], limit, str(groups[g]))
        if title:
            figure.suptitle(title)
        figure.tight_layout()
        save_figure(figure, path, dpi=100, bbox_inches="tight", pad_inches=0.02)
        plt.close(figure)
        return [path]
    written = []
    for g in order:
        figure, ax = plt.subplots(figsize=(scale, scale))
        _draw(ax, images[g], limit, None)
        target = path / f"{safe_file_name(groups[g])}.{file_format}"
        save_figure(figure, target, dpi=100, bbox_inches="tight", pad_inches=0.02)
        plt.close(figure)
        written.append(target)
    return written


def _draw(ax: plt.Axes, image: np.ndarray, limit: float, title: str | None) -> None:
    ax.imshow(render_rgb(image, limit), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title, fontsize=9)


def plot_instance_projection(
    points: np.ndarray, groups: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Scatter plot of 2-D instance projections coloured by group (iNNtrospect section 8)."""
    points = np.asarray(points)
    labels = np.asarray([str(g) for g in groups])
    if len(points) != len(labels):
        raise InputError(f"{len(points)} points but {len(labels)} group labels")
    names = list(dict.fromkeys(labels))
    cmap = colormaps["nipy_spectral"]
    figure, ax = plt.subplots(figsize=(5, 5))
    for i, name in enumerate(names):
        mask = labels == name
        colour = cmap(i / max(len(names) - 1, 1) * 0.9)
        ax.scatter(points[mask, 0], points[mask, 1], s=8, alpha=0.7, color=colour, label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    if title:
        ax.set_title(title)
    figure.tight_layout()
    save_figure(figure, Path(path), dpi=100)
    plt.close(figure)
    return Path(path)
