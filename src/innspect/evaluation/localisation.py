"""Localisation metrics: does the attribution fall on the object, given a mask per sample?

Each takes ``mask=`` (N, ...) with the input's shape (a size-1 channel axis is broadcast), as
Quantus 0.6.0's ``s_batch``; a sample with an empty mask scores NaN. No model pass is needed
(Focus reads a mosaic's labels instead of a mask).
"""

from __future__ import annotations

from typing import Any

import torch

from innspect.errors import InputError, OptionError
from innspect.evaluation.metric import Metric, MetricResult, check_mask, flat, positive_int


class _Localisation(Metric):
    family = "localisation"
    needs_model = False
    needs_mask = True
    higher_is_better = True
    inputs = ("mask",)

    def _evaluate(self, model, x, y, a, mask: Any = None) -> MetricResult:
        m = check_mask(mask, a)
        a = a.expand(m.shape)
        a_rows, m_rows = flat(a).double(), flat(m)
        scores = self._score(a_rows, m_rows, x)
        scores[m_rows.sum(dim=1) == 0] = torch.nan
        return self._result(scores)

    def _score(self, a: torch.Tensor, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PointingGame(_Localisation):
    """1 when the largest attribution (any of them, on ties) lies in the mask (Zhang et al.
    2018, *Top-down neural attention by excitation backprop*, IJCV 126).

    ``weighted=True`` scores a hit ``1 - |mask| / size`` (a hit on a small object counts more);
    Quantus 0.6.0 writes that value into a boolean array, so its weighted hits stay 1.
    """

    name = "pointing_game"
    paper = "Zhang et al. 2018, IJCV 126(10)"

    def __init__(self, weighted: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.weighted = bool(weighted)

    def _score(self, a, m, x):
        peak = a == a.amax(dim=1, keepdim=True)
        hit = (peak & m).any(dim=1).double()
        if self.weighted:
            hit = hit * (1 - m.sum(dim=1).double() / m.shape[1])
        return hit


class AttributionLocalisation(_Localisation):
    """Share of the (positive, by default absolute) attribution inside the mask (Kohlbrenner
    et al. 2020, *Towards best practice in explaining neural network decisions with LRP*,
    IJCNN): ``sum(a * mask) / (sum(a) + 1e-9)``; NaN where it exceeds 1 (negative mass).

    ``weighted=True`` multiplies by the mask's share of the sample's features (Quantus 0.6.0
    divides by the size of ``x_batch[2:]``, the batch without its first two samples).
    """

    name = "attribution_localisation"
    paper = "Kohlbrenner et al. 2020, IJCNN, arXiv:1910.09840"
    default_abs = True

    def __init__(
        self,
        weighted: bool = False,
        max_size: float = 1.0,
        positive_attributions: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not 0.0 < float(max_size) <= 1.0:
            raise OptionError(f"max_size must be in (0, 1], got {max_size}")
        self.weighted = bool(weighted)
        self.max_size = float(max_size)
        self.positive_attributions = bool(positive_attributions)

    def _score(self, a, m, x):
        if self.positive_attributions:
            a = a.clamp_min(0)
        inside = (a * m).sum(dim=1)
        ratio = inside / (a.sum(dim=1) + 1e-9)
        ratio[ratio > 1] = torch.nan
        if self.weighted:
            ratio = ratio * m.sum(dim=1).double() / m.shape[1]
        return ratio


class TopKIntersection(_Localisation):
    """Share of the ``k`` most relevant features that lie in the mask (Theiner et al. 2021,
    *Interpretable semantic photo geolocalization*, WACV); ``concept_influence=True`` divides
    by the mask's share of the features."""

    name = "top_k_intersection"
    paper = "Theiner et al. 2022, WACV, arXiv:2104.14995"

    def __init__(self, k: int = 1000, concept_influence: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.k = positive_int(k, "k")
        self.concept_influence = bool(concept_influence)

    def _score(self, a, m, x):
        if self.k > a.shape[1]:
            raise OptionError(f"k ({self.k}) exceeds the {a.shape[1]} features of a sample")
        top = torch.argsort(-a, dim=1, stable=True)[:, : self.k]
        share = m.gather(1, top).double().mean(dim=1)
        if self.concept_influence:
            share = share * a.shape[1] / m.sum(dim=1).double()
        return share


class RelevanceRankAccuracy(_Localisation):
    """Share of the ``|mask|`` most relevant features that lie in the mask (Arras et al. 2022,
    *CLEVR-XAI*, Information Fusion 81)."""

    name = "relevance_rank_accuracy"
    paper = "Arras et al. 2022, Information Fusion 81"

    def _score(self, a, m, x):
        order = torch.argsort(-a, dim=1, stable=True)
        size = m.sum(dim=1)
        ranked_in_mask = m.gather(1, order)
        within_top = torch.arange(a.shape[1], device=a.device)[None] < size[:, None]
        return (ranked_in_mask & within_top).sum(dim=1).double() / size.double()


class RelevanceMassAccuracy(_Localisation):
    """Share of the attribution's sum that lies in the mask: ``sum(a * mask) / sum(a)``
    (Arras et al. 2022, *CLEVR-XAI*, Information Fusion 81)."""

    name = "relevance_mass_accuracy"
    paper = "Arras et al. 2022, Information Fusion 81"

    def _score(self, a, m, x):
        return (a * m).sum(dim=1) / a.sum(dim=1)


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """ROC AUC of one row of scores against a boolean row, ties counted half (the area under
    the trapezoidal ROC curve equals the Mann-Whitney statistic); NaN without both classes."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(torch.nan, dtype=torch.float64)
    values, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    counts = torch.bincount(inverse, minlength=values.numel()).double()
    # average rank (1-based) of each distinct value
    ends = torch.cumsum(counts, 0)
    mean_rank = ends - (counts - 1) / 2
    rank_sum = mean_rank[inverse][positive].sum()
    return ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).cpu()


class AUC(_Localisation):
    """Area under the ROC curve of the attribution as a detector of the mask's features
    (Fawcett 2006, *An introduction to ROC analysis*, Pattern Recognition Letters 27)."""

    name = "auc"
    paper = "Fawcett 2006, Pattern Recognition Letters 27(8)"

    def _score(self, a, m, x):
        return torch.stack([roc_auc(a[i], m[i]) for i in range(a.shape[0])]).to(a.device)


class Focus(Metric):
    """Share of the positive attribution in the quadrants of a 2x2 mosaic that show the
    explained class (Arias-Duart et al. 2022, *Focus! Rating XAI methods and finding biases*,
    FUZZ-IEEE). ``mosaic_labels=`` (N, 4) flags the quadrants top-left, top-right,
    bottom-left, bottom-right (Quantus' ``custom_batch``). The quadrants split the last two
    axes, whatever the input's rank (Quantus 0.6.0 splits axes 2 and 3 of the attribution)."""

    name = "focus"
    family = "localisation"
    paper = "Arias-Duart et al. 2022, FUZZ-IEEE, arXiv:2109.15035"
    higher_is_better = True
    needs_model = False
    inputs = ("mosaic_labels",)

    def _evaluate(self, model, x, y, a, mosaic_labels: Any = None) -> MetricResult:
        if mosaic_labels is None:
            raise InputError("focus needs mosaic_labels=: (N, 4) flags of the quadrants")
        labels = torch.as_tensor(mosaic_labels).to(a.device)
        if tuple(labels.shape) != (a.shape[0], 4):
            raise InputError(
                f"mosaic_labels must be (N, 4) = ({a.shape[0]}, 4), got {tuple(labels.shape)}"
            )
        if a.ndim < 3:
            raise InputError(f"focus needs 2-D samples (N, ..., H, W), got {tuple(a.shape)}")
        a = a.expand(*a.shape[:-2], *x.shape[-2:]).double().clamp_min(0)
        h, w = a.shape[-2] // 2, a.shape[-1] // 2
        weights = torch.zeros_like(a)
        quadrants = [(slice(None, h), slice(None, w)), (slice(None, h), slice(w, None))]
        quadrants += [(slice(h, None), slice(None, w)), (slice(h, None), slice(w, None))]
        for q, (rows, cols) in enumerate(quadrants):
            weights[..., rows, cols] = labels[:, q].double().reshape(-1, *[1] * (a.ndim - 1))
        total = flat(a).sum(dim=1)
        return self._result(flat(weights * a).sum(dim=1) / (total + 1e-9))


METRIC_CLASSES: list[type[Metric]] = [
    PointingGame,
    AttributionLocalisation,
    TopKIntersection,
    RelevanceRankAccuracy,
    RelevanceMassAccuracy,
    AUC,
    Focus,
]
