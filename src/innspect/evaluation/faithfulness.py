"""Faithfulness metrics with a fixed perturbation order: does removing what the attribution
calls relevant change the model's output?

Pixel flipping (Bach et al. 2015), region perturbation (Samek et al. 2017), selectivity
(Montavon et al. 2018), IROF (Rieger & Hansen 2020) and monotonicity (Arya et al. 2019), with
Quantus 0.6.0's parameters and defaults. Every step of every sample is one row of a batched
forward pass (``metric.perturbed_scores``); Quantus runs one model pass per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from innspect.errors import InputError, OptionError
from innspect.evaluation.metric import (
    Metric,
    MetricResult,
    baseline,
    class_scores,
    flat,
    inverse_permutation,
    perturbed_scores,
    positive_int,
    ranks_descending,
    steps_needed,
    trapezoid,
)
from innspect.util.extras import require

ORDERS = ("morf", "lerf", "random")


class PixelFlipping(Metric):
    """Replace the features most relevant first, ``features_in_step`` at a time, cumulatively,
    and record the class score after each step (Bach et al. 2015, *On pixel-wise explanations
    for non-linear classifier decisions by layer-wise relevance propagation*, PLoS ONE).

    ``curves``: the score after step 1, 2, ... (as Quantus: no point for the clean input);
    ``scores``: the area under that curve (Quantus' ``return_auc_per_sample=True``); lower is
    better. Features are ordered over x's full shape (an attribution with one channel is
    broadcast to every channel first, as Quantus does).
    """

    name = "pixel_flipping"
    family = "faithfulness"
    paper = "Bach et al. 2015, PLoS ONE 10(7)"
    higher_is_better = False
    default_softmax = True

    def __init__(
        self, features_in_step: int = 1, perturb_baseline: Any = "black", **options: Any
    ) -> None:
        super().__init__(**options)
        self.features_in_step = positive_int(features_in_step, "features_in_step")
        self.perturb_baseline = perturb_baseline

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        a = flat(a.expand_as(x))
        steps = steps_needed(a.shape[1], self.features_in_step)
        step_of = (ranks_descending(a) // self.features_in_step).reshape(x.shape)
        curves = perturbed_scores(
            model,
            x,
            baseline(x, self.perturb_baseline, generator),
            step_of,
            torch.arange(1, steps + 1),
            y,
            softmax=self.softmax,
            batch_size=self.batch_size,
        )
        return self._result(trapezoid(curves), curves)


def patch_ids(height: int, width: int, patch_size: int, device: torch.device) -> torch.Tensor:
    """The patch of each pixel (height, width) when the image is padded (half before, rest
    after, as Quantus' ``get_padding_size``) to a multiple of ``patch_size``; row-major ids."""
    ids = []
    for size in (height, width):
        before = ((-size) % patch_size) // 2
        ids.append((torch.arange(size, device=device) + before) // patch_size)
    columns = int(ids[1].max()) + 1  # the last pixel lies in the last column (padding < patch)
    return ids[0][:, None] * columns + ids[1][None, :]


def _spatial(x: torch.Tensor, name: str) -> torch.Tensor:
    # Quantus reads the last two axes as height and width; (N, C, L) gets a height of 1.
    if x.ndim == 3:
        return x[:, :, None]
    if x.ndim != 4:
        raise InputError(f"{name} needs images (N, C, H, W) or (N, C, L), got {tuple(x.shape)}")
    return x


def _patch_order(a: torch.Tensor, x: torch.Tensor, patch_size: int, order: str, generator):
    """Per sample: the rank of each pixel's patch in the perturbation order, x's shape, and
    the number of patches."""
    n, _, h, w = x.shape
    if patch_size > min(h, w) and not (h == 1 and patch_size <= w):
        raise OptionError(f"patch_size {patch_size} exceeds the image size {h}x{w}")
    ids = patch_ids(h, w, patch_size, x.device)
    count = int(ids.max()) + 1
    sums = torch.zeros(n, count, dtype=torch.float64, device=x.device)
    # Sum over every channel of a patch, as Quantus does (attributions broadcast to x first).
    per_pixel = a.expand_as(x).double().sum(dim=1).reshape(n, -1)
    sums.scatter_add_(1, ids.reshape(1, -1).expand(n, -1), per_pixel)
    if order == "morf":
        rank = ranks_descending(sums)
    elif order == "lerf":
        rank = ranks_descending(-sums)
    else:
        perm = torch.stack([torch.randperm(count, generator=generator) for _ in range(n)])
        rank = inverse_permutation(perm.to(x.device))
    step_of = rank.gather(1, ids.reshape(1, -1).expand(n, -1)).reshape(n, 1, h, w)
    return step_of.expand_as(x), count


class RegionPerturbation(Metric):
    """Replace square patches most relevant first (by summed attribution), cumulatively, and
    record the score drop ``f(x) - f(x_perturbed)`` after each (Samek et al. 2017, *Evaluating
    the visualization of what a deep neural network has learned*, IEEE TNNLS 28(11)).

    ``curves``: the drop after 1, 2, ... ``regions_evaluation`` patches; ``scores``: its area
    (Quantus' ``get_auc_score`` per sample). A larger drop means a more faithful ranking, so
    higher is better (Quantus labels the metric "lower").
    """

    name = "region_perturbation"
    family = "faithfulness"
    paper = "Samek et al. 2017, IEEE TNNLS 28(11)"
    higher_is_better = True
    default_softmax = True

    def __init__(
        self,
        patch_size: int = 8,
        order: str = "morf",
        regions_evaluation: int = 100,
        perturb_baseline: Any = "black",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.patch_size = positive_int(patch_size, "patch_size")
        self.order = str(order).lower()
        if self.order not in ORDERS:
            raise OptionError(f"order must be one of {ORDERS}, got {order!r}")
        self.regions_evaluation = positive_int(regions_evaluation, "regions_evaluation")
        self.perturb_baseline = perturb_baseline

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        shape = x.shape
        x4, a4 = _spatial(x, self.name), _spatial(a, self.name)
        step_of, count = _patch_order(a4, x4, self.patch_size, self.order, generator)
        steps = min(self.regions_evaluation, count)
        clean = class_scores(model, x, y, self.softmax, self.batch_size).double()
        perturbed = perturbed_scores(
            model,
            x,
            baseline(x, self.perturb_baseline, generator),
            step_of.reshape(shape),
            torch.arange(1, steps + 1),
            y,
            softmax=self.softmax,
            batch_size=self.batch_size,
        )
        curves = clean[:, None] - perturbed
        return self._result(trapezoid(curves), curves)


class Selectivity(Metric):
    """Replace all square patches most relevant first, cumulatively, and record the score
    after each (Montavon et al. 2018, *Methods for interpreting and understanding deep neural
    networks*, Digital Signal Processing 73). ``scores``: area under the curve; lower is better.
    """

    name = "selectivity"
    family = "faithfulness"
    paper = "Montavon et al. 2018, Digital Signal Processing 73"
    higher_is_better = False
    default_softmax = True

    def __init__(self, patch_size: int = 8, perturb_baseline: Any = "black", **options: Any):
        super().__init__(**options)
        self.patch_size = positive_int(patch_size, "patch_size")
        self.perturb_baseline = perturb_baseline

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        x4, a4 = _spatial(x, self.name), _spatial(a, self.name)
        step_of, count = _patch_order(a4, x4, self.patch_size, "morf", generator)
        curves = perturbed_scores(
            model,
            x,
            baseline(x, self.perturb_baseline, generator),
            step_of.reshape(x.shape),
            torch.arange(1, count + 1),
            y,
            softmax=self.softmax,
            batch_size=self.batch_size,
        )
        return self._result(trapezoid(curves), curves)


class Infidelity(Metric):
    """Infidelity (Yeh et al. 2019, *On the (in)fidelity and sensitivity of explanations*,
    NeurIPS): the mean squared difference between the attribution's prediction of a
    perturbation's effect, ``sum(a * (x - x'))``, and the effect ``f(x) - f(x')``, over the
    perturbations ``x'`` Quantus 0.6.0 uses: square patches of each size in
    ``perturb_patch_sizes`` replaced by the baseline cumulatively, in raster order; averaged
    over the sizes. Lower is better.

    These perturbations are deterministic, so Quantus's ``n_perturb_samples`` repeats give
    the same value; it is accepted and changes nothing. Quantus pads the image for patches
    that do not tile it but perturbs the unpadded one with the padded indices (wrong pixels,
    or an IndexError); here a patch is the pixels of its padded square inside the image.
    """

    name = "infidelity"
    family = "faithfulness"
    paper = "Yeh et al. 2019, NeurIPS, arXiv:1901.09392"
    higher_is_better = False
    default_normalise = False

    def __init__(
        self,
        loss_func: str = "mse",
        perturb_patch_sizes: Sequence[int] | None = None,
        n_perturb_samples: int = 10,
        perturb_baseline: Any = "black",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if loss_func != "mse":
            raise OptionError(f"loss_func must be 'mse', got {loss_func!r}")
        sizes = [4] if perturb_patch_sizes is None else list(perturb_patch_sizes)
        self.perturb_patch_sizes = [positive_int(p, "perturb_patch_sizes") for p in sizes]
        self.n_perturb_samples = positive_int(n_perturb_samples, "n_perturb_samples")
        self.perturb_baseline = perturb_baseline

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        x4 = _spatial(x, self.name)
        n, _, h, w = x4.shape
        base = baseline(x, self.perturb_baseline, generator)
        clean = class_scores(model, x, y, self.softmax, self.batch_size).double()
        # the attribution's prediction of each patch's effect: sum(a * (x - baseline))
        contribution = (a.expand_as(x) * (x - base)).double().reshape(x4.shape).sum(dim=1)
        losses, curves = [], []
        for patch in self.perturb_patch_sizes:
            ids = patch_ids(h, w, patch, x.device)
            count = int(ids.max()) + 1
            per_patch = torch.zeros(n, count, dtype=torch.float64, device=x.device)
            per_patch.scatter_add_(1, ids.reshape(1, -1).expand(n, -1), contribution.reshape(n, -1))
            predicted = per_patch.cumsum(dim=1)
            step_of = ids.reshape(1, 1, h, w).expand(x4.shape).reshape(x.shape)
            perturbed = perturbed_scores(
                model, x, base, step_of, torch.arange(1, count + 1), y,
                softmax=self.softmax, batch_size=self.batch_size,
            )  # fmt: skip
            effect = clean[:, None] - perturbed
            curves.append(effect - predicted)
            losses.append(((effect - predicted) ** 2).mean(dim=1))
        scores = torch.stack(losses, dim=1).mean(dim=1)
        return self._result(scores, curves[0] if len(curves) == 1 else None)


SEGMENTATIONS = ("slic", "felzenszwalb")


def superpixels(x: torch.Tensor, method: str = "slic") -> torch.Tensor:
    """Superpixel labels (N, H, W), 0..S-1 per sample, from scikit-image's ``slic`` (with
    ``start_label=0``) or ``felzenszwalb`` on each image (channels last, float64)."""
    segmentation = require("skimage.segmentation", "IROF's superpixels", "test")
    labels = []
    for image in x.detach().cpu().double().numpy():
        image = np.moveaxis(image, 0, -1)
        if method == "slic":
            labels.append(segmentation.slic(image, start_label=0))
        else:
            labels.append(segmentation.felzenszwalb(image))
    return torch.as_tensor(np.stack(labels)).to(x.device)


class IROF(Metric):
    """Iterative removal of features (Rieger & Hansen 2020, *IROF: a low resource evaluation
    metric for explanation methods*, ICLR workshop): remove superpixels in order of mean
    attribution, cumulatively; the curve is the class score relative to the clean one.

    ``scores``: ``S - AUC`` of that curve over the sample's ``S`` superpixels (Quantus' area
    over the curve); higher is better. ``segments=`` (N, H, W) integer labels replaces the
    segmentation. ``curves`` are NaN past a sample's last superpixel.
    """

    name = "irof"
    family = "faithfulness"
    inputs = ("segments", "generator")
    paper = "Rieger & Hansen 2020, arXiv:2003.08747"
    higher_is_better = True
    default_softmax = True

    def __init__(
        self, segmentation_method: str = "slic", perturb_baseline: Any = "mean", **options: Any
    ) -> None:
        super().__init__(**options)
        if segmentation_method not in SEGMENTATIONS:
            raise OptionError(
                f"segmentation_method must be one of {SEGMENTATIONS}, got {segmentation_method!r}"
            )
        self.segmentation_method = segmentation_method
        self.perturb_baseline = perturb_baseline

    def _evaluate(
        self, model, x, y, a, segments: Any = None, generator: torch.Generator | None = None
    ) -> MetricResult:
        if x.ndim != 4:
            raise InputError(f"irof needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        if segments is None:
            segments = superpixels(x, self.segmentation_method)
        segments = torch.as_tensor(segments, device=x.device)
        if tuple(segments.shape) != (n, h, w):
            raise InputError(
                f"segments must be (N, H, W) = {(n, h, w)}, got {tuple(segments.shape)}"
            )
        per_pixel = a.expand_as(x).double().mean(dim=1).reshape(n, -1)
        step_rows, counts = [], []
        max_count = 0
        labelled = []
        for i in range(n):
            _, inverse = torch.unique(segments[i].reshape(-1), return_inverse=True)
            labelled.append(inverse)
            max_count = max(max_count, int(inverse.max()) + 1)
        for i in range(n):
            count = int(labelled[i].max()) + 1
            if count < 2:
                raise InputError(f"sample {i} has {count} superpixel: IROF needs at least 2")
            # mean attribution per segment over every channel (Quantus: a[:, segment].mean())
            sums = torch.zeros(count, dtype=torch.float64, device=x.device)
            sums.scatter_add_(0, labelled[i], per_pixel[i])
            sizes = torch.bincount(labelled[i], minlength=count).double()
            rank = ranks_descending((sums / sizes)[None])[0]
            step_rows.append(rank[labelled[i]].reshape(1, h, w))
            counts.append(count)
        step_of = torch.stack(step_rows).expand_as(x)
        clean = class_scores(model, x, y, self.softmax, self.batch_size).double()
        perturbed = perturbed_scores(
            model,
            x,
            baseline(x, self.perturb_baseline, generator),
            step_of,
            torch.arange(1, max_count + 1),
            y,
            softmax=self.softmax,
            batch_size=self.batch_size,
        )
        curves = perturbed / clean[:, None]
        scores = torch.empty(n, dtype=torch.float64, device=x.device)
        for i, count in enumerate(counts):
            scores[i] = count - trapezoid(curves[i : i + 1, :count])[0]
            curves[i, count:] = torch.nan
        return self._result(scores, curves)


class Monotonicity(Metric):
    """Start from the baseline and add the input's features back, least relevant first,
    ``features_in_step`` at a time; the explanation is monotonic when the class score never
    falls (Arya et al. 2019, *One explanation does not fit all*, arXiv:1909.03012).

    ``scores``: 1.0 where monotonic, 0.0 otherwise; ``curves``: the score after each step.
    Quantus 0.6.0 replaces the baseline's features by the baseline again, so its input never
    changes and every explanation is "monotonic"; we add the input's values, as the paper does.
    """

    name = "monotonicity"
    family = "faithfulness"
    paper = "Arya et al. 2019, arXiv:1909.03012"
    higher_is_better = True
    default_abs = True
    default_softmax = True

    def __init__(
        self, features_in_step: int = 1, perturb_baseline: Any = "black", **options: Any
    ) -> None:
        super().__init__(**options)
        self.features_in_step = positive_int(features_in_step, "features_in_step")
        self.perturb_baseline = perturb_baseline

    def _evaluate(self, model, x, y, a, generator: torch.Generator | None = None) -> MetricResult:
        a = flat(a.expand_as(x))
        steps = steps_needed(a.shape[1], self.features_in_step)
        # least relevant first: rank in ascending order (ties keep feature order)
        step_of = (ranks_descending(-a) // self.features_in_step).reshape(x.shape)
        curves = perturbed_scores(
            model,
            baseline(x, self.perturb_baseline, generator),
            x,
            step_of,
            torch.arange(1, steps + 1),
            y,
            softmax=self.softmax,
            batch_size=self.batch_size,
        )
        monotonic = (curves.diff(dim=1) >= 0).all(dim=1)
        return self._result(monotonic.double(), curves)


METRIC_CLASSES: list[type[Metric]] = [
    PixelFlipping,
    RegionPerturbation,
    Selectivity,
    Infidelity,
    IROF,
    Monotonicity,
]
