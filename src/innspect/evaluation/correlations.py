"""Faithfulness by correlation: do the attributions of feature sets predict how much removing
those sets changes the output?

Faithfulness correlation (Bhatt et al. 2020), faithfulness estimate (Alvarez-Melis & Jaakkola
2018) and monotonicity correlation (Nguyen & Martínez 2020), with Quantus 0.6.0's parameters.
Random draws come from a ``torch.Generator`` (``generator=`` at the call, or ``seed``), and
can be injected (``indices=``, ``baseline_values=``) to reproduce another implementation's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from innspect.errors import InputError, OptionError
from innspect.evaluation.metric import (
    Metric,
    MetricResult,
    baseline,
    class_scores,
    flat,
    perturbed_scores,
    positive_int,
    ranks_descending,
    row_scores,
    steps_needed,
)
from innspect.evaluation.similarity import SIMILARITIES

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _similarity(value: str | Similarity) -> Similarity:
    if callable(value):
        return value
    if value not in SIMILARITIES:
        raise OptionError(f"similarity_func must be one of {sorted(SIMILARITIES)} or a callable")
    return SIMILARITIES[value]


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None:
        return generator
    made = torch.Generator()
    made.manual_seed(0 if seed is None else int(seed))
    return made


class FaithfulnessCorrelation(Metric):
    """Pearson correlation, over ``nr_runs`` random subsets of ``subset_size`` features, of the
    subset's attribution sum with the output drop when the subset is replaced by the baseline
    (Bhatt et al. 2020, *Evaluating and aggregating feature-based model explanations*, IJCAI).

    ``indices=`` (N, nr_runs, subset_size) gives the subsets (else drawn without replacement
    from ``generator=`` or ``seed``). Higher is better.
    """

    name = "faithfulness_correlation"
    family = "faithfulness"
    inputs = ("indices", "generator")
    paper = "Bhatt et al. 2020, IJCAI, arXiv:2005.00631"
    higher_is_better = True

    def __init__(
        self,
        similarity_func: str | Similarity = "pearson",
        nr_runs: int = 100,
        subset_size: int = 224,
        perturb_baseline: Any = "black",
        seed: int | None = 0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.similarity_func = _similarity(similarity_func)
        self.nr_runs = positive_int(nr_runs, "nr_runs")
        self.subset_size = positive_int(subset_size, "subset_size")
        self.perturb_baseline = perturb_baseline
        self.seed = seed

    def _evaluate(
        self, model, x, y, a, indices: Any = None, generator: torch.Generator | None = None
    ) -> MetricResult:
        n = x.shape[0]
        a = flat(a.expand_as(x)).double()
        features = a.shape[1]
        if self.subset_size > features:
            raise OptionError(f"subset_size ({self.subset_size}) exceeds the {features} features")
        if indices is None:
            g = _generator(generator, self.seed)
            runs = [
                torch.rand(n, features, generator=g).topk(self.subset_size, dim=1).indices
                for _ in range(self.nr_runs)
            ]
            indices = torch.stack(runs, dim=1)
        indices = torch.as_tensor(indices).to(x.device).long()
        if tuple(indices.shape) != (n, self.nr_runs, self.subset_size):
            raise InputError(
                f"indices must be (N, nr_runs, subset_size) = {(n, self.nr_runs, self.subset_size)}"
                f", got {tuple(indices.shape)}"
            )
        x_rows, base = flat(x), flat(baseline(x, self.perturb_baseline, generator))

        def make_rows(sample: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
            chosen = torch.zeros(len(sample), features, dtype=torch.bool, device=x.device)
            chosen.scatter_(1, indices[sample, run], True)
            rows = torch.where(chosen, base[sample], x_rows[sample])
            return rows.reshape(len(sample), *x.shape[1:])

        clean = class_scores(model, x, y, self.softmax, self.batch_size).double()
        perturbed = row_scores(
            model, make_rows, n, self.nr_runs, y,
            softmax=self.softmax, batch_size=self.batch_size, device=x.device,
        )  # fmt: skip
        drops = clean[:, None] - perturbed
        sums = a.gather(1, indices.reshape(n, -1)).reshape(n, self.nr_runs, -1).sum(dim=2)
        return self._result(self.similarity_func(sums, drops), drops, attribution_sums=sums)


class FaithfulnessEstimate(Metric):
    """Pearson correlation, over groups of ``features_in_step`` features taken most relevant
    first, of each group's attribution sum with the output drop when that group alone is
    replaced by the baseline (Alvarez-Melis & Jaakkola 2018, *Towards robust interpretability
    with self-explaining neural networks*, NeurIPS). Higher is better."""

    name = "faithfulness_estimate"
    family = "faithfulness"
    paper = "Alvarez-Melis & Jaakkola 2018, NeurIPS, arXiv:1806.07538"
    higher_is_better = True

    def __init__(
        self,
        similarity_func: str | Similarity = "pearson",
        features_in_step: int = 1,
        perturb_baseline: Any = "black",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.similarity_func = _similarity(similarity_func)
        self.features_in_step = positive_int(features_in_step, "features_in_step")
        self.perturb_baseline = perturb_baseline

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        n = x.shape[0]
        a = flat(a.expand_as(x)).double()
        steps = steps_needed(a.shape[1], self.features_in_step)
        group = ranks_descending(a) // self.features_in_step
        clean = class_scores(model, x, y, self.softmax, self.batch_size).double()
        perturbed = perturbed_scores(
            model,
            x,
            baseline(x, self.perturb_baseline, generator),
            group.reshape(x.shape),
            torch.arange(steps),
            y,
            softmax=self.softmax,
            batch_size=self.batch_size,
            cumulative=False,
        )
        drops = clean[:, None] - perturbed
        sums = torch.zeros(n, steps, dtype=torch.float64, device=x.device).scatter_add_(1, group, a)
        return self._result(self.similarity_func(sums, drops), drops, attribution_sums=sums)


class MonotonicityCorrelation(Metric):
    """Spearman correlation, over groups of ``features_in_step`` features taken least relevant
    first, of each group's attribution sum with the output's mean squared change (divided by
    the squared clean output where that is at least ``eps``) when that group alone is
    replaced ``nr_samples`` times by a random baseline (Nguyen & Martínez 2020, *On
    quantitative aspects of model interpretability*, arXiv:2007.07584). Higher is better.

    ``perturb_baseline="uniform"`` draws one U(0, 1) value per sample, group and repeat (as
    Quantus); ``baseline_values=`` (N, groups, nr_samples) injects them.
    """

    name = "monotonicity_correlation"
    family = "faithfulness"
    inputs = ("baseline_values", "generator")
    paper = "Nguyen & Martínez 2020, arXiv:2007.07584"
    higher_is_better = True
    default_abs = True
    default_softmax = True

    def __init__(
        self,
        similarity_func: str | Similarity = "spearman",
        eps: float = 1e-5,
        nr_samples: int = 100,
        features_in_step: int = 1,
        perturb_baseline: Any = "uniform",
        seed: int | None = 0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.similarity_func = _similarity(similarity_func)
        self.eps = float(eps)
        self.nr_samples = positive_int(nr_samples, "nr_samples")
        self.features_in_step = positive_int(features_in_step, "features_in_step")
        self.perturb_baseline = perturb_baseline
        self.seed = seed

    def _evaluate(
        self, model, x, y, a, baseline_values: Any = None, generator: torch.Generator | None = None
    ) -> MetricResult:
        n = x.shape[0]
        a = flat(a.expand_as(x)).double()
        features = a.shape[1]
        steps = steps_needed(features, self.features_in_step)
        group = ranks_descending(-a) // self.features_in_step  # least relevant first
        shape = (n, steps, self.nr_samples)
        if baseline_values is None and self.perturb_baseline == "uniform":
            g = _generator(generator, self.seed)
            baseline_values = torch.rand(shape, generator=g, dtype=torch.float64)
        if baseline_values is not None:
            values = torch.as_tensor(baseline_values).to(x)
            if tuple(values.shape) != shape:
                raise InputError(f"baseline_values must be {shape}, got {tuple(values.shape)}")
        else:
            fixed = flat(baseline(x, self.perturb_baseline, generator))
        x_rows = flat(x)

        def make_rows(sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            step, repeat = index // self.nr_samples, index % self.nr_samples
            chosen = group[sample] == step[:, None]
            if baseline_values is not None:
                replacement = values[sample, step, repeat][:, None].expand(-1, features)
            else:
                replacement = fixed[sample]
            rows = torch.where(chosen, replacement, x_rows[sample])
            return rows.reshape(len(sample), *x.shape[1:])

        clean = class_scores(model, x, y, self.softmax, self.batch_size).double()
        perturbed = row_scores(
            model, make_rows, n, steps * self.nr_samples, y,
            softmax=self.softmax, batch_size=self.batch_size, device=x.device,
        ).reshape(shape)  # fmt: skip
        scale = torch.where(clean.abs() >= self.eps, 1 / clean.abs(), torch.ones_like(clean)) ** 2
        variance = ((perturbed - clean[:, None, None]) ** 2).mean(dim=2) * scale[:, None]
        sums = torch.zeros(n, steps, dtype=torch.float64, device=x.device).scatter_add_(1, group, a)
        return self._result(self.similarity_func(sums, variance), variance, attribution_sums=sums)


class SensitivityN(Metric):
    """Sensitivity-n (Ancona et al. 2018, *Towards better understanding of gradient-based
    attribution methods for deep neural networks*, ICLR): for each subset size ``n`` of
    ``features_in_step``, 2 ``features_in_step``, ... up to ``n_max_percentage`` of the
    features, the Pearson correlation over ``nr_runs`` random subsets of size ``n`` between
    the subset's attribution sum and the output drop when the subset is replaced by the
    baseline. ``curves``: (N, sizes) the correlation per ``n``; ``scores``: their mean.
    Higher is better.

    This is the paper's definition. Quantus 0.6.0 instead removes the features cumulatively
    in attribution order and correlates across the *samples* of the first batch, one value
    per step, not per sample.
    """

    name = "sensitivity_n"
    family = "faithfulness"
    paper = "Ancona et al. 2018, ICLR, arXiv:1711.06104"
    higher_is_better = True
    inputs = ("generator",)

    def __init__(
        self,
        similarity_func: str | Similarity = "pearson",
        n_max_percentage: float = 0.8,
        features_in_step: int = 1,
        nr_runs: int = 100,
        perturb_baseline: Any = "black",
        seed: int | None = 0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not 0.0 < float(n_max_percentage) <= 1.0:
            raise OptionError(f"n_max_percentage must be in (0, 1], got {n_max_percentage}")
        self.similarity_func = _similarity(similarity_func)
        self.n_max_percentage = float(n_max_percentage)
        self.features_in_step = positive_int(features_in_step, "features_in_step")
        self.nr_runs = positive_int(nr_runs, "nr_runs")
        self.perturb_baseline = perturb_baseline
        self.seed = seed

    def sizes(self, features: int) -> list[int]:
        """The subset sizes n, in increasing order."""
        top = int(self.n_max_percentage * features)
        sizes = list(range(self.features_in_step, top + 1, self.features_in_step))
        if not sizes:
            raise OptionError(
                f"no subset size: features_in_step ({self.features_in_step}) exceeds "
                f"n_max_percentage x features ({top})"
            )
        return sizes

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        g = _generator(generator, self.seed)
        correlation = FaithfulnessCorrelation(
            self.similarity_func,
            nr_runs=self.nr_runs,
            subset_size=1,
            perturb_baseline=self.perturb_baseline,
            abs=False,
            normalise=False,
            softmax=self.softmax,
            batch_size=self.batch_size,
        )
        columns = []
        for size in self.sizes(x[0].numel()):
            correlation.subset_size = size
            # a already preprocessed: the inner metric takes it as it is
            columns.append(correlation._evaluate(model, x, y, a, generator=g).scores)
        curves = torch.stack(columns, dim=1)
        return self._result(curves.mean(dim=1), curves)


METRIC_CLASSES: list[type[Metric]] = [
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    MonotonicityCorrelation,
    SensitivityN,
]
