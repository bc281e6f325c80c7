"""Analyzers that average gradients over many inputs: integrated gradients and SmoothGrad.

Both push all their points through the model as large batches (``batch_size`` rows at a
time), never one sample at a time. With "max_activation" the neuron is chosen once, on the
clean input, and every point explains that neuron.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.analyzers.base import Analyzer, Explanation
from innspect.analyzers.gradient import GradientAnalyzer, check_postprocess
from innspect.errors import InputError
from innspect.progress import progress


class _GradientAverage(Analyzer):
    """Shared machinery: choose neurons on the clean input, average gradients over points."""

    def __init__(
        self,
        model: nn.Module,
        *,
        neuron_selection_mode: str = "max_activation",
        batch_size: int = 64,
        verbose: bool = False,
        **reverse_kwargs: Any,
    ) -> None:
        if "subanalyzer" in reverse_kwargs:
            raise TypeError(
                f"{self.name} builds its gradient analyzer itself; iNNvestigate's subanalyzer= "
                "(used by its own save/load) is not taken"
            )
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.verbose = verbose
        inner_mode = "all" if neuron_selection_mode == "all" else "index"
        self._gradient = GradientAnalyzer(model, neuron_selection_mode=inner_mode, **reverse_kwargs)

    def _explain(self, x: torch.Tensor, neuron_selection: Any) -> Explanation:
        self._check_selection_arguments(neuron_selection)
        if not x.is_floating_point():
            raise InputError(f"{self.name} needs a floating-point input, got {x.dtype}")
        output = self._gradient.model_output(x)
        selected = self._select(output, neuron_selection)
        flat = output.detach().reshape(output.shape[0], -1)
        if selected is None:
            scores = flat.sum(dim=1)
        else:
            scores = flat[torch.arange(flat.shape[0], device=flat.device), selected]
        n_points = self._n_points()
        total = torch.zeros_like(x)
        rows_per_chunk = max(1, self.batch_size)
        # Row r of the expanded batch is point r // N of sample r % N.
        n_rows = n_points * x.shape[0]
        starts = range(0, n_rows, rows_per_chunk)
        make_point = self._point_maker(x)
        for start in progress(starts, self.verbose, total=len(starts), desc=self.name):
            rows = torch.arange(start, min(start + rows_per_chunk, n_rows), device=x.device)
            samples, points = rows % x.shape[0], rows // x.shape[0]
            batch = make_point(samples, points)
            index = None if selected is None else selected[samples]
            grads = self._gradient._explain(batch, index).attribution
            total.index_add_(0, samples, grads)
        return Explanation(self._combine(total / n_points, x), selected, scores)

    def _n_points(self) -> int:
        raise NotImplementedError

    def _point_maker(self, x: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def _combine(self, mean_gradient: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return mean_gradient


class IntegratedGradients(_GradientAverage):
    """Integrated gradients (Sundararajan et al. 2017), left Riemann sum.

    Parameters
    ----------
    steps
        Number of points ``x_ref + k/steps (x - x_ref)``, k = 0 .. steps-1.
    reference_inputs
        The baseline: a number, or an array broadcastable to the input.
    postprocess
        None, "abs" or "square", applied to each gradient on the path (iNNvestigate).
    batch_size
        Points pushed through the model at once.
    verbose
        Show a progress bar.
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model: nn.Module,
        *,
        steps: int = 64,
        reference_inputs: Any = 0.0,
        postprocess: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "augment_by_n" in kwargs:
            raise TypeError(
                "integrated_gradients takes steps= for the number of points on the path "
                "(iNNvestigate passes steps to its PathIntegrator as augment_by_n)"
            )
        super().__init__(model, **kwargs)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self.reference_inputs = reference_inputs
        # iNNvestigate applies it to each gradient on the path, before the average.
        self._gradient.postprocess = check_postprocess(postprocess)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        ref = self.reference_inputs
        ref = ref if isinstance(ref, torch.Tensor) else torch.as_tensor(np.asarray(ref))
        ref = ref.to(device=x.device, dtype=x.dtype)
        try:
            return torch.broadcast_to(ref, x.shape)
        except RuntimeError as error:
            raise InputError(
                f"reference_inputs of shape {tuple(ref.shape)} does not broadcast to the input's "
                f"shape {tuple(x.shape)}"
            ) from error

    def _n_points(self) -> int:
        return self.steps

    def _point_maker(self, x: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        ref = self._reference(x)
        delta = x - ref
        shape = [-1] + [1] * (x.dim() - 1)

        def make(samples: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
            alphas = (points.to(x.dtype) / self.steps).reshape(shape)
            return ref[samples] + alphas * delta[samples]

        return make

    def _combine(self, mean_gradient: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return mean_gradient * (x - self._reference(x))


class SmoothGrad(_GradientAverage):
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over noisy copies of the input.

    Parameters
    ----------
    augment_by_n
        Number of noisy samples per input.
    noise_scale
        Standard deviation of the Gaussian noise, in input units (iNNvestigate 1.0.9's
        meaning; 2.1.2 ignores it, innspect honours it).
    postprocess
        None, "abs" or "square" applied to each gradient before averaging.
    seed
        Seed for reproducible noise.
    """

    name = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        *,
        augment_by_n: int = 64,
        noise_scale: float = 1.0,
        postprocess: str | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if int(augment_by_n) < 1:
            raise ValueError(f"augment_by_n must be >= 1, got {augment_by_n}")
        if float(noise_scale) < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.augment_by_n = int(augment_by_n)
        self.noise_scale = float(noise_scale)
        self.seed = seed
        self._gradient.postprocess = check_postprocess(postprocess)

    def _n_points(self) -> int:
        return self.augment_by_n

    def _point_maker(self, x: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        generator = torch.Generator(device=x.device)
        if self.seed is not None:
            generator.manual_seed(self.seed)
        else:
            generator.seed()

        def make(samples: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
            base = x[samples]
            noise = torch.randn(base.shape, generator=generator, device=x.device, dtype=x.dtype)
            return base + self.noise_scale * noise

        return make


ANALYZERS = [IntegratedGradients, SmoothGrad]
