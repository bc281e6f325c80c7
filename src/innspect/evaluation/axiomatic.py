"""Axiomatic metrics: completeness (Sundararajan et al. 2017) and non-sensitivity (Nguyen &
Martínez 2020), with Quantus 0.6.0's parameters."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from innspect.errors import InputError
from innspect.evaluation.explainers import explain_rows, explainer
from innspect.evaluation.metric import (
    Metric,
    MetricResult,
    baseline,
    class_scores,
    flat,
    perturbed_scores,
    positive_int,
    steps_needed,
)


class Completeness(Metric):
    """Do the attributions sum to the output's change from the baseline? (Sundararajan et al.
    2017, *Axiomatic attribution for deep networks*, ICML): ``sum(a) = g(f(x) - f(x0))`` with
    ``x0`` every feature replaced by ``perturb_baseline`` and ``g = output_func``.

    ``scores``: 1.0 where the two agree within ``rtol``/``atol`` (``torch.isclose``), else 0.0;
    ``extras["gap"]``: ``sum(a) - g(f(x) - f(x0))``. Quantus 0.6.0 tests exact float equality
    (set ``rtol=atol=0``) and normalises the attributions by default, which breaks the axiom's
    scale: our default is ``normalise=False``.
    """

    name = "completeness"
    family = "axiomatic"
    paper = "Sundararajan et al. 2017, ICML, arXiv:1703.01365"
    higher_is_better = True
    default_normalise = False

    def __init__(
        self,
        output_func: Callable[[torch.Tensor], torch.Tensor] | None = None,
        perturb_baseline: Any = "black",
        rtol: float = 1e-5,
        atol: float = 1e-8,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.output_func = output_func
        self.perturb_baseline = perturb_baseline
        self.rtol, self.atol = float(rtol), float(atol)

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        x0 = baseline(x, self.perturb_baseline, generator)
        both = class_scores(
            model, torch.cat([x, x0]), torch.cat([y, y]), self.softmax, self.batch_size
        )
        change = (both[: x.shape[0]] - both[x.shape[0] :]).double()
        if self.output_func is not None:
            change = torch.as_tensor(self.output_func(change)).to(change)
        total = flat(a.expand_as(x)).double().sum(dim=1)
        agree = torch.isclose(total, change, rtol=self.rtol, atol=self.atol)
        return self._result(agree.double(), gap=total - change)


class NonSensitivity(Metric):
    """Count of the features where "zero attribution" and "no effect" disagree (Nguyen &
    Martínez 2020, *On quantitative aspects of model interpretability*, arXiv:2007.07584).

    Features are taken ``features_in_step`` at a time in their index order; each group is
    replaced by the baseline alone (the others keep x's values). A group has no effect when the
    class score moves less than ``eps``, and zero attribution when all its attributions are
    below ``eps``. ``scores``: the number of groups where exactly one holds; lower is better.
    (Quantus 0.6.0 compares per feature and fails unless ``features_in_step=1``.)
    """

    name = "non_sensitivity"
    family = "axiomatic"
    paper = "Nguyen & Martínez 2020, arXiv:2007.07584"
    higher_is_better = False
    default_abs = True
    default_softmax = True

    def __init__(
        self,
        eps: float = 1e-5,
        features_in_step: int = 1,
        perturb_baseline: Any = "black",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.eps = float(eps)
        self.features_in_step = positive_int(features_in_step, "features_in_step")
        self.perturb_baseline = perturb_baseline

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        a = flat(a.expand_as(x))
        n, features = a.shape
        steps = steps_needed(features, self.features_in_step)
        group = torch.arange(features, device=x.device) // self.features_in_step
        clean = class_scores(model, x, y, self.softmax, self.batch_size).double()
        perturbed = perturbed_scores(
            model,
            x,
            baseline(x, self.perturb_baseline, generator),
            group.expand(n, -1).reshape(x.shape),
            torch.arange(steps),
            y,
            softmax=self.softmax,
            batch_size=self.batch_size,
            cumulative=False,
        )
        no_effect = (perturbed - clean[:, None]).abs() < self.eps
        relevant = torch.zeros(n, steps, dtype=torch.long, device=x.device)
        relevant.scatter_add_(1, group.expand(n, -1), (a >= self.eps).long())
        zero_attribution = relevant == 0
        return self._result((no_effect ^ zero_attribution).sum(dim=1).double())


def shifted_copy(model: nn.Module, shift: float) -> nn.Module:
    """A copy of ``model`` whose first Linear or Conv layer subtracts its response to a
    constant input ``shift`` from its bias, so that ``copy(x + shift) == model(x)`` wherever
    the layer sees no padding (Kindermans et al. 2019)."""
    copied = copy.deepcopy(model)
    first = next(
        (m for m in copied.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)), None
    )
    if first is None:
        raise InputError("input_invariance needs a model whose first layer is a Linear or Conv")
    if isinstance(first, nn.modules.conv._ConvNd) and first.transposed:
        raise InputError("input_invariance does not shift a transposed convolution")
    with torch.no_grad():
        weight = first.weight
        per_output = weight.reshape(weight.shape[0], -1).sum(dim=1) * shift
        if first.bias is None:
            first.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype))
        first.bias.sub_(per_output.to(first.bias))
    return copied


class InputInvariance(Metric):
    """Does the explanation ignore a constant shift of the input that the model cancels?
    (Kindermans et al. 2019, *The (un)reliability of saliency methods*, in Explainable AI,
    Springer LNCS 11700): the input is shifted by ``input_shift`` and the first layer's bias
    compensates it (``shifted_copy``); the explanation of the shifted input by the shifted
    model must equal the original one (within ``atol``, as Quantus's 1e-4).

    ``scores``: 1.0 where invariant, 0.0 otherwise. Quantus 0.6.0 compensates with the
    smallest response of the first layer to the shift, which differs from the interior one
    at zero-padded borders; we subtract the interior response, exact for layers without
    padding (where the two agree)."""

    name = "input_invariance"
    family = "axiomatic"
    paper = "Kindermans et al. 2019, LNCS 11700, arXiv:1711.00867"
    higher_is_better = True
    default_normalise = False
    inputs = ("method",)
    explains = True

    def __init__(
        self,
        method: Any = None,
        *,
        input_shift: float = -1.0,
        atol: float = 1e-4,
        method_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.method = method
        self.method_options = dict(method_options or {})
        self.input_shift = float(input_shift)
        self.atol = float(atol)

    def _evaluate(self, model, x, y, a, method: Any = None) -> MetricResult:
        shifted = shifted_copy(model, self.input_shift)
        explain = explainer(method if method is not None else self.method, self.method_options)
        moved = x + self.input_shift
        a_moved = self.preprocess(explain_rows(explain, shifted, moved, y, self.batch_size))
        close = torch.isclose(a.expand_as(x), a_moved.expand_as(x), rtol=1e-5, atol=self.atol)
        return self._result(flat(close).all(dim=1).double())


METRIC_CLASSES: list[type[Metric]] = [Completeness, NonSensitivity, InputInvariance]
