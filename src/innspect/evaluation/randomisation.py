"""Randomisation metrics: does the explanation depend on what the model learnt?

The model parameter randomisation test (MPRT, Adebayo et al. 2018) re-explains the inputs
with the model's layers re-initialised one after another (cascading, from the output by
default) or one at a time (independent); random logit (Sixt et al. 2020) explains another
class. Quantus 0.6.0's parameters and layer choice: every module with ``reset_parameters``,
re-initialised by it under ``torch.manual_seed(seed + 1)``.

One copy of the model is made per call and its layers are randomised in place in that copy
(Quantus keeps one copy too, but the user's model is never touched here either: the global
torch random state is restored after each re-initialisation).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.errors import InputError, OptionError
from innspect.evaluation.correlations import Similarity, _similarity
from innspect.evaluation.explainers import explain_rows, explainer
from innspect.evaluation.metric import (
    Metric,
    MetricResult,
    flat,
    positive_int,
    predict_in_chunks,
)
from innspect.util.extras import require

LAYER_ORDERS = ("top_down", "bottom_up", "independent")


def randomisable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The named modules that ``reset_parameters`` can re-initialise, in module order."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "reset_parameters")]


def randomise(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module`` in place under ``torch.manual_seed(seed)``, leaving the global
    random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.reset_parameters()


class MPRT(Metric):
    """Model parameter randomisation test (Adebayo et al. 2018, *Sanity checks for saliency
    maps*, NeurIPS): the similarity (``similarity_func``, Spearman by default) of the
    explanation with the explanations of the model with more and more layers randomised.

    ``curves``: (N, layers) similarity after each layer (``labels`` name them); ``scores``:
    the last one (the fully randomised model when cascading), or their mean with
    ``return_average_correlation=True``. Lower is better: a method that ignores the weights
    keeps explaining the same. ``skip_layers=True`` explains only after the last layer.
    Quantus 0.6.0 also averages in the similarity with the re-explained unchanged model
    (its ``"original"`` entry); we average over randomised layers only.
    """

    name = "mprt"
    family = "randomisation"
    paper = "Adebayo et al. 2018, NeurIPS, arXiv:1810.03292"
    higher_is_better = False
    default_abs = True
    inputs = ("method",)
    explains = True

    def __init__(
        self,
        method: Any = None,
        *,
        similarity_func: str | Similarity = "spearman",
        layer_order: str = "top_down",
        seed: int = 42,
        return_average_correlation: bool = False,
        return_last_correlation: bool = False,
        skip_layers: bool = False,
        method_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if layer_order not in LAYER_ORDERS:
            raise OptionError(f"layer_order must be one of {LAYER_ORDERS}, got {layer_order!r}")
        self.method = method
        self.method_options = dict(method_options or {})
        self.similarity_func = _similarity(similarity_func)
        self.layer_order = layer_order
        self.seed = int(seed)
        self.return_average_correlation = bool(return_average_correlation)
        self.return_last_correlation = bool(return_last_correlation)
        self.skip_layers = bool(skip_layers)

    def _explain(self, explain, model, x, y, layer: int, extra: dict) -> torch.Tensor:
        return explain_rows(explain, model, x, y, self.batch_size)

    def _evaluate(self, model, x, y, a, method: Any = None, **extra: Any) -> MetricResult:
        method = method if method is not None else self.method
        randomised = copy.deepcopy(model)  # the one copy; the user's model is only read
        original = {k: v.detach().clone() for k, v in randomised.state_dict().items()}
        layers = randomisable_layers(randomised)
        if not layers:
            raise InputError("the model has no layer with reset_parameters to randomise")
        if self.layer_order == "top_down":
            layers = layers[::-1]
        names, curves = [], []
        # One analyzer on the copy for every layer: the weights change in place, and the
        # analyzer remakes what it derived from them (folded batch norms) when they do; the
        # tests compare with Quantus, which makes a fresh explainer per layer.
        explain = explainer(method, self.method_options)
        for index, (name, module) in enumerate(layers):
            if self.layer_order == "independent":
                randomised.load_state_dict(original)
            randomise(module, self.seed + 1)
            if self.skip_layers and index + 1 < len(layers):
                continue
            a_random = self.preprocess(self._explain(explain, randomised, x, y, len(names), extra))
            curves.append(self._compare(a, a_random, x))
            names.append(name)
        curve = torch.stack(curves, dim=1)
        scores = curve.mean(dim=1) if self.return_average_correlation else curve[:, -1]
        result = self._result(scores, curve)
        result.labels = names
        return self._finish(result, model, randomised, x)

    def _compare(self, a: torch.Tensor, a_random: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per sample, the explanation compared with the randomised model's (the curve's
        point of one layer): ``similarity_func`` of the two, broadcast to x's shape."""
        return self.similarity_func(flat(a.expand_as(x)), flat(a_random.expand_as(x)))

    def _finish(
        self, result: MetricResult, model: nn.Module, randomised: nn.Module, x: torch.Tensor
    ) -> MetricResult:
        """The result, given the model and its randomised copy (for subclasses)."""
        return result


