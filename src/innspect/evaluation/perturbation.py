"""Perturbation analysis (Samek et al. 2017): how fast does the score fall when the regions an
analysis calls most relevant are destroyed first?

``Perturbation`` perturbs the top-ranked regions of a batch; ``PerturbationAnalysis`` repeats it
with more and more regions and reports the score curve and its AOPC. Both follow iNNvestigate's
``innvestigate.tools.perturbate`` with its bugs fixed: every channel of a chosen region is
perturbed (2.1.2 perturbs every channel, 1.0.9 only the first), padding works when only one axis
needs it, the curve is taken after 0, r, 2r, ... regions (iNNvestigate: 0, 1, 1 + r, ...), and
``recompute_analysis=True`` re-analyzes the perturbed input at every step and perturbs the most
relevant regions not yet perturbed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.analyzers.api import Analyzer
from innspect.graph.lock import GRAPH_LOCK
from innspect.graph.views import eval_view
from innspect.util.progress import progress
from innspect.util.tensors import model_device_dtype

PERTURBATION_FUNCTIONS = ("zeros", "gaussian", "mean", "invert")
SCORES = ("output", "probability", "accuracy")
GAUSSIAN_STD = 0.3


class Perturbation:
    """Perturb the most relevant regions of a batch of images (channels first).

    Parameters
    ----------
    perturbation_function
        "zeros" (set to 0), "gaussian" (replace by N(0, 0.3) noise), "mean" (the region's mean,
        per channel), "invert" (negate), or a callable taking one region of one channel, shape
        ``region_shape``, and returning its replacement (array or scalar).
    num_perturbed_regions
        How many regions per sample ``perturbate_on_batch`` perturbs.
    region_shape
        (height, width) of a region.
    reduce_function
        Reduces the analysis over the channel axis: called as ``f(a, axis=1, keepdims=True)``.
    aggregation_function
        Aggregates the analysis inside a region: called as ``f(a, axis=(3, 5))``.
    pad_mode
        ``numpy.pad`` mode used when the image does not divide into regions.
    in_place
        Write the result into the given numpy array.
    value_range
        (low, high): the perturbed batch is clipped to it.
    seed
        Seed of the "gaussian" noise.
    """

    def __init__(
        self,
        perturbation_function: str | Callable[[np.ndarray], Any],
        num_perturbed_regions: int = 0,
        region_shape: Sequence[int] = (9, 9),
        reduce_function: Callable[..., np.ndarray] = np.mean,
        aggregation_function: Callable[..., np.ndarray] = np.mean,
        pad_mode: str = "reflect",
        in_place: bool = False,
        value_range: tuple[float, float] | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(perturbation_function, str):
            if perturbation_function not in PERTURBATION_FUNCTIONS:
                raise ValueError(
                    f"perturbation function must be one of {PERTURBATION_FUNCTIONS} or a "
                    f"callable, got {perturbation_function!r}"
                )
        elif not callable(perturbation_function):
            raise TypeError(
                f"perturbation_function must be a name or a callable, got "
                f"{type(perturbation_function).__name__}"
            )
        region = tuple(int(s) for s in region_shape)
        if len(region) != 2 or min(region) < 1:
            raise ValueError(f"region_shape must be two positive ints, got {region_shape!r}")
        if int(num_perturbed_regions) < 0:
            raise ValueError(f"num_perturbed_regions must be >= 0, got {num_perturbed_regions}")
        if value_range is not None and value_range[0] > value_range[1]:
            raise ValueError(f"value_range must be (low, high) with low <= high, got {value_range}")
        self.perturbation_function = perturbation_function
        self.num_perturbed_regions = int(num_perturbed_regions)
        self.region_shape = region
        self.reduce_function = reduce_function
        self.aggregation_function = aggregation_function
        self.pad_mode = pad_mode
        self.in_place = in_place
        self.value_range = value_range
        self._rng = np.random.default_rng(seed)

    # -- the steps of the algorithm, public so they can be checked one by one ------------------
    def padding(self, spatial_shape: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(before, after) padding of the two spatial axes so that regions tile the image.

        Half of the missing rows (rounded down) go before, the rest after.
        """
        pads = []
        for size, region in zip(spatial_shape, self.region_shape, strict=True):
            total = (-size) % region
            pads.append((total // 2, total - total // 2))
        return pads[0], pads[1]

    def pad(self, array: np.ndarray) -> np.ndarray:
        """Pad an (N, C, H, W) array with ``pad_mode`` so that the regions tile it."""
        rows, cols = self.padding(array.shape[2:])
        if rows == (0, 0) and cols == (0, 0):
            return array
        return np.pad(array, ((0, 0), (0, 0), rows, cols), mode=self.pad_mode)

    def to_regions(self, array: np.ndarray) -> np.ndarray:
        """View a padded (N, C, H, W) array as (N, C, rows, region_h, columns, region_w)."""
        n, c, h, w = array.shape
        rh, rw = self.region_shape
        return array.reshape(n, c, h // rh, rh, w // rw, rw)

    def aggregate_regions(self, analysis: np.ndarray) -> np.ndarray:
        """Reduce over channels, pad, aggregate per region: (N, 1, rows, columns)."""
        reduced = np.asarray(self.reduce_function(analysis, axis=1, keepdims=True))
        if reduced.shape != (analysis.shape[0], 1) + analysis.shape[2:]:
            raise ValueError(
                f"reduce_function must keep the channel axis (keepdims=True); it returned shape "
                f"{reduced.shape} for an analysis of shape {analysis.shape}"
            )
        return np.asarray(
            self.aggregation_function(self.to_regions(self.pad(reduced)), axis=(3, 5))
        )

    @staticmethod
    def compute_region_ordering(aggregated_regions: np.ndarray) -> np.ndarray:
        """Rank of each region within its sample, 0 = largest value; ties: earlier region first."""
        n, c = aggregated_regions.shape[:2]
        flat = aggregated_regions.reshape(n, c, -1)
        order = np.argsort(-flat, axis=-1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(flat.shape[-1]), axis=-1)
        return ranks.reshape(aggregated_regions.shape)

    @staticmethod
    def compute_perturbation_mask(ranks: np.ndarray, num_perturbed_regions: int) -> np.ndarray:
        """True for the regions ranked below ``num_perturbed_regions``."""
        return ranks < num_perturbed_regions

    def perturbate_regions(self, x_padded: np.ndarray, region_mask: np.ndarray) -> np.ndarray:
        """Perturb every channel of the regions where ``region_mask`` (N, 1, rows, cols) is True.

        ``x_padded`` is (N, C, H, W) with H, W multiples of the region shape; a new array is
        returned, clipped to ``value_range`` if one is set.
        """
        regions = self.to_regions(x_padded)
        mask = np.broadcast_to(region_mask[:, :, :, None, :, None], regions.shape)
        function = self.perturbation_function
        if function == "zeros":
            replacement: np.ndarray | float = 0.0
        elif function == "gaussian":
            replacement = self._rng.normal(0.0, GAUSSIAN_STD, size=regions.shape)
        elif function == "mean":
            replacement = regions.mean(axis=(3, 5), keepdims=True)
        elif function == "invert":
            replacement = -regions
        else:
            replacement = regions.copy()
            n, c, rows, _, cols, _ = regions.shape
            for i, k, r, q in itertools.product(range(n), range(c), range(rows), range(cols)):
                if region_mask[i, 0, r, q]:
                    replacement[i, k, r, :, q, :] = function(regions[i, k, r, :, q, :])
        perturbed = np.where(mask, replacement, regions).astype(x_padded.dtype, copy=False)
        if self.value_range is not None:
            perturbed = np.clip(perturbed, *self.value_range)
        return perturbed.reshape(x_padded.shape)

    def crop(self, x_padded: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
        """Remove the padding added by ``pad``."""
        (top, _), (left, _) = self.padding(spatial_shape)
        h, w = spatial_shape
        return x_padded[:, :, top : top + h, left : left + w]

    # -- the whole algorithm ---------------------------------------------------------------
    def perturbate_on_batch(self, x: Any, analysis: Any) -> Any:
        """Perturb the ``num_perturbed_regions`` most relevant regions of each sample.

        Parameters
        ----------
        x
            Images, (N, C, H, W) or (N, H, W), numpy array or torch tensor.
        analysis
            The analysis of ``x``, same shape.

        Returns
        -------
        The perturbed images, same shape and kind as ``x``.
        """
        images, source = _to_numpy(x)
        relevance, _ = _to_numpy(analysis)
        if images.shape != relevance.shape:
            raise ValueError(
                f"analysis shape {relevance.shape} differs from the input's {images.shape}"
            )
        squeeze = images.ndim == 3
        if squeeze:
            images, relevance = images[:, None], relevance[:, None]
        if images.ndim != 4:
            raise ValueError(
                f"perturbation needs images (N, C, H, W) or (N, H, W), got shape {images.shape}"
            )
        ranks = self.compute_region_ordering(self.aggregate_regions(relevance))
        mask = self.compute_perturbation_mask(ranks, self.num_perturbed_regions)
        perturbed = self.crop(self.perturbate_regions(self.pad(images), mask), images.shape[2:])
        if squeeze:
            perturbed = perturbed[:, 0]
        if source is not None:
            return torch.from_numpy(np.ascontiguousarray(perturbed)).to(source.device)
        if self.in_place and isinstance(x, np.ndarray):
            x[...] = perturbed
            return x
        return perturbed


@dataclass
class PerturbationResult:
    """The outcome of a perturbation analysis.

    Attributes
    ----------
    n_regions
        Regions perturbed per sample at each point of the curve: 0, r, 2r, ...
    scores
        Mean score over the samples at each point.
    sample_scores
        Score per sample and point, shape (N, steps + 1).
    aopc
        Area over the perturbation curve: mean over k = 0 .. steps of (score_0 - score_k),
        averaged over samples (Samek et al. 2017). Larger means the analysis found the
        regions the model depends on.
    analysis_seconds
        Wall time spent in the analyzer.
    """

    n_regions: np.ndarray
    scores: np.ndarray
    sample_scores: np.ndarray
    aopc: float
    analysis_seconds: float = 0.0


class PerturbationAnalysis:
    """Perturb more and more of the most relevant regions and record the model's score.

    Parameters
    ----------
    analyzer
        The analyzer whose ranking is tested (``create_analyzer("random", model)`` is the
        baseline to beat). With ``neuron_selection_mode="index"`` it explains the target neurons.
    model
        The model scored on the perturbed inputs.
    data
        Inputs (N, C, H, W) as an array or tensor, or an iterable of batches, each an array or
        tensor or an ``(inputs, targets)`` pair.
    perturbation
        A ``Perturbation``; its ``num_perturbed_regions`` is not used.
    steps
        Number of perturbation steps after the unperturbed start.
    regions_per_step
        Regions perturbed per sample at each step.
    recompute_analysis
        Re-analyze the perturbed input at every step (else analyze once, at the start).
    score
        "output" (the model's output at the target neuron), "probability" (its softmax),
        "accuracy" (1 where the prediction equals the target) or a callable
        ``f(output (N, K), targets (N,)) -> (N,)`` tensor.
    targets
        Target neuron per sample for array data; default: the model's prediction on the
        unperturbed input.
    batch_size
        Samples per batch for array data.
    verbose
        Show a progress bar over batches.
    """

    def __init__(
        self,
        analyzer: Analyzer,
        model: nn.Module,
        data: Any,
        perturbation: Perturbation,
        steps: int = 1,
        regions_per_step: int = 1,
        recompute_analysis: bool = False,
        *,
        score: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "output",
        targets: Any = None,
        batch_size: int = 64,
        verbose: bool = False,
    ) -> None:
        if int(steps) < 0 or int(regions_per_step) < 1:
            raise ValueError(
                f"steps must be >= 0 and regions_per_step >= 1, got {steps}, {regions_per_step}"
            )
        if isinstance(score, str) and score not in SCORES:
            raise ValueError(f"score must be one of {SCORES} or a callable, got {score!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.analyzer = analyzer
        self.model = model
        self.data = data
        self.perturbation = perturbation
        self.steps = int(steps)
        self.regions_per_step = int(regions_per_step)
        self.recompute_analysis = recompute_analysis
        self.score = score
        self.targets = targets
        self.batch_size = int(batch_size)
        self.verbose = verbose

    def compute_perturbation_analysis(self) -> PerturbationResult:
        """Run the analysis over all data; returns the score curve and AOPC."""
        self._analysis_seconds = 0.0
        batches = list(self._batches())
        per_batch = [
            self._evaluate_batch(x, y)
            for x, y in progress(batches, self.verbose, total=len(batches), desc="perturbation")
        ]
        if not per_batch:
            raise ValueError("perturbation analysis needs at least one sample")
        sample_scores = np.concatenate(per_batch, axis=0)
        scores = sample_scores.mean(axis=0)
        n_regions = np.arange(self.steps + 1) * self.regions_per_step
        aopc = float(np.mean(sample_scores[:, :1] - sample_scores))
        return PerturbationResult(n_regions, scores, sample_scores, aopc, self._analysis_seconds)

    # -- internals ----------------------------------------------------------------------------
    def _batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
        device, dtype = model_device_dtype(self.model)

        def tensor(values: Any, floating: bool) -> torch.Tensor:
            t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
            return t.to(device=device, dtype=dtype if floating else torch.long)

        data = self.data
        if isinstance(data, np.ndarray | torch.Tensor):
            inputs = tensor(data, True)
            targets = None if self.targets is None else tensor(self.targets, False).reshape(-1)
            if targets is not None and targets.numel() != inputs.shape[0]:
                raise ValueError(f"{targets.numel()} targets for {inputs.shape[0]} samples")
            for start in range(0, inputs.shape[0], self.batch_size):
                stop = start + self.batch_size
                yield inputs[start:stop], None if targets is None else targets[start:stop]
            return
        for batch in data:
            if isinstance(batch, tuple | list) and len(batch) == 2:
                yield tensor(batch[0], True), tensor(batch[1], False).reshape(-1)
            else:
                yield tensor(batch, True), None

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        # The eval view: the user's training flags are never touched (views.eval_view).
        with torch.no_grad(), GRAPH_LOCK.shared():
            output = eval_view(self.model)(x)
        return output.reshape(output.shape[0], -1)

    def _scores(self, output: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        rows = torch.arange(output.shape[0], device=output.device)
        if callable(self.score):
            values = self.score(output, targets)
        elif self.score == "output":
            values = output[rows, targets]
        elif self.score == "probability":
            values = torch.softmax(output, dim=1)[rows, targets]
        else:
            values = (output.argmax(dim=1) == targets).to(output.dtype)
        return values.detach().cpu().double().numpy().reshape(-1)

    def _analyze(self, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        start = time.perf_counter()
        if self.analyzer.neuron_selection_mode == "index":
            analysis = self.analyzer.analyze(x, neuron_selection=targets)
        else:
            analysis = self.analyzer.analyze(x)
        analysis = analysis.detach().cpu().numpy()
        self._analysis_seconds += time.perf_counter() - start
        return analysis

    def _evaluate_batch(self, x: torch.Tensor, targets: torch.Tensor | None) -> np.ndarray:
        output = self._outputs(x)
        if targets is None:
            targets = output.argmax(dim=1)
        perturbation = self.perturbation
        spatial = tuple(x.shape[2:])
        current = perturbation.pad(x.detach().cpu().numpy())
        done = None  # regions perturbed so far, (N, 1, rows, columns)
        curve = [self._scores(output, targets)]
        analysis = None if self.recompute_analysis else self._analyze(x, targets)
        for _ in range(self.steps):
            if self.recompute_analysis:
                image = torch.from_numpy(perturbation.crop(current, spatial).copy()).to(x)
                analysis = self._analyze(image, targets)
            aggregated = perturbation.aggregate_regions(analysis).astype(np.float64)
            if done is None:
                done = np.zeros(aggregated.shape, dtype=bool)
            # Regions already perturbed rank last, so each step takes the next most relevant.
            aggregated[done] = -np.inf
            ranks = perturbation.compute_region_ordering(aggregated)
            new = perturbation.compute_perturbation_mask(ranks, self.regions_per_step) & ~done
            current = perturbation.perturbate_regions(current, new)
            done |= new
            image = torch.from_numpy(perturbation.crop(current, spatial).copy()).to(x)
            curve.append(self._scores(self._outputs(image), targets))
        return np.stack(curve, axis=1)


def _to_numpy(values: Any) -> tuple[np.ndarray, torch.Tensor | None]:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy().copy(), values
    return np.array(values, copy=True), None
