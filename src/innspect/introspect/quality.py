"""Quality of a topographic map: how smooth it is and how many blobs it has.

Smoothness (Krug et al., HHAI 2023; TOPO@paper ``evaluate_topomaps.py``, ../shared/INTROSPECT.md
section 9.10 a): each map, rendered as an RGB image of about 300 x 300 pixels, is shrunk to
55, 50, ..., 10 pixels and enlarged back (resize) or blurred with Gaussian radius 2, 4, ..., 20
(blur); the error is the mean squared pixel difference, averaged over the groups, and the area
under the 10-point error curve (trapezoid, unit spacing) sums it up. Lower is smoother. Unlike
the paper code, the difference is taken in float, not in wrapping uint8 (section 10, bug 15).

Components (TOPO HEAD, section 9.10 c): the number of connected red and blue regions of at
least 10 pixels on the 100 x 100 map and their mean area, with the area outside the layout's
convex hull masked out and the background never counted (section 10, bug 17).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from innspect.introspect.plots import render_rgb
from innspect.introspect.topomap import interpolate_topomaps, symmetric_limit
from innspect.util.extras import require

RESIZE_SIDES = tuple(55 - 5 * p for p in range(10))
BLUR_RADII = tuple(2 * p + 2 for p in range(10))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def resize_errors(rgb: np.ndarray, sides: tuple[int, ...] = RESIZE_SIDES) -> np.ndarray:
    """Mean over images of the MSE after shrinking to ``side`` pixels and back (bicubic).

    ``rgb`` is uint8 ``(G, H, W, 3)``; returns one error per side.
    """
    errors = np.zeros(len(sides))
    for image in rgb:
        pil = Image.fromarray(image)
        for i, side in enumerate(sides):
            small = pil.resize((side, side), Image.Resampling.BICUBIC)
            back = small.resize(pil.size, Image.Resampling.BICUBIC)
            errors[i] += _mse(image, np.asarray(back))
    return errors / len(rgb)


def blur_errors(rgb: np.ndarray, radii: tuple[int, ...] = BLUR_RADII) -> np.ndarray:
    """Mean over images of the MSE after a Gaussian blur of each radius (PIL)."""
    errors = np.zeros(len(radii))
    for image in rgb:
        pil = Image.fromarray(image)
        for i, radius in enumerate(radii):
            blurred = pil.filter(ImageFilter.GaussianBlur(radius=radius))
            errors[i] += _mse(image, np.asarray(blurred))
    return errors / len(rgb)


def error_auc(errors: np.ndarray) -> float:
    """Area under an error curve with unit spacing (trapezoid), as ``sklearn.metrics.auc``."""
    errors = np.asarray(errors, dtype=np.float64)
    return float(errors.sum() - (errors[0] + errors[-1]) / 2)


def component_stats(
    images: np.ndarray, limit: float | None = None, min_pixels: int = 10, level: int = 230
) -> tuple[float, float]:
    """Mean number of red and blue components and their mean area over the maps ``(G, H, W)``.

    A pixel is blue foreground if its red channel is <= ``level`` (of 255), red foreground if
    its blue channel is (TOPO's threshold); regions are 8-connected; NaN pixels (outside the
    hull) are never foreground.
    """
    ndimage = require("scipy.ndimage", "the component count", extra="introspect")
    rgb = render_rgb(images, limit)
    inside = ~np.isnan(np.asarray(images))
    structure = np.ones((3, 3), dtype=bool)
    counts, areas = [], []
    for image, mask in zip(rgb, inside, strict=True):
        n, area = 0, 0
        for channel in (0, 2):
            foreground = (image[..., channel] <= level) & mask
            labels, found = ndimage.label(foreground, structure=structure)
            sizes = np.bincount(labels.ravel(), minlength=found + 1)[1:]
            big = sizes[sizes >= min_pixels]
            n += len(big)
            area += int(big.sum())
        counts.append(n)
        areas.append(area / n if n else 0.0)
    return float(np.mean(counts)), float(np.mean(areas))


def topomap_quality(
    coordinates: np.ndarray,
    activations: np.ndarray,
    limit: float | None = None,
    image_size: int = 300,
) -> dict[str, Any]:
    """Smoothness errors (resize and blur, with AUC) and component statistics of the maps.

    Parameters
    ----------
    coordinates, activations
        ``(C, 2)`` layout and ``(G, C)`` per-channel values.
    limit
        Colour range (default: max |activation|).
    image_size
        Side of the rendered image for the smoothness errors (the paper's PDFs rasterised to
        about 300 pixels).

    Returns
    -------
    ``{"resize_mse": [10 floats], "resize_auc", "blur_mse": [10 floats], "blur_auc",
    "components", "component_area"}``.
    """
    activations = np.atleast_2d(np.asarray(activations, dtype=np.float64))
    limit = symmetric_limit(activations) if limit is None else limit
    rgb = render_rgb(interpolate_topomaps(coordinates, activations, image_size), limit)
    resize = resize_errors(rgb)
    blur = blur_errors(rgb)
    components, area = component_stats(interpolate_topomaps(coordinates, activations, 100), limit)
    return {
        "resize_mse": resize.tolist(),
        "resize_auc": error_auc(resize),
        "blur_mse": blur.tolist(),
        "blur_auc": error_auc(blur),
        "components": components,
        "component_area": area,
    }
