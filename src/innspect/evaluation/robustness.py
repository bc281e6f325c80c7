"""Robustness metrics: does the explanation stay put when the input barely moves?

Max- and avg-sensitivity (Yeh et al. 2019), the local Lipschitz estimate (Alvarez-Melis &
Jaakkola 2018) and relative input / output stability (Agarwal et al. 2022), with Quantus
0.6.0's parameters. Each re-explains ``nr_samples`` noisy copies of every input with the
metric's ``method`` (a name, an analyzer, or ``f(model, x, y)``); the copies of several
samples and steps are explained together, ``batch_size`` rows per analyzer call.

Noise is drawn step by step, (N, ...) per step, from a ``torch.Generator`` (``seed``), so the
draws do not depend on ``batch_size``; ``noise=`` (nr_samples, N, ...) injects them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from innspect.errors import InputError, OptionError
from innspect.evaluation.explainers import explain_rows, explainer
from innspect.evaluation.metric import (
    Metric,
    MetricResult,
    flat,
    positive_int,
    predict,
    predict_in_chunks,
)


class _Robustness(Metric):
    family = "robustness"
    higher_is_better = False
    inputs = ("method", "noise", "generator")
    explains = True
    # Quantus's noise: "uniform" in [-lower, lower] (or [lower, upper]), or "gaussian"
    noise_kind = "uniform"
    # the objective reads the model's outputs; otherwise the perturbed inputs are only
    # explained, and predicted only to drop those whose class changed (when asked)
    uses_outputs = False

    def __init__(
        self,
        method: Any = None,
        *,
        nr_samples: int = 200,
        return_nan_when_prediction_changes: bool = False,
        method_options: Mapping[str, Any] | None = None,
        seed: int | None = 0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.method = method
        self.method_options = dict(method_options or {})
        self.nr_samples = positive_int(nr_samples, "nr_samples")
        self.return_nan_when_prediction_changes = bool(return_nan_when_prediction_changes)
        self.seed = seed
        self._explainers: dict[int, tuple[Any, Any]] = {}

    def _noise(self, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _evaluate(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        a: torch.Tensor,
        method: Any = None,
        noise: Any = None,
        generator: torch.Generator | None = None,
    ) -> MetricResult:
        method = method if method is not None else self.method
        # one explainer per method across calls: its analyzers (and their captured graphs)
        # are kept per model object and recaptured by the analyzer if the model changes
        key = id(method)
        if key not in self._explainers or self._explainers[key][0] is not method:
            self._explainers[key] = (method, explainer(method, self.method_options))
        explain = self._explainers[key][1]
        n = x.shape[0]
        if noise is not None:
            noise = torch.as_tensor(noise).to(x)
            if tuple(noise.shape) != (self.nr_samples, *x.shape):
                raise InputError(
                    f"noise must be (nr_samples, *x.shape) = {(self.nr_samples, *x.shape)}, "
                    f"got {tuple(noise.shape)}"
                )
        elif generator is None:
            generator = torch.Generator().manual_seed(0 if self.seed is None else int(self.seed))
        predicts = self.uses_outputs or self.return_nan_when_prediction_changes
        clean_output = predict(model, x, self.softmax) if predicts else None
        values = torch.full((n, self.nr_samples), torch.nan, dtype=torch.float64)
        steps_per_chunk = max(1, self.batch_size // n)
        for first in range(0, self.nr_samples, steps_per_chunk):
            steps = range(first, min(self.nr_samples, first + steps_per_chunk))
            deltas = [
                noise[s] if noise is not None else self._noise(x.shape, generator).to(x)
                for s in steps
            ]
            moved = torch.cat([x + d for d in deltas])
            labels = y.repeat(len(steps))
            a_moved = self.preprocess(
                explain_rows(explain, model, moved, labels, self.batch_size).expand_as(moved)
            )
            outputs, inner = self._at_moved(model, moved, predicts)
            for k, step in enumerate(steps):
                rows = slice(k * n, (k + 1) * n)
                out_moved = None if outputs is None else outputs[rows]
                inner_moved = None if inner is None else inner[rows]
                score = self._objective(
                    x,
                    moved[rows],
                    a.expand_as(x),
                    a_moved[rows],
                    clean_output,
                    out_moved,
                    inner_moved,
                )
                if self.return_nan_when_prediction_changes:
                    changed = out_moved.argmax(dim=1) != clean_output.argmax(dim=1)
                    score = torch.where(changed, torch.nan, score)
                values[:, step] = score.double().cpu()
        return self._result(self._reduce(values), values)

    def _objective(self, x, x_moved, a, a_moved, out, out_moved, inner_moved) -> torch.Tensor:
        """Per sample, the score of one perturbation: ``out`` / ``out_moved`` the model's
        outputs (None unless ``uses_outputs``), ``inner_moved`` what ``_at_moved`` read
        inside the model (None but for the representation stability)."""
        raise NotImplementedError

    def _at_moved(
        self, model: nn.Module, moved: torch.Tensor, predicts: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The model's outputs at the moved inputs (when ``predicts``) and what the objective
        reads inside the model there (nothing here), ``batch_size`` rows per pass."""
        if not predicts:
            return None, None
        return predict_in_chunks(model, moved, self.softmax, self.batch_size), None

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        return max_over_kept(values)


