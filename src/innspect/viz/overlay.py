"""Attribution maps drawn over the picture they explain, with a colour bar and a title."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from innspect.viz.files import save_figure  # noqa: E402

CMAP = "seismic"  # red: evidence for the explained class; blue: against; white: neutral


def spatial_map(attribution: np.ndarray) -> np.ndarray | None:
    """One sample's attribution (C, H, W) summed over channels to (H, W); None if not spatial."""
    if attribution.ndim == 3 and min(attribution.shape[1:]) >= 2:
        return attribution.sum(axis=0)
    if attribution.ndim == 2 and min(attribution.shape) >= 2:
        return attribution
    return None


def symmetric_limit(values: np.ndarray) -> float:
    """The colour scale's limit: the largest absolute finite value (1 for an all-zero map)."""
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def overlay_rgb(picture: np.ndarray, values: np.ndarray, limit: float | None = None) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1]: ``values`` in the "seismic" colours over a faded picture.

    ``picture`` is (H, W, 3) in [0, 1] and ``values`` (H, W) on the same pixels (NaN where
    nothing was explained). The picture is shown in pale grey so the colours stay readable;
    each pixel's colour is blended in with opacity |value| / limit, so neutral pixels show the
    picture and strong ones the colour.
    """
    if picture.shape[:2] != values.shape:
        raise ValueError(f"picture {picture.shape[:2]} and map {values.shape} differ in size")
    limit = symmetric_limit(values) if limit is None else limit
    grey = picture.mean(axis=-1, keepdims=True)
    background = 0.35 + 0.65 * grey  # faded: the map, not the photo, should catch the eye
    scaled = np.clip(np.nan_to_num(values, nan=0.0) / limit, -1.0, 1.0)
    colours = colormaps[CMAP](0.5 + scaled / 2)[..., :3]
    opacity = np.abs(scaled)[..., None] ** 0.7  # lift faint evidence a little above white
    blended = background * (1 - opacity) + colours * opacity
    return np.clip(blended, 0.0, 1.0)


def write_overlay(
    path: str | os.PathLike,
    picture: np.ndarray,
    values: np.ndarray,
    title: str,
    max_side: int = 512,
    min_side: int = 320,
    dpi: int = 100,
) -> None:
    """Write the overlay of ``values`` on ``picture`` with a colour bar and ``title`` (PNG).

    The image is drawn with its longer side between ``min_side`` and ``max_side`` pixels
    (small images enlarged without smoothing, so pixels stay visible); the colour bar spans
    [-limit, limit] with the largest absolute value as the limit.
    """
    limit = symmetric_limit(values)
    rgb = overlay_rgb(picture, values, limit)
    height, width = rgb.shape[:2]
    longer = max(height, width)
    scale = max_side / longer if longer > max_side else max(1.0, min_side / longer)
    shown_w, shown_h = max(1, round(width * scale)), max(1, round(height * scale))
    bar, margin_top, margin = 80, 46, 10
    fig_w, fig_h = shown_w + bar + 2 * margin, shown_h + margin_top + margin
    figure = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    axes = figure.add_axes(
        (margin / fig_w, margin / fig_h, shown_w / fig_w, shown_h / fig_h), frameon=False
    )
    axes.imshow(rgb, interpolation="nearest" if scale >= 1 else "antialiased", aspect="auto")
    axes.set_xticks([])
    axes.set_yticks([])
    bar_axes = figure.add_axes(
        ((2 * margin + shown_w) / fig_w, margin / fig_h, 12 / fig_w, shown_h / fig_h)
    )
    mappable = matplotlib.cm.ScalarMappable(norm=Normalize(-limit, limit), cmap=CMAP)
    colorbar = figure.colorbar(mappable, cax=bar_axes)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.set_label("for the class (red) / against (blue)", fontsize=7)
    figure.text(margin / fig_w, 1 - 6 / fig_h, title, ha="left", va="top", fontsize=8, wrap=True)
    save_figure(figure, path, dpi=dpi)
