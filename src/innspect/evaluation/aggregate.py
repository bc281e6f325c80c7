"""Mergeable summaries of per-sample scores: count, mean and the sum of squared deviations.

Shards of a data set are summarised on their own and merged in any grouping with Chan,
Golub and LeVeque's pairwise update ("Algorithms for computing the sample variance", 1983),
which gives the mean and variance of the union exactly (up to rounding), so a data set's
mean and 95 % interval do not depend on how it was cut into shards or which worker did what.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (standard tables);
# above 30 the normal quantile is within 4 % of t's.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True)
class ScoreSummary:
    """``n`` finite scores summarised by their mean and ``m2``, the sum of squared deviations
    from the mean (undefined, NaN, scores are left out and not counted)."""

    n: int = 0
    mean: float = math.nan
    m2: float = 0.0

    @classmethod
    def of(cls, scores: torch.Tensor | np.ndarray) -> ScoreSummary:
        """The summary of one group of scores."""
        values = np.asarray(torch.as_tensor(scores).detach().cpu(), dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls()
        mean = float(values.mean())
        return cls(int(values.size), mean, float(((values - mean) ** 2).sum()))

    def merge(self, other: ScoreSummary) -> ScoreSummary:
        """The summary of both groups' scores together (Chan et al. 1983)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        return ScoreSummary(n, mean, self.m2 + other.m2 + delta * delta * self.n * other.n / n)

    @classmethod
    def merged(cls, parts: Iterable[ScoreSummary]) -> ScoreSummary:
        total = cls()
        for part in parts:
            total = total.merge(part)
        return total

    def interval(self) -> tuple[float, float]:
        """95 % confidence interval of the mean (Student's t; NaN for fewer than 2 scores)."""
        if self.n < 2:
            return math.nan, math.nan
        quantile = _T95[self.n - 2] if self.n - 1 <= len(_T95) else 1.96
        half = quantile * math.sqrt(self.m2 / (self.n - 1)) / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def as_array(self) -> np.ndarray:
        return np.array([self.n, self.mean, self.m2], dtype=np.float64)

    @classmethod
    def from_array(cls, array: np.ndarray) -> ScoreSummary:
        n, mean, m2 = (float(v) for v in np.asarray(array, dtype=np.float64))
        return cls(int(n), mean, m2)