def max_over_kept(values: torch.Tensor) -> torch.Tensor:
    """Per row, the maximum over the perturbations that kept the prediction (NaN entries
    left out; NaN where none did)."""
    finite = torch.where(torch.isnan(values), -torch.inf, values)
    best = finite.amax(dim=1)
    return torch.where(torch.isinf(best), torch.nan, best)


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(flat(t).double(), dim=1)


class _Sensitivity(_Robustness):
    def __init__(
        self,
        method: Any = None,
        *,
        lower_bound: float = 0.2,
        upper_bound: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(method, **options)
        if upper_bound is not None and upper_bound <= lower_bound:
            raise OptionError(f"upper_bound ({upper_bound}) must exceed lower_bound")
        self.lower_bound = float(lower_bound)
        self.upper_bound = None if upper_bound is None else float(upper_bound)

    def _noise(self, shape, generator):
        low, high = (
            (-self.lower_bound, self.lower_bound)
            if self.upper_bound is None
            else (self.lower_bound, self.upper_bound)
        )
        return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low

    def _objective(self, x, x_moved, a, a_moved, out, out_moved, inner_moved):
        return _norm(a - a_moved) / _norm(a)


class MaxSensitivity(_Sensitivity):
    """The largest ``||a(x) - a(x')|| / ||a(x)||`` over ``nr_samples`` inputs ``x'`` with
    uniform noise in ``[-lower_bound, lower_bound]`` on every feature (Yeh et al. 2019, *On
    the (in)fidelity and sensitivity of explanations*, NeurIPS). Lower is better."""

    name = "max_sensitivity"
    paper = "Yeh et al. 2019, NeurIPS, arXiv:1901.09392"
    default_normalise = False


class AvgSensitivity(_Sensitivity):
    """The mean of ``||a(x) - a(x')|| / ||a(x)||`` over ``nr_samples`` noisy inputs (Yeh et
    al. 2019, NeurIPS). Lower is better."""

    name = "avg_sensitivity"
    paper = "Yeh et al. 2019, NeurIPS, arXiv:1901.09392"
    default_normalise = False

    def _reduce(self, values):
        return torch.nanmean(values, dim=1)


class LocalLipschitzEstimate(_Robustness):
    """The largest ``||a(x) - a(x')|| / (||x - x'|| + 1e-10)`` over ``nr_samples`` inputs with
    Gaussian noise N(``perturb_mean``, ``perturb_std``) (Alvarez-Melis & Jaakkola 2018, *On
    the robustness of interpretability methods*, arXiv:1806.08049). Lower is better."""

    name = "local_lipschitz_estimate"
    paper = "Alvarez-Melis & Jaakkola 2018, arXiv:1806.08049"
    default_softmax = True

    def __init__(
        self,
        method: Any = None,
        *,
        perturb_mean: float = 0.0,
        perturb_std: float = 0.1,
        **options: Any,
    ) -> None:
        super().__init__(method, **options)
        self.perturb_mean, self.perturb_std = float(perturb_mean), float(perturb_std)

    def _noise(self, shape, generator):
        noise = torch.randn(shape, generator=generator, dtype=torch.float64)
        return noise * self.perturb_std + self.perturb_mean

    def _objective(self, x, x_moved, a, a_moved, out, out_moved, inner_moved):
        return _norm(a - a_moved) / (_norm(x - x_moved) + 1e-10)


class _RelativeStability(_Robustness):
    def __init__(
        self,
        method: Any = None,
        *,
        eps_min: float = 1e-6,
        lower_bound: float = 0.02,
        upper_bound: float = 0.2,
        return_nan_when_prediction_changes: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(
            method, return_nan_when_prediction_changes=return_nan_when_prediction_changes, **options
        )
        self.eps_min = float(eps_min)
        self.lower_bound, self.upper_bound = float(lower_bound), float(upper_bound)

    def _noise(self, shape, generator):
        draw = torch.rand(shape, generator=generator, dtype=torch.float64)
        return draw * (self.upper_bound - self.lower_bound) + self.lower_bound

    def _relative_change(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return _norm((before - after) / (before + (before == 0) * self.eps_min))

    def _guard(self, denominator: torch.Tensor) -> torch.Tensor:
        return denominator + (denominator == 0) * self.eps_min


class RelativeInputStability(_RelativeStability):
    """The largest relative change of the explanation over the relative change of the input,
    ``||(a - a') / a|| / ||(x - x') / x||``, over noisy inputs whose prediction is unchanged
    (Agarwal et al. 2022, *Rethinking stability for attribution-based explanations*,
    arXiv:2203.06877). Lower is better."""

    name = "relative_input_stability"
    paper = "Agarwal et al. 2022, arXiv:2203.06877"
    default_normalise = False

    def _objective(self, x, x_moved, a, a_moved, out, out_moved, inner_moved):
        return self._relative_change(a, a_moved) / self._guard(self._relative_change(x, x_moved))


class RelativeOutputStability(_RelativeStability):
    """The largest relative change of the explanation over the change of the model's output,
    ``||(a - a') / a|| / ||h(x) - h(x')||``, over noisy inputs whose prediction is unchanged
    (Agarwal et al. 2022, arXiv:2203.06877). Lower is better."""

    name = "relative_output_stability"
    paper = "Agarwal et al. 2022, arXiv:2203.06877"
    default_normalise = False
    uses_outputs = True

    def _objective(self, x, x_moved, a, a_moved, out, out_moved, inner_moved):
        return self._relative_change(a, a_moved) / self._guard(_norm(out - out_moved))


class Representations:
    """The outputs of a model's inner layers, flattened and concatenated in the order they run
    (Quantus's ``get_hidden_representations``): every named module except containers of the
    model's own class and ``nn.Sequential``, or those chosen by name or index in that list.
    The hooks go on a copy of the model, never on the user's.

    :meth:`relative_change` never holds the concatenation: each hook folds its layer's part of
    the norm into a per-row sum as the pass goes, so one pass costs a forward pass and one
    layer's float64 copy, whatever the number of layers and rows.
    """

    def __init__(
        self,
        model: nn.Module,
        layer_names: Sequence[str] | None = None,
        layer_indices: Sequence[int] | None = None,
    ) -> None:
        self.copy = copy.deepcopy(model).eval()
        layers = [
            (name, module)
            for name, module in self.copy.named_modules()
            if not isinstance(module, type(self.copy) | nn.Sequential)
        ]
        # negative indices count from the end of this list (Quantus counts them over every
        # named module, containers included, so -1 can name no layer of the list)
        indices = {i if i >= 0 else len(layers) + i for i in (layer_indices or [])}
        names = set(layer_names or [])
        chosen = [
            module
            for index, (name, module) in enumerate(layers)
            if (not names and not indices) or index in indices or name in names
        ]
        if not chosen:
            raise InputError("no layer chosen for the representations: check layer_names")
        self._outputs: list[torch.Tensor] = []
        # set by relative_change: per clean layer (n, F_l) in float64 and the inverse of
        # its guard L + (L == 0) eps_min; the per-row sum of squares
        self._against: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._squares: torch.Tensor | None = None
        self._seen = 0
        for module in chosen:
            module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        rows = output.detach().reshape(output.shape[0], -1)
        if self._against is None:
            self._outputs.append(rows.double())
            return
        # the k-th hooked output of this pass meets the k-th of the clean pass (same model,
        # same order); row r of the pass is a noisy copy of sample r mod n
        if self._seen >= len(self._against):
            raise InputError(self._other_layers_message(self._seen + 1))
        before, scale = self._against[self._seen]
        self._seen += 1
        # (L' - L) / guard, in place on the one float64 copy of the layer (the square
        # forgets the sign); the guard's inverse was taken once on the clean pass
        relative = rows.to(torch.float64, copy=True).reshape(-1, *before.shape)
        relative.sub_(before).mul_(scale)
        assert self._squares is not None
        self._squares += torch.linalg.vector_norm(relative, dim=-1).square().reshape(-1)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each hooked layer's output at ``x``, (N, F_l) in float64, in the order they run."""
        self._outputs, self._against = [], None
        self._forward(x)
        layers, self._outputs = self._outputs, []
        return layers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The representations at ``x``, (N, sum of F_l) in float64."""
        return torch.cat(self.layers(x), dim=1)

    def relative_change(
        self, clean: list[torch.Tensor], moved: torch.Tensor, eps_min: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``||(L(x) - L(x')) / (L(x) + (L(x) == 0) eps_min)||`` per row of ``moved`` (rows
        ``k n + i`` noisy copies of sample ``i`` of the ``n`` in ``clean``, from
        :meth:`layers`) and the model's (rows, classes) output, one pass."""
        n = clean[0].shape[0]
        if moved.shape[0] % n:
            raise AssertionError("moved must hold whole copies of the clean batch")
        self._against = [(c, 1 / (c + (c == 0) * eps_min)) for c in clean]
        self._seen = 0
        self._squares = torch.zeros(moved.shape[0], dtype=torch.float64, device=moved.device)
        try:
            output = self._forward(moved)
            if self._seen != len(clean):
                raise InputError(self._other_layers_message(self._seen))
            return self._squares.sqrt(), output
        finally:
            self._against, self._squares = None, None

    def _other_layers_message(self, seen: int) -> str:
        assert self._against is not None
        return (
            f"the model ran {seen} hooked layers on the noisy inputs against "
            f"{len(self._against)} on the clean ones: their representations cannot be compared"
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            output = self.copy(x)
        if not isinstance(output, torch.Tensor):
            raise InputError(f"the model must return a tensor (N, classes), got {type(output)}")
        return output.reshape(output.shape[0], -1)


def translate(x: torch.Tensor, shift: int, fill: torch.Tensor) -> torch.Tensor:
    """``x`` (N, ..., W) moved ``shift`` columns along its last axis (right when positive),
    the uncovered columns set to ``fill`` (one value per sample)."""
    width = x.shape[-1]
    out = fill.reshape(-1, *[1] * (x.ndim - 1)).expand_as(x).clone()
    if abs(shift) >= width:
        return out
    if shift >= 0:
        out[..., shift:] = x[..., : width - shift]
    else:
        out[..., : width + shift] = x[..., -shift:]
    return out


class RelativeRepresentationStability(_RelativeStability):
    """The largest relative change of the explanation over the relative change of the model's
    inner representation ``L``, ``||(a - a') / a|| / ||(L(x) - L(x')) / L(x)||``, over noisy
    inputs whose prediction is unchanged (Agarwal et al. 2022, arXiv:2203.06877). ``L``: the
    outputs of every inner layer, or of ``layer_names`` / ``layer_indices``
    (:class:`Representations`). Lower is better."""

    name = "relative_representation_stability"
    paper = "Agarwal et al. 2022, arXiv:2203.06877"
    default_normalise = False

    def __init__(
        self,
        method: Any = None,
        *,
        layer_names: Sequence[str] | None = None,
        layer_indices: Sequence[int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(method, **options)
        self.layer_names = None if layer_names is None else list(layer_names)
        self.layer_indices = None if layer_indices is None else list(layer_indices)
        self._inner: Representations | None = None

    def _evaluate(self, model, x, y, a, **inputs: Any) -> MetricResult:
        self._inner = Representations(model, self.layer_names, self.layer_indices)
        self._clean = self._inner.layers(x)
        try:
            return super()._evaluate(model, x, y, a, **inputs)
        finally:
            self._inner, self._clean = None, None

    def _at_moved(self, model, moved, predicts):
        # One pass of the hooked copy gives the representations' change (folded layer by
        # layer, never all layers of all rows at once) and the outputs alike.
        assert self._inner is not None and self._clean is not None
        n = self._clean[0].shape[0]
        rows = max(n, self.batch_size // n * n)  # whole copies of the batch per pass
        parts = [
            self._inner.relative_change(self._clean, moved[s : s + rows], self.eps_min)
            for s in range(0, moved.shape[0], rows)
        ]
        change = torch.cat([p[0] for p in parts])
        if not predicts:
            return None, change
        outputs = torch.cat([p[1] for p in parts])
        return (torch.softmax(outputs, dim=1) if self.softmax else outputs), change

    def _objective(self, x, x_moved, a, a_moved, out, out_moved, inner_moved):
        # inner_moved: the representations' relative change per row (see _at_moved)
        return self._relative_change(a, a_moved) / self._guard(inner_moved)


class Continuity(Metric):
    """Explanation continuity (Montavon et al. 2018, *Methods for interpreting and
    understanding deep neural networks*, Digital Signal Processing 73): the largest
    ``||a(x) - a(x')||_1 / (||x - x'||_2 + 1e-9)`` over ``nr_steps`` horizontal translations
    ``x'`` of the input (step ``(2 W + 1) // nr_steps`` pixels, starting at ``-W`` + a step,
    uncovered columns set to the sample's minimum, Quantus's "black"). Lower is better.

    As Quantus 0.6.0, the metric explains ``x`` itself (given attributions are not used) and
    ``return_nan_when_prediction_changes`` compares the translated input's prediction with
    ``y``. ``curves``: the ratio per translation.
    """

    name = "continuity"
    family = "robustness"
    paper = "Montavon et al. 2018, Digital Signal Processing 73"
    higher_is_better = False
    default_abs = True
    inputs = ("method",)
    explains = True

    def __init__(
        self,
        method: Any = None,
        *,
        nr_steps: int = 28,
        return_nan_when_prediction_changes: bool = False,
        method_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.method = method
        self.method_options = dict(method_options or {})
        self.nr_steps = positive_int(nr_steps, "nr_steps")
        self.return_nan_when_prediction_changes = bool(return_nan_when_prediction_changes)

    def _evaluate(self, model, x, y, a, method: Any = None) -> MetricResult:
        if x.ndim < 3:
            raise InputError(f"continuity translates images (N, C, H, W), got {tuple(x.shape)}")
        explain = explainer(method if method is not None else self.method, self.method_options)
        width = x.shape[-1]
        step = (2 * width + 1) // self.nr_steps
        shifts = [-width + step * (k + 1) for k in range(self.nr_steps)]
        fill = flat(x).amin(dim=1)
        n = x.shape[0]
        moved = torch.cat([translate(x, shift, fill) for shift in shifts])
        labels = y.repeat(len(shifts))
        a_clean = self.preprocess(explain_rows(explain, model, x, y, self.batch_size).expand_as(x))
        a_moved = self.preprocess(
            explain_rows(explain, model, moved, labels, self.batch_size).expand_as(moved)
        )
        change = torch.linalg.vector_norm(
            flat(a_moved).double() - flat(a_clean).double().repeat(len(shifts), 1), ord=1, dim=1
        )
        distance = _norm(moved - x.repeat(len(shifts), *[1] * (x.ndim - 1)))
        ratio = (change / (distance + 1e-9)).reshape(len(shifts), n).T
        if self.return_nan_when_prediction_changes:
            predicted = predict_in_chunks(model, moved, self.softmax, self.batch_size).argmax(1)
            changed = (predicted != labels).reshape(len(shifts), n).T
            ratio = torch.where(changed, torch.nan, ratio)
        return self._result(max_over_kept(ratio), ratio)


METRIC_CLASSES: list[type[Metric]] = [
    MaxSensitivity,
    AvgSensitivity,
    LocalLipschitzEstimate,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
    Continuity,
]