class SmoothMPRT(MPRT):
    """MPRT with SmoothGrad-style explanations of the randomised models (Hedström et al. 2023,
    *Sanity checks revisited: an exploration to repair the model parameter randomisation
    test*, XAI in Action workshop, NeurIPS): each is the mean of the explanations of
    ``nr_samples`` copies of x, all but the last with Gaussian noise of standard deviation
    ``noise_magnitude * (max(x) - min(x))`` per sample. Bottom-up by default.

    The noisy copies of all samples are explained together (``batch_size`` rows per call).
    Noise comes from ``generator=`` (or ``seed``); ``noise=`` (layers, nr_samples - 1, N,
    ...) gives it, layer by layer in the order randomised."""

    name = "smooth_mprt"
    paper = "Hedström et al. 2023, arXiv:2401.06465"
    inputs = ("method", "noise", "generator")

    def __init__(
        self,
        method: Any = None,
        *,
        layer_order: str = "bottom_up",
        nr_samples: int = 50,
        noise_magnitude: float = 0.1,
        **options: Any,
    ) -> None:
        super().__init__(method, layer_order=layer_order, **options)
        self.nr_samples = positive_int(nr_samples, "nr_samples")
        self.noise_magnitude = float(noise_magnitude)

    def _explain(self, explain, model, x, y, layer: int, extra: dict) -> torch.Tensor:
        shape = (self.nr_samples - 1, *x.shape)
        if extra.get("noise") is not None:
            noise = torch.as_tensor(extra["noise"])[layer].to(x)
            if tuple(noise.shape) != shape:
                raise InputError(f"noise[layer] must be {shape}, got {tuple(noise.shape)}")
        else:
            if "generator" not in extra or extra["generator"] is None:
                extra["generator"] = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(shape, generator=extra["generator"], dtype=torch.float64).to(x)
        rows = flat(x)
        spread = (rows.amax(dim=1) - rows.amin(dim=1)).reshape(-1, *[1] * (x.ndim - 1))
        noisy = (x + noise * (self.noise_magnitude * spread)).reshape(-1, *x.shape[1:])
        copies = torch.cat([noisy, x])  # the last copy is x itself
        labels = y.repeat(self.nr_samples)
        explained = explain_rows(explain, model, copies, labels, self.batch_size)
        explained = explained.reshape(self.nr_samples, x.shape[0], *explained.shape[1:])
        return (explained / self.nr_samples).sum(dim=0)


