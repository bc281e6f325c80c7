"""iNNvestigate's visualisation functions: project, heatmap, graymap, gamma, clip_quantile.

They take numpy arrays or torch tensors (a tensor gives a tensor back on its device) and never
modify their input. Differences from iNNvestigate 2.1.2, all bug fixes: ``project`` normalises
a batch per sample for any rank (iNNvestigate broadcasts the per-sample maximum against the
last axis), ``heatmap`` puts the colour axis where ``reduce_axis`` was for any axis (not only the
last), and ``clip_quantile`` returns a clipped copy instead of clipping in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede any pyplot import elsewhere
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402

from innspect.viz.arrays import as_numpy, like_source  # noqa: E402

REDUCE_OPS = ("sum", "absmax")


def project(
    X: Any,
    output_range: tuple[float, float] = (0, 1),
    absmax: Any = None,
    input_is_positive_only: bool = False,
) -> Any:
    """Scale ``X`` by its absolute maximum per sample and map it into ``output_range``.

    Parameters
    ----------
    X
        Batch-first array or tensor.
    output_range
        (low, high) of the result.
    absmax
        Scale per sample (shape (N,)) or a scalar; default: max |X| of each sample.
        A scale of zero leaves that sample unscaled.
    input_is_positive_only
        If False, [-absmax, absmax] maps to the whole range (0 to its middle);
        if True, [0, absmax] does (negative values clip to ``low``).

    Returns
    -------
    The projected values, same shape and kind as ``X``.
    """
    values, source = as_numpy(X)
    if absmax is None:
        absmax = np.abs(values).max(axis=tuple(range(1, values.ndim))) if values.ndim else 0.0
    scale = np.asarray(absmax, dtype=values.dtype)
    if scale.ndim == 1:
        scale = scale.reshape((-1,) + (1,) * (values.ndim - 1))
    scale = np.where(scale == 0, 1, scale)
    values = values / scale
    if not input_is_positive_only:
        values = (values + 1) / 2
    values = np.clip(values, 0, 1)
    low, high = output_range
    return like_source(low + values * (high - low), source)


def heatmap(
    X: Any,
    cmap_type: str = "seismic",
    reduce_op: str = "sum",
    reduce_axis: int = -1,
    alpha_cmap: bool = False,
    **kwargs: Any,
) -> Any:
    """Colour-map ``X`` after reducing its channel axis.

    Parameters
    ----------
    X
        Batch of analyses, e.g. (N, H, W, C) with ``reduce_axis=-1`` or (N, C, H, W) with
        ``reduce_axis=1``.
    cmap_type
        A matplotlib colormap name; "seismic" shows negative blue, zero white, positive red.
    reduce_op
        "sum" over the channels, or "absmax": the value of largest magnitude (sign kept).
    reduce_axis
        The channel axis; the colour axis of the result takes its place.
    alpha_cmap
        Add the colormap's alpha channel (4 colour values instead of 3).
    kwargs
        Passed to :func:`project` (``absmax``, ``input_is_positive_only``).

    Returns
    -------
    float32 colours in [0, 1], shape of ``X`` with ``reduce_axis`` of size 3 (or 4).
    """
    if reduce_op not in REDUCE_OPS:
        raise ValueError(f"reduce_op must be one of {REDUCE_OPS}, got {reduce_op!r}")
    values, source = as_numpy(X)
    if values.ndim < 2:
        raise ValueError(f"heatmap needs a batch with a channel axis, got shape {values.shape}")
    axis = reduce_axis % values.ndim
    if reduce_op == "sum":
        reduced = values.sum(axis=axis)
    else:
        pos_max = values.max(axis=axis)
        neg_min = values.min(axis=axis)
        reduced = np.where(pos_max >= -neg_min, pos_max, neg_min)
    indices = np.asarray(project(reduced, output_range=(0, 255), **kwargs)).astype(np.int64)
    colours = colormaps[cmap_type](indices)  # (..., 4) RGBA in [0, 1]
    if not alpha_cmap:
        colours = colours[..., :3]
    colours = np.moveaxis(colours, -1, axis).astype(np.float32)
    return like_source(colours, source)


def graymap(X: Any, **kwargs: Any) -> Any:
    """:func:`heatmap` with the "gray" colormap."""
    return heatmap(X, cmap_type="gray", **kwargs)


def gamma(X: Any, gamma: float = 0.5, minamp: float = 0, maxamp: float | None = None) -> Any:
    """Sign-preserving gamma correction around ``minamp``.

    Values are shifted by ``minamp``, scaled by ``maxamp`` (default: the largest absolute
    shifted value of the whole array), raised to ``gamma`` in magnitude with the sign kept, and
    scaled and shifted back. The order of the entries is preserved.
    """
    values, source = as_numpy(X)
    shifted = values - minamp
    if maxamp is None:
        maxamp = float(np.abs(shifted).max()) if shifted.size else 0.0
    if maxamp == 0:
        return like_source(values, source)
    scaled = shifted / maxamp
    corrected = np.sign(scaled) * np.abs(scaled) ** gamma
    return like_source(corrected * maxamp + minamp, source)


def clip_quantile(X: Any, quantile: float | Sequence[float] = 1) -> Any:
    """Clip ``X`` to its percentiles: ``quantile`` q gives (q, 100 - q), a pair gives (low, high).

    Percentiles are in percent and taken over the whole array, as in iNNvestigate.
    """
    values, source = as_numpy(X)
    if isinstance(quantile, Sequence) and not isinstance(quantile, str):
        low_q, high_q = quantile
    else:
        low_q, high_q = quantile, 100 - quantile
    low, high = np.percentile(values, low_q), np.percentile(values, high_q)
    return like_source(np.clip(values, low, high), source)
