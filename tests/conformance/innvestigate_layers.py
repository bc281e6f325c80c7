"""The single-layer models of iNNvestigate's reference files, rebuilt in torch.

Each file holds an input batch (8, 10, 10, 3) in channels-last order and, per layer model
`Input(10, 10, 3) -> layer -> Flatten`, the Keras weights, the model output and the expected
attribution of the max-activation neuron. The torch models take the channels-last input as
it is: Dense acts on the last axis; convolutions and pooling permute to NCHW and back, so
flattening happens in Keras' (H, W, C) order and the outputs match element for element.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

LAYER_MODELS = ("Dense", "Dense_relu", "Conv2D", "Conv2D_relu", "AveragePooling2D", "MaxPooling2D")
RTOL, ATOL = 1e-2, 1e-8  # iNNvestigate's own tolerances for these files


class ChannelsLast(nn.Module):
    """Apply an NCHW layer to an NHWC tensor and return NHWC."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _layer(name: str, weights: list[np.ndarray]) -> nn.Module:
    base = name.removesuffix("_relu")
    if base == "Dense":
        kernel, bias = weights
        dense = nn.Linear(kernel.shape[0], kernel.shape[1])
        dense.weight.data = torch.from_numpy(kernel.T.copy())
        dense.bias.data = torch.from_numpy(bias.copy())
        return dense
    if base == "Conv2D":
        kernel, bias = weights  # (kh, kw, in, out)
        conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2])
        conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        conv.bias.data = torch.from_numpy(bias.copy())
        return ChannelsLast(conv)
    if base == "AveragePooling2D":
        return ChannelsLast(nn.AvgPool2d(2))
    if base == "MaxPooling2D":
        return ChannelsLast(nn.MaxPool2d(2))
    raise ValueError(f"unknown layer model {name}")


def build_model(name: str, weights: list[np.ndarray]) -> nn.Module:
    """The torch equivalent of iNNvestigate's `Input -> layer -> Flatten` model, float64."""
    layers = [_layer(name, weights)]
    if name.endswith("_relu"):
        layers.append(nn.ReLU())
    layers.append(nn.Flatten())
    return nn.Sequential(*layers).double().eval()


@dataclass
class LayerCase:
    """One layer model of one reference file."""

    analyzer_name: str
    layer_name: str
    model: nn.Module
    input: np.ndarray
    output: np.ndarray
    attribution: np.ndarray


def load_cases(path: Path) -> list[LayerCase]:
    """All layer models of one reference file."""
    cases = []
    with h5py.File(path, "r") as f:
        analyzer_name = str(f.attrs["analyzer_name"])
        x = np.asarray(f["input"], dtype=np.float64)
        for layer_name in LAYER_MODELS:
            group = f[layer_name]
            weights_group = group["weights"]
            weights = [np.asarray(weights_group[str(i)]) for i in range(len(weights_group))]
            cases.append(
                LayerCase(
                    analyzer_name,
                    layer_name,
                    build_model(layer_name, weights),
                    x,
                    np.asarray(group["output"], dtype=np.float64),
                    np.asarray(group["attribution"], dtype=np.float64),
                )
            )
    return cases
