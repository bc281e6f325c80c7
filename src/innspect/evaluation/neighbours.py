"""Metrics over the samples of a batch (Dasgupta et al. 2022, *Framework for evaluating
faithfulness of local explanations*, ICML): do samples whose explanations look alike get the
same prediction? A sample's score depends on the other samples of its batch by definition.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from innspect.errors import OptionError
from innspect.evaluation.metric import (
    Metric,
    MetricResult,
    flat,
    positive_int,
    predict_in_chunks,
)

DISCRETISATIONS = ("top_n", "first_n_sign")


def _predicted(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return predict_in_chunks(model, x, False, batch_size).argmax(dim=1)


def _agreement(similar: torch.Tensor, predicted: torch.Tensor, guard: float) -> torch.Tensor:
    """Per sample: the share of its similar samples (itself excluded) with its prediction."""
    similar = similar & ~torch.eye(len(similar), dtype=torch.bool, device=similar.device)
    same = predicted[None, :] == predicted[:, None]
    return (similar & same).sum(dim=1).double() / (similar.sum(dim=1).double() + guard)


class Sufficiency(Metric):
    """Share of the samples whose explanation lies within ``threshold`` of this one's (the
    standardised Euclidean distance, as scipy's ``"seuclidean"``, divided by the batch's
    largest) that get the same predicted class; 0 when none does. Higher is better.

    Features constant over the batch (variance 0) are left out of the distance (scipy divides
    by their zero variance)."""

    name = "sufficiency"
    family = "faithfulness"
    paper = "Dasgupta et al. 2022, ICML, arXiv:2202.00734"
    higher_is_better = True
    default_abs = True
    inputs = ()

    def __init__(self, threshold: float = 0.6, **options: Any) -> None:
        super().__init__(**options)
        self.threshold = float(threshold)

    def _evaluate(self, model, x, y, a) -> MetricResult:
        rows = flat(a.expand_as(x)).double()
        if rows.shape[0] < 2:
            return self._result(torch.zeros(rows.shape[0], dtype=torch.float64))
        variance = rows.var(dim=0, unbiased=True)
        kept = variance > 0
        scaled = rows[:, kept] / variance[kept].sqrt()
        distance = torch.cdist(scaled, scaled)
        peak = distance.abs().max()
        distance = distance / peak if peak > 0 else distance
        similar = distance <= self.threshold
        return self._result(
            _agreement(similar, _predicted(model, x, self.batch_size), 0.0).nan_to_num(0.0)
        )


class Consistency(Metric):
    """Share of the samples with the same discretised explanation that get the same predicted
    class (``1e-9`` guards an explanation shared by no other sample). Higher is better.

    ``discretise_func``: "top_n" (the default: the set of the ``n`` most relevant features,
    the paper's discretisation), "first_n_sign" (Quantus 0.6.0's ``top_n_sign``: the signs of
    the first ``n`` entries of the flattened attribution, whatever their relevance) or a
    callable from one flattened attribution to a hashable label."""

    name = "consistency"
    family = "robustness"
    paper = "Dasgupta et al. 2022, ICML, arXiv:2202.00734"
    higher_is_better = True
    default_abs = True
    default_softmax = True
    inputs = ()

    def __init__(
        self,
        discretise_func: str | Callable[[torch.Tensor], Hashable] = "top_n",
        n: int = 5,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not callable(discretise_func) and discretise_func not in DISCRETISATIONS:
            raise OptionError(f"discretise_func must be one of {DISCRETISATIONS} or a callable")
        self.discretise_func = discretise_func
        self.n = positive_int(n, "n")

    def _label(self, row: torch.Tensor) -> Hashable:
        if callable(self.discretise_func):
            return self.discretise_func(row)
        if self.discretise_func == "first_n_sign":
            return tuple(torch.sign(row[: self.n]).tolist())
        return tuple(sorted(torch.argsort(-row, stable=True)[: self.n].tolist()))

    def _evaluate(self, model, x, y, a) -> MetricResult:
        rows = flat(a.expand_as(x)).double().cpu()
        labels = [self._label(row) for row in rows]
        ids = {label: i for i, label in enumerate(dict.fromkeys(labels))}
        codes = torch.tensor([ids[label] for label in labels])
        similar = codes[None, :] == codes[:, None]
        predicted = _predicted(model, x, self.batch_size).cpu()
        return self._result(_agreement(similar, predicted, 1e-9))


METRIC_CLASSES: list[type[Metric]] = [Sufficiency, Consistency]
