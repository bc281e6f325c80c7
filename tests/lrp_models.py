"""Small float64 ReLU networks for the LRP / Deep Taylor tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(bias: bool = False) -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 8, bias=bias),
        nn.ReLU(),
        nn.Linear(8, 8, bias=bias),
        nn.ReLU(),
        nn.Linear(8, 4, bias=bias),
    )


def cnn(bias: bool = False, pools: str = "max_avg") -> nn.Module:
    first = nn.MaxPool2d(2) if pools in ("max_avg", "max") else nn.AvgPool2d(2)
    second = nn.AvgPool2d(2) if pools == "max_avg" else nn.MaxPool2d(2)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=bias),
        nn.ReLU(),
        first,
        nn.Conv2d(4, 5, 3, padding=1, bias=bias),
        nn.ReLU(),
        second,
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 6, bias=bias),
        nn.ReLU(),
        nn.Linear(6, 3, bias=bias),
    )


class Residual(nn.Module):
    """conv -> relu -> (conv + identity) -> relu -> global average -> linear."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv1(x))
        out = self.conv2(a)
        out += a
        out = self.relu(out)
        return self.fc(torch.flatten(self.pool(out), 1))


class Concat(nn.Module):
    """Two branches concatenated along channels, then max pool and a linear head."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.left = nn.Conv2d(2, 3, 3, padding=1, bias=bias)
        self.right = nn.Conv2d(2, 2, 1, bias=bias)
        self.mix = nn.Conv2d(5, 4, 3, padding=1, bias=bias)
        self.fc = nn.Linear(4 * 4 * 4, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.relu(torch.cat([self.left(x), self.right(x)], dim=1))
        out = F.max_pool2d(torch.relu(self.mix(joined)), 2)
        return self.fc(out.reshape(out.shape[0], -1))


class Upsampling(nn.Module):
    """Nearest (functional) and bilinear (module) upsampling between convolutions."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=bias)
        self.bilinear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv3 = nn.Conv2d(3, 2, 3, stride=2, padding=1, bias=bias)
        self.fc = nn.Linear(2 * 8 * 8, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1(x))
        a = F.interpolate(a, scale_factor=2, mode="nearest")
        a = torch.relu(self.conv2(a))
        a = torch.relu(self.conv3(self.bilinear(a)))
        return self.fc(torch.flatten(a, 1))


def build(name: str, bias: bool = False) -> nn.Module:
    """A seeded float64 model by name."""
    torch.manual_seed(3)
    factories = {
        "mlp": lambda: mlp(bias),
        "cnn": lambda: cnn(bias),
        "residual": lambda: Residual(bias),
        "concat": lambda: Concat(bias),
        "upsampling": lambda: Upsampling(bias),
    }
    return factories[name]().double().eval()


INPUT_SHAPES = {
    "mlp": (6,),
    "cnn": (2, 8, 8),
    "residual": (2, 5, 5),
    "concat": (2, 8, 8),
    "upsampling": (2, 4, 4),
}


def inputs(name: str, batch: int = 3, nonnegative: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    x = torch.randn((batch,) + INPUT_SHAPES[name], generator=generator, dtype=torch.float64)
    return x.abs() if nonnegative else x


def randomise_batchnorm(model: nn.Module, seed: int = 3) -> nn.Module:
    """Statistics and affine parameters far from the identity (negative gammas too)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.3 + 2.7 * torch.rand(n, generator=generator))
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(0.5 * torch.randn(n, generator=generator))
    return model.double().eval()
