"""Complexity metrics: how concentrated is an attribution? (No model pass.)

With Quantus 0.6.0's defaults (``abs=True``, ``normalise=True``): sparseness is a Gini index,
complexity an entropy, effective complexity a count of features above a threshold.
"""

from __future__ import annotations

from typing import Any

import torch

from innspect.evaluation.metric import Metric, MetricResult, flat


class _Complexity(Metric):
    family = "complexity"
    needs_model = False
    default_abs = True
    inputs = ()

    def _evaluate(self, model, x, y, a) -> MetricResult:
        return self._result(self._score(flat(a).double()))

    def _score(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Sparseness(_Complexity):
    """Gini index of the attribution (Chalasani et al. 2020, *Concise explanations of neural
    networks using adversarial training*, ICML): ``sum((2k - d - 1) a_(k)) / (d sum(a))`` over
    the values sorted ascending, after adding 1e-7 (as Quantus) so an all-zero map is defined.
    Higher: sparser."""

    name = "sparseness"
    paper = "Chalasani et al. 2020, ICML, arXiv:1810.06583"
    higher_is_better = True

    def _score(self, a):
        a = torch.sort(a + 1e-7, dim=1).values
        d = a.shape[1]
        k = torch.arange(1, d + 1, device=a.device, dtype=a.dtype)
        return ((2 * k - d - 1) * a).sum(dim=1) / (d * a.sum(dim=1))


class Complexity(_Complexity):
    """Entropy of the attribution's share per feature, ``p = |a| / sum|a|`` (Bhatt et al.
    2020, *Evaluating and aggregating feature-based model explanations*, IJCAI):
    ``-sum p log(p + 1e-12)``. Lower: simpler."""

    name = "complexity"
    paper = "Bhatt et al. 2020, IJCAI, arXiv:2005.00631"
    higher_is_better = False

    def _score(self, a):
        p = a / a.abs().sum(dim=1, keepdim=True)
        return -(p * torch.log(p + 1e-12)).sum(dim=1)


class EffectiveComplexity(_Complexity):
    """Number of features whose attribution exceeds ``eps`` (Nguyen & Martínez 2020, *On
    quantitative aspects of model interpretability*, arXiv:2007.07584). Lower: simpler."""

    name = "effective_complexity"
    paper = "Nguyen & Martínez 2020, arXiv:2007.07584"
    higher_is_better = False

    def __init__(self, eps: float = 1e-5, **options: Any) -> None:
        super().__init__(**options)
        self.eps = float(eps)

    def _score(self, a):
        return (a > self.eps).sum(dim=1).double()


METRIC_CLASSES: list[type[Metric]] = [Sparseness, Complexity, EffectiveComplexity]
