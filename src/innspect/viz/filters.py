"""``plot_filters``: the first linear layer's weights as a grid of images.

As tensorflow-lrp's filter visualiser (REFERENCES.md B8), every filter is drawn on one
common colour scale (it framed each filter with the global min and max to force it), so
filters can be compared. A dense first layer is shown too, each output unit's weights
reshaped to ``image_shape``: a one-layer dense network and a one-layer CNN whose kernel
covers the whole image compute the same linear map, and learn the same filters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from innspect.errors import InputError
from innspect.viz.files import save_figure


def first_linear_layer(model: nn.Module) -> nn.Module:
    """The model's first Conv2d or Linear module (in registration order)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            return module
    raise InputError(f"{type(model).__name__} has no Conv2d or Linear layer to show")


def filter_images(model: nn.Module, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """The first layer's filters as images, (filters, H, W) or (filters, H, W, 3).

    Conv2d weights (out, in, kh, kw) give one image per output channel; a Linear layer
    needs ``image_shape`` = (channels, H, W) of its input. One input channel is a grey
    image, three an RGB image; other counts are averaged over the channels.
    """
    layer = first_linear_layer(model)
    weight = layer.weight.detach().cpu().double().numpy()
    if isinstance(layer, nn.Linear):
        if image_shape is None:
            raise InputError(
                "the first layer is Linear: give image_shape=(channels, H, W) of its input"
            )
        if math.prod(image_shape) != weight.shape[1]:
            raise InputError(
                f"image_shape {tuple(image_shape)} has {math.prod(image_shape)} values; the "
                f"Linear layer has {weight.shape[1]} inputs"
            )
        weight = weight.reshape((weight.shape[0], *image_shape))
    if weight.shape[1] == 3:
        return np.moveaxis(weight, 1, -1)
    return weight.mean(axis=1)


def plot_filters(
    model: nn.Module,
    image_shape: Sequence[int] | None = None,
    path: str | os.PathLike | None = None,
    columns: int = 8,
) -> Any:
    """Draw the first layer's filters on one colour scale; returns the matplotlib Figure.

    Parameters
    ----------
    image_shape
        (channels, H, W) of the input, needed when the first layer is Linear.
    path
        Also write the figure there (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    images = filter_images(model, image_shape)
    rgb = images.ndim == 4
    low, high = float(images.min()), float(images.max())
    count = len(images)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(1.2 * columns, 1.2 * rows + 0.3))
    for index, image in enumerate(images):
        axes = figure.add_subplot(rows, columns, index + 1)
        if rgb:
            axes.imshow((image - low) / (high - low or 1.0))
        else:
            axes.imshow(image, cmap="gray", vmin=low, vmax=high)
        axes.set_axis_off()
        axes.set_title(str(index), fontsize=7)
    figure.suptitle(f"first-layer filters (one scale: {low:.2g} .. {high:.2g})", fontsize=8)
    if path is not None:
        save_figure(figure, path, dpi=100)
    return figure
