"""Model factories the CLI tests load as ``tests.cli_models:NAME`` (importable from the repo)."""

from __future__ import annotations

from torch import nn


def small_cnn() -> nn.Module:
    """A small CNN for (1, 12, 12) inputs with 5 outputs (the weights come from a file)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


def other_cnn() -> nn.Module:
    """An architecture whose state dict does not fit ``small_cnn``."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
