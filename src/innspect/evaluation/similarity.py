"""Row-wise similarities between two (N, K) tensors, as Quantus' ``similarity_func``s."""

from __future__ import annotations

import torch


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (float64); NaN where
    a row is constant (scipy's ``pearsonr`` also returns NaN there)."""
    a, b = a.double(), b.double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    # scale first: products of tiny centred values would otherwise underflow
    a = a / a.abs().amax(dim=1, keepdim=True)
    b = b / b.abs().amax(dim=1, keepdim=True)
    r = (a * b).sum(dim=1) / torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1))
    return r.clamp(-1.0, 1.0)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Per row, 1-based ranks with ties given their mean rank (scipy's ``rankdata``)."""
    values = values.double()
    order = torch.argsort(values, dim=1, stable=True)
    ordered = values.gather(1, order)
    n, k = values.shape
    positions = torch.arange(1, k + 1, dtype=torch.float64, device=values.device).expand(n, -1)
    # a tie group starts where the sorted value changes; its members share the mean position
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = torch.cumsum(starts.long(), dim=1) - 1
    sums = torch.zeros(n, k, dtype=torch.float64, device=values.device)
    counts = torch.zeros(n, k, dtype=torch.float64, device=values.device)
    sums.scatter_add_(1, group, positions)
    counts.scatter_add_(1, group, torch.ones_like(positions))
    mean_rank = (sums / counts.clamp_min(1)).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row pair: Pearson of the average ranks."""
    return pearson(average_ranks(a), average_ranks(b))


SIMILARITIES = {"pearson": pearson, "spearman": spearman}
