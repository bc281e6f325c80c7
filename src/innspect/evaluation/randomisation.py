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
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.errors import InputError, OptionError
from innspect.evaluation.correlations import Similarity, _similarity
from innspect.evaluation.explainers import explain_rows, explainer
from innspect.evaluation.metric import Metric, MetricResult, flat, positive_int
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
            curves.append(self.similarity_func(flat(a.expand_as(x)), flat(a_random.expand_as(x))))
            names.append(name)
        curve = torch.stack(curves, dim=1)
        scores = curve.mean(dim=1) if self.return_average_correlation else curve[:, -1]
        result = self._result(scores, curve)
        result.labels = names
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


class EfficientMPRT(MPRT):
    """Efficient MPRT (Hedström et al. 2023, *Sanity checks revisited*, arXiv:2401.06465):
    the relative rise of the explanation's complexity, ``(H(a_random) - H(a)) / H(a)``, where
    ``H`` is the entropy of the explanation's histogram in ``n_bins`` bins (Quantus's
    ``discrete_entropy`` with its default 100) and ``a_random`` the explanation of the model
    with every layer randomised (bottom-up, as Quantus's defaults). Higher is better: a method
    that depends on the weights explains a random model with noise.

    ``H(a)`` is taken from the attributions given (or explained) at ``x``; Quantus re-explains
    ``x`` for it, the same for deterministic methods."""

    name = "efficient_mprt"
    paper = "Hedström et al. 2023, arXiv:2401.06465"
    higher_is_better = True
    default_abs = False
    default_normalise = False

    def __init__(
        self, method: Any = None, *, n_bins: int = 100, layer_order: str = "bottom_up", **options
    ) -> None:
        super().__init__(method, layer_order=layer_order, skip_layers=True, **options)
        self.n_bins = positive_int(n_bins, "n_bins")
        # MPRT's comparison of the clean and randomised explanations: both entropies
        self.similarity_func = self._entropies

    def _entropies(self, clean: torch.Tensor, random: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [histogram_entropy(clean, self.n_bins), histogram_entropy(random, self.n_bins)], dim=1
        )

    def _evaluate(self, model, x, y, a, method: Any = None, **extra: Any) -> MetricResult:
        result = super()._evaluate(model, x, y, a, method=method, **extra)
        entropies = result.curves.reshape(x.shape[0], 2)
        before, after = entropies[:, 0], entropies[:, 1]
        return self._result((after - before) / before, entropies)


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
