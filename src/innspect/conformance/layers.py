"""The single-layer models of iNNvestigate's reference files, rebuilt in torch.

test-data-innvestigate (REFERENCES.md A5) explains six small Keras models
``Input(10, 10, 3) -> layer -> Flatten``. Their files hold channels-last inputs (NHWC) and
Keras weight layouts: a Dense kernel is ``(in, out)``, a Conv2D kernel ``(kh, kw, in, out)``.
The torch models here take the channels-last input as it is: Dense acts on the last axis,
convolutions and pooling permute to NCHW and back, so flattening happens in Keras' (H, W, C)
order and the outputs match element for element.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

LAYER_MODELS = ("Dense", "Dense_relu", "Conv2D", "Conv2D_relu", "AveragePooling2D", "MaxPooling2D")
INPUT_SHAPE = (10, 10, 3)  # channels last, as in the Keras files
UNITS = 5  # Dense(5) and Conv2D(5, 3x3) in test-data-innvestigate


class ChannelsLast(nn.Module):
    """Apply an NCHW layer to an NHWC tensor and return NHWC."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _layer(name: str, weights: list[np.ndarray]) -> nn.Module:
    base = name.removesuffix("_relu")
    if base in ("Dense", "Conv2D"):
        if len(weights) != 2:
            raise ValueError(
                f"layer model {name} needs a kernel and a bias, got {len(weights)} arrays"
            )
        kernel, bias = (np.asarray(w, dtype=np.float64) for w in weights)
    if base == "Dense":
        if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
            raise ValueError(
                f"Dense kernel must be (in, out) with a bias (out,), got {kernel.shape} and "
                f"{bias.shape}"
            )
        dense = nn.Linear(kernel.shape[0], kernel.shape[1])
        dense.weight.data = torch.from_numpy(kernel.T.copy())
        dense.bias.data = torch.from_numpy(bias.copy())
        return dense
    if base == "Conv2D":
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise ValueError(
                f"Conv2D kernel must be (kh, kw, in, out) with a bias (out,), got {kernel.shape} "
                f"and {bias.shape}"
            )
        conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2])
        conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        conv.bias.data = torch.from_numpy(bias.copy())
        return ChannelsLast(conv)
    if base == "AveragePooling2D":
        return ChannelsLast(nn.AvgPool2d(2))
    if base == "MaxPooling2D":
        return ChannelsLast(nn.MaxPool2d(2))
    raise ValueError(f"unknown layer model '{name}'; known: {', '.join(LAYER_MODELS)}")


def build_layer_model(name: str, weights: list[np.ndarray]) -> nn.Module:
    """The torch equivalent of iNNvestigate's ``Input -> layer -> Flatten`` model, float64.

    Parameters
    ----------
    name
        One of ``LAYER_MODELS``.
    weights
        Keras' ``model.get_weights()``: kernel and bias for Dense / Conv2D, nothing for pooling.
    """
    layers = [_layer(name, weights)]
    if name.endswith("_relu"):
        layers.append(nn.ReLU())
    layers.append(nn.Flatten())
    return nn.Sequential(*layers).double().eval()


def random_layer_model(name: str, generator: torch.Generator) -> tuple[nn.Module, list[np.ndarray]]:
    """A layer model with seeded random weights (non-zero biases) and its Keras weights."""
    channels = INPUT_SHAPE[-1]
    base = name.removesuffix("_relu")
    if base == "Dense":
        shapes = [(channels, UNITS), (UNITS,)]
    elif base == "Conv2D":
        shapes = [(3, 3, channels, UNITS), (UNITS,)]
    else:
        shapes = []
    weights = [
        (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).numpy()
        for shape in shapes
    ]
    return build_layer_model(name, weights), weights
