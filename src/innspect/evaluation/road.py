"""ROAD: remove and debias (Rong et al. 2022, *A consistent and efficient evaluation strategy
for attribution methods*, ICML).

The most relevant ``p`` % of the pixels (every channel of a pixel) are replaced by *noisy
linear imputation*: each removed pixel becomes the weighted mean of its 8 neighbours (weight
1/6 for the 4 direct ones, 1/12 for the diagonals), removed neighbours included, which is one
sparse linear system per image and percentage, plus Gaussian noise of standard deviation
``noise``. The curve is whether the model still predicts the class ``y``, per percentage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from innspect.errors import InputError, OptionError
from innspect.evaluation.metric import Metric, MetricResult, predict_in_chunks, ranks_descending
from innspect.util.extras import require

# (row offset, column offset), weight: Rong et al.'s imputation kernel
NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The values of the ``removed`` pixels (H*W booleans) of ``image`` (C, H, W) that make
    each the weighted mean of its neighbours inside the image: (C, removed count)."""
    sparse = require("scipy.sparse", "ROAD's imputation", "test")
    linalg = require("scipy.sparse.linalg", "ROAD's imputation", "test")
    channels, height, width = image.shape
    flat = image.reshape(channels, -1)
    index = np.flatnonzero(removed)
    count = index.size
    variable = np.full(height * width, -1)
    variable[index] = np.arange(count)
    rows, cols = index // width, index % width
    diagonal = np.ones(count)
    right = np.zeros((count, channels))
    entries_r, entries_c, entries_v = [], [], []
    for (dr, dc), weight in NEIGHBOURS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (c >= 0) & (r < height) & (c < width)
        diagonal[~inside] -= weight  # the weights of the neighbours that exist sum to 1
        ids = np.flatnonzero(inside)
        neighbour = r[inside] * width + c[inside]
        known = ~removed[neighbour]
        right[ids[known]] -= weight * flat[:, neighbour[known]].T
        entries_r.append(ids[~known])
        entries_c.append(variable[neighbour[~known]])
        entries_v.append(np.full(int((~known).sum()), weight))
    entries_r.append(np.arange(count))
    entries_c.append(np.arange(count))
    entries_v.append(-diagonal)
    matrix = sparse.csc_matrix(
        (np.concatenate(entries_v), (np.concatenate(entries_r), np.concatenate(entries_c))),
        shape=(count, count),
    )
    solution = linalg.spsolve(matrix, right)
    return np.asarray(solution).reshape(count, channels).T


class ROAD(Metric):
    """Remove and debias (Rong et al. 2022, ICML, arXiv:2202.00449): for each percentage in
    ``percentages``, the most relevant pixels are replaced by noisy linear imputation and the
    curve records 1.0 where the model still predicts ``y``. ``scores``: the curve's mean (the
    share of percentages still classified correctly); lower is better (most relevant first).

    Pixels are ranked by their attribution summed over channels; ``p`` % of the H*W pixels
    are removed in every channel. Noise comes from ``generator=`` (or ``seed``).
    """

    name = "road"
    family = "faithfulness"
    paper = "Rong et al. 2022, ICML, arXiv:2202.00449"
    higher_is_better = False
    default_softmax = True
    inputs = ("generator",)

    def __init__(
        self,
        percentages: Sequence[float] | None = None,
        noise: float = 0.01,
        seed: int | None = 0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.percentages = list(range(1, 100, 2)) if percentages is None else list(percentages)
        if not self.percentages or not all(0 <= p <= 100 for p in self.percentages):
            raise OptionError(f"percentages must lie in [0, 100], got {percentages!r}")
        self.noise = float(noise)
        self.seed = seed

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        if x.ndim != 4:
            raise InputError(f"road needs images (N, C, H, W), got shape {tuple(x.shape)}")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if self.seed is None else int(self.seed))
        n, channels, height, width = x.shape
        pixels = height * width
        rank = ranks_descending(a.expand_as(x).double().sum(dim=1).reshape(n, -1)).cpu().numpy()
        images = x.detach().cpu().double().numpy()
        perturbed = []
        for i in range(n):
            for p in self.percentages:
                removed = rank[i] < int(pixels * p / 100)
                image = images[i].reshape(channels, -1).copy()
                if removed.any():
                    values = linear_imputation(images[i], removed)
                    noise = torch.randn(values.shape, generator=generator, dtype=torch.float64)
                    image[:, removed] = values + self.noise * noise.numpy()
                perturbed.append(image.reshape(channels, height, width))
        rows = torch.as_tensor(np.stack(perturbed)).to(x)
        labels = y.repeat_interleave(len(self.percentages))
        predicted = predict_in_chunks(model, rows, self.softmax, self.batch_size).argmax(dim=1)
        correct = predicted == labels
        curves = correct.double().reshape(n, len(self.percentages))
        return self._result(curves.mean(dim=1), curves)


METRIC_CLASSES: list[type[Metric]] = [ROAD]
