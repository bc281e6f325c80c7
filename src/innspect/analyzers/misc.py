"""Trivial analyzers: the input itself and random noise (baselines for comparisons)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from innspect.analyzers.api import Analyzer, Explanation
from innspect.engine.inputs import ModelInputs


class _OutputFree(Analyzer):
    """Analyzers whose result does not depend on the model's output."""

    def _explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        self._call_target(neuron_selection, target)
        given = inputs.by_name()
        attributions = {
            name: self._compute(given[name]) for name in self._attributed_inputs(inputs)
        }
        first = next(iter(attributions.values()))
        empty = torch.zeros(first.shape[0], device=first.device)
        return Explanation(first, None, empty, attributions=attributions)

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InputAnalyzer(_OutputFree):
    """The input itself."""

    name = "input"
    family = "gradient"
    title = "input"
    summary = "The input itself: a reminder of what it looks like, not an explanation."
    innvestigate = "Input"

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone()


class RandomAnalyzer(_OutputFree):
    """Gaussian noise of the input's shape (a baseline any method should beat).

    Parameters
    ----------
    stddev
        Standard deviation of the noise.
    seed
        Seed for reproducible noise (None: fresh noise each call).
    """

    name = "random"
    family = "gradient"
    title = "random (baseline)"
    summary = "Gaussian noise: the baseline every method should beat in the perturbation test."
    innvestigate = "Random"

    def __init__(
        self, model: nn.Module, *, stddev: float = 1.0, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.stddev = float(stddev)
        self.seed = seed

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
        return noise * self.stddev


ANALYZERS = [InputAnalyzer, RandomAnalyzer]
