"""The demo's data: scikit-learn's handwritten digits, upsampled to 32 x 32, in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass
class Digits:
    """Train/test split of the digits, (N, 1, 32, 32) float32 in [0, 1] and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_dataset() -> Digits:
    """Load the 1797 8 x 8 digits bundled with scikit-learn (no download) and split them."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the demo needs scikit-learn: pip install 'innspect[demo]'") from error
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    # Bilinear upsampling keeps strokes smooth; 32 x 32 leaves room for three pooling stages.
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    images = images.clamp(0.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    order = torch.as_tensor(np.random.default_rng(SPLIT_SEED).permutation(len(labels)))
    n_test = int(round(TEST_FRACTION * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return Digits(images[train], labels[train], images[test], labels[test])


def one_per_class(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Index of the first sample of each class 0 .. n_classes - 1 (a fixed, readable set)."""
    picks = []
    for label in range(n_classes):
        (where,) = torch.nonzero(labels == label, as_tuple=True)
        if len(where):
            picks.append(int(where[0]))
    return torch.as_tensor(picks, dtype=torch.int64)