def histogram_entropy(a: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per row, the entropy (natural log) of the histogram of its values in ``n_bins`` equal
    bins between its minimum and maximum (numpy's ``histogram``; scipy's ``entropy`` of the
    counts)."""
    values = []
    for row in a.detach().double().cpu().numpy():
        counts = torch.as_tensor(np.histogram(row, bins=n_bins)[0], dtype=torch.float64)
        p = counts[counts > 0] / counts.sum()
        values.append(-(p * p.log()).sum())
    return torch.stack(values)


def _freedman_diaconis(a: np.ndarray, n: int) -> int:
    """Freedman & Diaconis 1981: width ``2 IQR / n^(1/3)`` (at least 1e-6, Quantus's floor)."""
    iqr = np.percentile(a, 75) - np.percentile(a, 25)
    width = max(2 * iqr / np.power(n, 1 / 3), 1e-6)
    return int((np.max(a) - np.min(a)) / width)


def _scott(a: np.ndarray, n: int) -> int:
    """Scott 1979: width ``3.5 std / n^(1/3)`` (population standard deviation)."""
    width = 3.5 * np.std(a) / np.power(n, 1 / 3)
    return 0 if width == 0 else int((np.max(a) - np.min(a)) / width)  # constant: no spread


# The rules of Quantus 0.6.0's ``n_bins_func`` (its names, and ours), with ``n`` the number
# of values in one explanation (the histogram's sample size).
N_BINS_RULES: dict[str, Any] = {
    "freedman_diaconis": _freedman_diaconis,
    "scott": _scott,
    "square_root": lambda a, n: int(np.sqrt(n)),
    "sturges": lambda a, n: int(np.log2(n) + 1),  # Sturges 1926
    "rice": lambda a, n: int(2 * np.power(n, 1 / 3)),
}
_QUANTUS_RULE_NAMES = {
    "Freedman Diaconis": "freedman_diaconis",
    "Scotts": "scott",
    "Square Root": "square_root",
    "Sturges Formula": "sturges",
    "Rice": "rice",
}


def rule_n_bins(a: torch.Tensor, rule: str, min_n_bins: int, max_n_bins: int) -> int:
    """The number of bins ``rule`` gives for the explanations ``a`` (N, ...), clamped to
    ``[min_n_bins, max_n_bins]``: spread statistics (IQR, standard deviation, range) over the
    whole batch, ``n`` the number of values in one explanation (Quantus's
    ``EfficientMPRT.find_n_bins``; Quantus's rules take ``n = a_batch[0].ndim``, see
    docs/evaluation.md). numpy on the attributions' own dtype, as Quantus."""
    values = a.detach().cpu().numpy()
    n = int(values[0].size)
    return max(min(N_BINS_RULES[rule](values, n), max_n_bins), min_n_bins)


class EfficientMPRT(MPRT):
    """Efficient MPRT (Hedström et al. 2023, *Sanity checks revisited*, arXiv:2401.06465):
    the relative rise of the explanation's complexity, ``(H(a_random) - H(a)) / H(a)``, where
    ``H`` is the entropy of the explanation's histogram in ``n_bins`` bins (Quantus's
    ``discrete_entropy`` with its default 100) and ``a_random`` the explanation of the model
    with every layer randomised (bottom-up, as Quantus's defaults). Higher is better: a method
    that depends on the weights explains a random model with noise.

    ``rule`` chooses the number of bins from the attributions of the call instead, as
    Quantus's ``complexity_func_kwargs={"rule": ...}``: "freedman_diaconis", "scott",
    "square_root", "sturges" or "rice" (Quantus's names "Freedman Diaconis", "Scotts",
    "Square Root", "Sturges Formula", "Rice" too), clamped to ``[min_n_bins, max_n_bins]``
    (10 and 200, Quantus's); ``n_bins`` then must not be given.

    ``compute_extra_scores=True`` adds Quantus's extra scores to ``extras`` (per sample):
    ``scores_delta_explanation`` ``H(a_random) - H(a)``, ``scores_fraction_explanation``
    ``H(a_random) / H(a)``, the same two for the entropy of the model's output
    (``scores_delta_model``, ``scores_fraction_model``; softmax probabilities unless
    ``softmax=False``, whose outputs must then be non-negative),
    ``scores_delta_explanation_vs_models`` (explanation fraction / model fraction),
    ``scores_average_complexity`` ``H(a_random)`` and
    ``scores_correlation_model_vs_explanation_complexity`` (``similarity_func``, Spearman by
    default, over the clean and randomised model, of the output entropies with the
    explanation entropies: +-1 or NaN with two points). A fraction with a zero denominator
    is NaN.

    ``complexity_func`` replaces ``H`` by another measure of an explanation's complexity, as
    Quantus's: a function called per sample as ``complexity_func(a=a_i, x=x_i, n_bins=...,
    **complexity_func_kwargs)`` returning a number, with ``a_i`` the sample's explanation
    (numpy, in its own shape and dtype), ``x_i`` its input and ``n_bins`` the number of bins
    chosen by ``n_bins`` / ``rule`` (Quantus passes it too), e.g. Quantus's
    ``quantus.functions.complexity_func.discrete_entropy`` (the default's values). Quantus
    0.6.0 calls it with ``x=x_batch[0]`` (the first sample) for the clean model's
    explanations and ``x=None`` for the randomised model's (its own ``entropy`` and
    ``gini_coeffiient`` then fail); here ``x_i`` is the sample's input both times.
    ``complexity_func_kwargs`` keys ``n_bins``, ``rule``, ``min_n_bins`` and ``max_n_bins``
    are read as the options of those names, as Quantus does, and every key goes to the
    function too (as in Quantus).

    ``H(a)`` is taken from the attributions given (or explained) at ``x``; Quantus re-explains
    ``x`` for it, the same for deterministic methods."""

    name = "efficient_mprt"
    paper = "Hedström et al. 2023, arXiv:2401.06465"
    higher_is_better = True
    default_abs = False
    default_normalise = False
    default_softmax = True  # Quantus's EfficientMPRT: the model entropies of the extra scores

    def __init__(
        self,
        method: Any = None,
        *,
        n_bins: int | None = None,
        rule: str | None = None,
        min_n_bins: int | None = None,
        max_n_bins: int | None = None,
        layer_order: str = "bottom_up",
        compute_extra_scores: bool = False,
        complexity_func: Callable[..., Any] | None = None,
        complexity_func_kwargs: Mapping[str, Any] | None = None,
        **options,
    ) -> None:
        super().__init__(method, layer_order=layer_order, skip_layers=True, **options)
        self.compute_extra_scores = bool(compute_extra_scores)
        if complexity_func is not None and not callable(complexity_func):
            raise OptionError(
                "complexity_func must be a function complexity_func(a=..., x=..., **kwargs) "
                f"giving a number per explanation, got {type(complexity_func).__name__}"
            )
        self.complexity_func = complexity_func
        kwargs = dict(complexity_func_kwargs or {})
        self.complexity_func_kwargs = dict(kwargs)  # all passed on, as Quantus
        own = {"n_bins": n_bins, "rule": rule, "min_n_bins": min_n_bins, "max_n_bins": max_n_bins}
        for key in own:
            if key in kwargs:
                # Quantus's place for the bin options: read as ours, never both
                if own[key] is not None:
                    raise OptionError(f"give {key} once: as {key}= or in complexity_func_kwargs")
                own[key] = kwargs.pop(key)
        n_bins, rule = own["n_bins"], own["rule"]
        if n_bins is None and rule is None and "n_bins_default" in kwargs:
            n_bins = kwargs["n_bins_default"]  # Quantus's bins without a rule (passed on too)
        min_n_bins = 10 if own["min_n_bins"] is None else own["min_n_bins"]
        max_n_bins = 200 if own["max_n_bins"] is None else own["max_n_bins"]
        if rule is not None:
            names = [*N_BINS_RULES, *_QUANTUS_RULE_NAMES]
            if rule not in names:
                raise OptionError(f"rule must be one of {names} or None, got {rule!r}")
            if n_bins is not None:
                raise OptionError(
                    f"give n_bins or rule, not both: rule={rule!r} chooses the number of bins"
                )
            rule = _QUANTUS_RULE_NAMES.get(rule, rule)
        self.rule = rule
        self.n_bins = positive_int(100 if n_bins is None else n_bins, "n_bins")
        self.min_n_bins = positive_int(min_n_bins, "min_n_bins")
        self.max_n_bins = positive_int(max_n_bins, "max_n_bins")
        if self.min_n_bins > self.max_n_bins:
            raise OptionError(
                f"min_n_bins ({self.min_n_bins}) must not exceed max_n_bins ({self.max_n_bins})"
            )
        # similarity_func (Spearman) correlates the model and explanation entropies in the
        # extra scores, as Quantus; MPRT's comparison of the explanations is their complexity
        self._correlation = self.similarity_func
        self._bins = self.n_bins  # the number of bins of the call under way

    def _compare(self, a: torch.Tensor, a_random: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._complexity(a, x), self._complexity(a_random, x)], dim=1)

    def _complexity(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per sample, the complexity of its explanation."""
        if self.complexity_func is None:
            # broadcast to x: the histogram's proportions are the same, its bins too
            return histogram_entropy(flat(a.expand_as(x)), self._bins)
        inputs = x.detach().cpu().numpy()
        values = []
        for i, explanation in enumerate(a.detach().cpu().numpy()):
            # Quantus's arguments: one explanation in its own shape, the bins chosen
            value = self.complexity_func(
                a=explanation, x=inputs[i], **{**self.complexity_func_kwargs, "n_bins": self._bins}
            )
            try:
                values.append(float(value))
            except (TypeError, ValueError):
                raise InputError(
                    f"complexity_func must return a number per explanation, got {value!r} "
                    f"for sample {i}"
                ) from None
        return torch.tensor(values, dtype=torch.float64)

    def _evaluate(self, model, x, y, a, method: Any = None, **extra: Any) -> MetricResult:
        self._bins = self.n_bins
        if self.rule is not None:
            # the values the histograms count: attributions broadcast to x's shape
            self._bins = rule_n_bins(a.expand_as(x), self.rule, self.min_n_bins, self.max_n_bins)
        return super()._evaluate(model, x, y, a, method=method, **extra)

    def _finish(
        self, result: MetricResult, model: nn.Module, randomised: nn.Module, x: torch.Tensor
    ) -> MetricResult:
        entropies = result.curves.reshape(x.shape[0], 2)
        before, after = entropies[:, 0], entropies[:, 1]
        if not self.compute_extra_scores:
            return self._result((after - before) / before, entropies)
        model_before = self._output_entropy(model, x)
        model_after = self._output_entropy(randomised, x)
        fraction_explanation = _fraction(after, before)
        fraction_model = _fraction(model_after, model_before)
        extras = {
            "scores_delta_explanation": after - before,
            "scores_fraction_explanation": fraction_explanation,
            "scores_delta_model": model_after - model_before,
            "scores_fraction_model": fraction_model,
            "scores_delta_explanation_vs_models": _fraction(fraction_explanation, fraction_model),
            "scores_average_complexity": after,
            "scores_correlation_model_vs_explanation_complexity": torch.as_tensor(
                self._correlation(torch.stack([model_before, model_after], 1), entropies),
                dtype=torch.float64,
            ),
        }
        return self._result((after - before) / before, entropies, **extras)

    def _output_entropy(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per sample, the entropy of the model's output as a distribution (Quantus's
        ``entropy``: the output divided by the sum of its absolute values)."""
        p = predict_in_chunks(model, x, self.softmax, self.batch_size).double()
        if bool((p < 0).any()):
            raise InputError(
                "efficient_mprt's extra scores take the entropy of the model's outputs, which "
                "must be non-negative: use softmax=True"
            )
        p = p / p.abs().sum(dim=1, keepdim=True)
        return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(dim=1)


def _fraction(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """``top / bottom``, NaN where ``bottom`` is 0 (Quantus's extra scores)."""
    return torch.where(bottom != 0, top / bottom, torch.full_like(top, float("nan")))


class RandomLogit(Metric):
    """Similarity of the explanation of the class ``y`` with that of a random other class
    (Sixt et al. 2020, *When explanations lie: why many modified BP attributions fail*,
    ICML). ``similarity_func="ssim"`` (the default, scikit-image's structural similarity of
    the flattened maps with their joint value range, as Quantus), "spearman" or "pearson".
    The other class is drawn uniformly from ``generator=`` (or ``seed``); ``off_classes=``
    gives it. Lower is better."""

    name = "random_logit"
    family = "randomisation"
    paper = "Sixt et al. 2020, ICML, arXiv:1912.09818"
    higher_is_better = False
    inputs = ("method", "off_classes", "generator")
    explains = True

    def __init__(
        self,
        method: Any = None,
        *,
        similarity_func: str | Similarity = "ssim",
        num_classes: int = 1000,
        seed: int = 42,
        method_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.method = method
        self.method_options = dict(method_options or {})
        self.similarity_func = _ssim if similarity_func == "ssim" else _similarity(similarity_func)
        if int(num_classes) < 2:
            raise OptionError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.seed = int(seed)

    def _evaluate(
        self, model, x, y, a, method: Any = None, off_classes: Any = None, generator=None
    ) -> MetricResult:
        if off_classes is None:
            g = generator or torch.Generator().manual_seed(self.seed)
            # an index among the other classes, in increasing order, skipping y
            pick = torch.randint(0, self.num_classes - 1, (x.shape[0],), generator=g).to(y)
            off_classes = torch.where(pick < y, pick, pick + 1)
        off = torch.as_tensor(off_classes).to(y)
        if off.shape != y.shape or bool((off == y).any()):
            raise InputError("off_classes must be one class per sample, each differing from y")
        explain = explainer(method if method is not None else self.method, self.method_options)
        a_off = self.preprocess(explain_rows(explain, model, x, off, self.batch_size))
        scores = self.similarity_func(flat(a.expand_as(x)), flat(a_off.expand_as(x)))
        return self._result(torch.as_tensor(scores, dtype=torch.float64))


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    metrics = require("skimage.metrics", "random_logit's SSIM", "test")
    values = []
    for row_a, row_b in zip(a.double().cpu().numpy(), b.double().cpu().numpy(), strict=True):
        both = [row_a.max(), row_b.max(), row_a.min(), row_b.min()]
        span = float(abs(max(both) - min(both)))
        values.append(metrics.structural_similarity(row_a, row_b, data_range=span))
    return torch.tensor(values, dtype=torch.float64)


METRIC_CLASSES: list[type[Metric]] = [MPRT, SmoothMPRT, EfficientMPRT, RandomLogit]
