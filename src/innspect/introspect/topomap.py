"""What a topographic map shows: per-channel values per group, interpolated images, group order.

ANN-topomaps and iNNtrospect colour each channel's point with its spatially averaged NAP and
interpolate linearly between the points (../shared/INTROSPECT.md sections 7 and 9.7-9.9).
"""

from __future__ import annotations

import numpy as np

from innspect.errors import InputError
from innspect.introspect.naps import Naps
from innspect.util.extras import require


def topomap_activations(profiles: Naps | np.ndarray, layer: str | None = None) -> np.ndarray:
    """Each channel's NAP averaged over the spatial axes: ``(G, C)``.

    ``profiles`` is :class:`Naps` (with ``layer``) or one layer's ``(G, *spatial, C)`` array.
    """
    nap = profiles[layer] if isinstance(profiles, Naps) else np.asarray(profiles)
    if nap.ndim < 2:
        raise InputError(f"NAPs of a layer have shape (groups, ..., channels); got {nap.shape}")
    return nap.reshape(nap.shape[0], -1, nap.shape[-1]).mean(axis=1)


def interpolate_topomaps(
    coordinates: np.ndarray, values: np.ndarray, resolution: int = 100
) -> np.ndarray:
    """Linear (Delaunay) interpolation of per-channel values onto a square image per group.

    The image is in the natural orientation: ``image[r, c]`` is the value at
    ``x = c / (resolution-1)``, ``y = 1 - r / (resolution-1)`` of the layout's bounding box
    (x right, y up, as TOPO draws it; iNNtrospect rotates by 90 degrees, INTROSPECT.md section
    7.2). Outside the convex hull of the points the image is NaN.

    Parameters
    ----------
    coordinates
        ``(C, 2)`` layout.
    values
        ``(G, C)`` (or ``(C,)``) per-channel values.

    Returns
    -------
    ``(G, resolution, resolution)`` float64 (``(resolution, resolution)`` for 1-D values).
    """
    interpolate = require("scipy.interpolate", "topographic-map interpolation", extra="introspect")
    coordinates = np.asarray(coordinates, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    single = values.ndim == 1
    values = values[None] if single else values
    if coordinates.ndim != 2 or coordinates.shape[1] != 2:
        raise InputError(f"coordinates must be (channels, 2); got {coordinates.shape}")
    if values.shape[1] != len(coordinates):
        raise InputError(
            f"{values.shape[1]} values per group for {len(coordinates)} channel coordinates: "
            "the layout and the activations must come from the same layer"
        )
    low, high = coordinates.min(axis=0), coordinates.max(axis=0)
    xs = np.linspace(low[0], high[0], resolution)
    ys = np.linspace(high[1], low[1], resolution)  # row 0 at the top
    grid_x, grid_y = np.meshgrid(xs, ys)
    images = np.stack(
        [interpolate.griddata(coordinates, v, (grid_x, grid_y), method="linear") for v in values]
    )
    return images[0] if single else images


def symmetric_limit(values: np.ndarray) -> float:
    """``max |value|`` ignoring NaN (1 when everything is zero): the colour range is
    ``[-limit, limit]`` so that zero is white."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def group_order(
    profiles: Naps | np.ndarray,
    layer: str | None = None,
    metric: str = "cosine",
) -> list[int]:
    """Group indices ordered by average-linkage clustering (optimal leaf order) of the groups'
    full NAPs ``NAP.reshape(G, -1)`` (TOPO section 9.7, without its conv-layer bug, INTROSPECT.md
    section 10 point 12).

    Returns indices into the groups; names follow from ``[groups[i] for i in order]``.
    """
    nap = profiles[layer] if isinstance(profiles, Naps) else np.asarray(profiles)
    n = nap.shape[0]
    if n < 3:
        return list(range(n))
    hierarchy = require("scipy.cluster.hierarchy", "group ordering", extra="introspect")
    distance = require("scipy.spatial.distance", "group ordering", extra="introspect")
    with np.errstate(invalid="ignore", divide="ignore"):
        condensed = np.nan_to_num(distance.pdist(nap.reshape(n, -1), metric), nan=1.0)
    linkage = hierarchy.linkage(condensed, method="average", optimal_ordering=True)
    return [int(i) for i in hierarchy.leaves_list(linkage)]
