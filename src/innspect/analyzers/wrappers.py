"""Analyzers that average gradients over many inputs: integrated gradients and SmoothGrad.

Both push all their points through the model as large batches (``batch_size`` rows at a
time), never one sample at a time. With "max_activation" the neuron is chosen once, on the
clean input, and every point explains that neuron.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from innspect.analyzers.base import Analyzer, Explanation
from innspect.analyzers.baselines import broadcast_baseline
from innspect.analyzers.gradient import GradientAnalyzer, check_postprocess
from innspect.analyzers.io import ModelInputs, target_gradient, target_rows
from innspect.analyzers.options import MAX_POINTS, check_flag, check_int, check_number
from innspect.errors import InputError
from innspect.progress import progress


class _GradientAverage(Analyzer):
    """Shared machinery: choose neurons on the clean input, average gradients over points.

    Each attributed input (or node, ``attribute_to``) gets its own points; inputs that are
    not attributed (token ids, masks) are repeated unchanged with each point.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        neuron_selection_mode: str = "max_activation",
        target: Any = None,
        output: Any = None,
        attribute_to: Any = None,
        attribute_sum_axis: int | None = None,
        batch_size: int = 64,
        verbose: bool = False,
        allow_nonfinite: bool = False,
        **reverse_kwargs: Any,
    ) -> None:
        if "subanalyzer" in reverse_kwargs:
            raise TypeError(
                f"{self.name} builds its gradient analyzer itself; iNNvestigate's subanalyzer= "
                "(used by its own save/load) is not taken"
            )
        super().__init__(
            model,
            neuron_selection_mode=neuron_selection_mode,
            target=target,
            output=output,
            attribute_to=attribute_to,
            attribute_sum_axis=attribute_sum_axis,
            allow_nonfinite=allow_nonfinite,
        )
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.verbose = check_flag("verbose", verbose)
        inner_mode = "all" if neuron_selection_mode == "all" else "index"
        self._gradient = GradientAnalyzer(
            model,
            neuron_selection_mode=inner_mode,
            output=output,
            attribute_to=attribute_to,
            allow_nonfinite=True,  # checked once, on the average
            **reverse_kwargs,
        )

    def _explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        target = self._call_target(neuron_selection, target)
        gradient = self._gradient
        graph = gradient.graph(inputs)
        feed = graph.feed(inputs.values)
        output, clean = gradient._clean_pass(graph, feed)
        sources = graph.source_nodes
        for node in sources:
            value = clean[node]
            if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                raise InputError(
                    f"{self.name} needs a floating-point input, got {graph.source_names[node]!r} "
                    f"of dtype {getattr(value, 'dtype', type(value).__name__)}"
                )
        if target is None:
            selected = self._select(output, neuron_selection)
            flat = output.detach().reshape(output.shape[0], -1)
            if selected is None:
                scores = flat.sum(dim=1)
            else:
                scores = flat[torch.arange(flat.shape[0], device=flat.device), selected]
        else:
            selected, scores = None, target_gradient(output, target)[1]
        n = output.shape[0]
        n_points = self._n_points()
        call: dict[str, Any] = {}  # per-call state of the point makers (a noise generator)
        totals = {node: torch.zeros_like(clean[node]) for node in sources}
        makers = {
            node: self._point_maker(clean[node], graph.source_names[node], call) for node in sources
        }
        # Row r of the expanded batch is point r // N of sample r % N.
        n_rows = n_points * n
        starts = range(0, n_rows, self.batch_size)
        for start in progress(starts, self.verbose, total=len(starts), desc=self.name):
            rows = torch.arange(start, min(start + self.batch_size, n_rows), device=output.device)
            samples, points = rows % n, rows // n
            batch = {node: value[samples] for node, value in feed.items()}
            for node in sources:
                batch[node] = makers[node](samples, points)
            index = None if selected is None else selected[samples]
            rows_target = target_rows(target, samples, n, output.dim())
            explanation = gradient._explain_feed(graph, batch, index, rows_target)
            for node in sources:
                totals[node].index_add_(
                    0, samples, explanation.attributions[graph.source_names[node]]
                )
        attributions = {}
        for node in sources:
            name = graph.source_names[node]
            attribution = self._combine(totals[node] / n_points, clean[node], name)
            if self.attribute_sum_axis is not None:
                attribution = attribution.sum(dim=self.attribute_sum_axis)
            attributions[name] = attribution
        first = next(iter(attributions.values()))
        return Explanation(first, selected, scores, attributions=attributions)

    def _n_points(self) -> int:
        raise NotImplementedError

    def _point_maker(
        self, x: torch.Tensor, name: str, call: dict[str, Any]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def _combine(self, mean_gradient: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        return mean_gradient


class IntegratedGradients(_GradientAverage):
    """Integrated gradients (Sundararajan et al. 2017), left Riemann sum.

    Parameters
    ----------
    steps
        Number of points ``x_ref + k/steps (x - x_ref)``, k = 0 .. steps-1.
    reference_inputs
        The baseline: a number, or an array broadcastable to the input; for several
        attributed inputs or nodes, a dict from their names to such baselines (0 for
        names it leaves out).
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
        self.steps = check_int("steps", steps, 1, MAX_POINTS)
        self.reference_inputs = reference_inputs
        # iNNvestigate applies it to each gradient on the path, before the average.
        self._gradient.postprocess = check_postprocess(postprocess)

    def _nonfinite_hint(self) -> str:
        return (
            " at a point of the path from reference_inputs to the input (a model that is "
            "NaN at the baseline, e.g. 0, needs another reference_inputs)"
        )

    def _reference(self, x: torch.Tensor, name: str) -> torch.Tensor:
        ref = self.reference_inputs
        if isinstance(ref, dict):
            ref = ref.get(name, 0.0)
        return broadcast_baseline(ref, x, f"reference_inputs for {name!r}")

    def _n_points(self) -> int:
        return self.steps

    def _point_maker(
        self, x: torch.Tensor, name: str, call: dict[str, Any]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        ref = self._reference(x, name)
        delta = x - ref
        shape = [-1] + [1] * (x.dim() - 1)

        def make(samples: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
            alphas = (points.to(x.dtype) / self.steps).reshape(shape)
            return ref[samples] + alphas * delta[samples]

        return make

    def _combine(self, mean_gradient: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        return mean_gradient * (x - self._reference(x, name))


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
        self.augment_by_n = check_int("augment_by_n", augment_by_n, 1, MAX_POINTS)
        self.noise_scale = check_number("noise_scale", noise_scale, minimum=0.0)
        self.seed = None if seed is None else check_int("seed", seed, 0, 2**63 - 1)
        self._gradient.postprocess = check_postprocess(postprocess)

    def _n_points(self) -> int:
        return self.augment_by_n

    def _point_maker(
        self, x: torch.Tensor, name: str, call: dict[str, Any]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        # One generator per call, shared by the attributed inputs: different noise for
        # each, reproducible with a seed (``call`` is per call: analyzers may be shared).
        generator = call.get("generator")
        if generator is None:
            generator = call["generator"] = torch.Generator(device=x.device)
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
