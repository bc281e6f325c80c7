"""The metric base class of innspect's evaluation catalogue (Quantus's metrics, in torch).

Every metric is a class configured once (``PixelFlipping(features_in_step=4)``) and called as
``metric(model, x, y, attributions)``: tensors in, any input rank, on the model's device and in
its dtype. It returns a :class:`MetricResult`: one score per sample and, where the metric has
one, the curve it was computed from.

The perturbed passes are where the time goes, so they are built here once: a perturbation is
described by an integer *step* per input feature (the step at which that feature changes),
and :func:`perturbed_scores` stacks many (sample, step) rows into one forward pass of up to
``batch_size`` rows instead of one model round trip per step.

Attributions are preprocessed as Quantus 0.6.0 does (``normalise`` by the maximum absolute
value, then ``abs``), except that the maximum is taken per sample (Quantus divides the whole
batch by one maximum, so a sample's score depends on the other samples in its batch).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from innspect.errors import InputError, OptionError
from innspect.evaluation.explainers import explain_rows, explainer
from innspect.graph.lock import GRAPH_LOCK
from innspect.graph.views import eval_view
from innspect.util.tensors import model_device_dtype

BASELINES = ("black", "white", "mean", "uniform")


@dataclass
class MetricResult:
    """The outcome of one metric on one batch.

    Attributes
    ----------
    name
        The metric's name (snake case, as in ``METRICS``).
    scores
        One score per sample, float64 on the CPU (NaN where the metric is undefined for the
        sample, e.g. an empty mask).
    curves
        (samples, points) float64, for metrics that compute a curve (pixel flipping, region
        perturbation, selectivity, IROF, monotonicity); else None.
    higher_is_better
        The direction of ``scores`` (None where neither is better, e.g. effective complexity).
    extras
        Other per-sample values a metric computes on the way (e.g. completeness' gap).
    labels
        Names of the curve's points where they are not steps (MPRT: the randomised layers).
    """

    name: str
    scores: torch.Tensor
    curves: torch.Tensor | None = None
    higher_is_better: bool | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: list[str] | None = None

    def mean(self) -> float:
        """Mean score over the samples where it is defined (NaN ignored)."""
        return float(torch.nanmean(self.scores))


class Metric:
    """Base class: subclasses set the class attributes and implement ``_evaluate``.

    Parameters (shared by every metric)
    ----------
    abs
        Take the absolute value of the attributions (after normalising).
    normalise
        Divide each sample's attributions by their largest absolute value.
    softmax
        Score the model's softmax probabilities instead of its outputs (logits).
    batch_size
        Rows per forward pass: perturbed copies of several samples and steps share one pass.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    higher_is_better: ClassVar[bool | None] = None
    needs_model: ClassVar[bool] = True
    needs_mask: ClassVar[bool] = False
    # robustness and randomisation metrics explain x themselves when not given attributions
    explains: ClassVar[bool] = False
    # keyword inputs of a call besides (model, x, y, attributions), e.g. "mask"
    inputs: ClassVar[tuple[str, ...]] = ("generator",)
    # Quantus 0.6.0's defaults of the shared options, per metric.
    default_abs: ClassVar[bool] = False
    default_normalise: ClassVar[bool] = True
    default_softmax: ClassVar[bool] = False

    def __init__(
        self,
        *,
        abs: bool | None = None,  # noqa: A002 (Quantus's name)
        normalise: bool | None = None,
        softmax: bool | None = None,
        batch_size: int = 256,
    ) -> None:
        self.abs = self.default_abs if abs is None else bool(abs)
        self.normalise = self.default_normalise if normalise is None else bool(normalise)
        self.softmax = self.default_softmax if softmax is None else bool(softmax)
        self.batch_size = positive_int(batch_size, "batch_size")

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"

    def __call__(
        self,
        model: nn.Module | None,
        x: torch.Tensor,
        y: Any = None,
        attributions: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MetricResult:
        """Score ``attributions`` of ``model`` at ``x`` for the classes ``y``.

        Parameters
        ----------
        model
            A classifier returning (N, classes) scores (None for metrics that need no model:
            localisation and complexity).
        x
            The inputs (N, ...), any rank.
        y
            The explained class: an int, or one per sample (N,).
        attributions
            The attributions of ``x``: its shape, or broadcastable to it (e.g. (N, 1, H, W) or
            (N, H, W) for images (N, C, H, W)).
        kwargs
            Metric-specific inputs, e.g. ``mask=`` for localisation metrics.
        """
        if self.needs_model and not isinstance(model, nn.Module):
            raise InputError(
                f"{self.name} needs the model (an nn.Module), got {type(model).__name__}"
            )
        device, dtype = (None, None) if model is None else model_device_dtype(model)
        x = as_batch(x, "x", device, dtype)
        labels = None if y is None else as_labels(y, x.shape[0], x.device)
        if self.needs_model and labels is None:
            raise InputError(f"{self.name} needs y: the explained class, one int or one per sample")
        if attributions is None:
            if not self.explains:
                raise InputError(f"{self.name} needs attributions (a tensor shaped like x)")
            method = kwargs.get("method", getattr(self, "method", None))
            explain = explainer(method, getattr(self, "method_options", None))
            attributions = explain_rows(explain, model, x, labels, self.batch_size)
        a = check_attributions(attributions, x)
        unknown = sorted(set(kwargs) - set(self.inputs))
        if unknown:
            accepted = ", ".join(f"{k}=" for k in self.inputs) or "none"
            raise InputError(f"{self.name} takes no input {unknown[0]}= (it takes: {accepted})")
        a = self.preprocess(a)
        result = self._evaluate(model, x, labels, a, **kwargs)
        result.higher_is_better = self.higher_is_better
        return result

    def preprocess(self, a: torch.Tensor) -> torch.Tensor:
        """Normalise (per sample, by the largest absolute value) and take abs, as configured."""
        if self.normalise:
            a = normalise_by_max(a)
        if self.abs:
            a = a.abs()
        return a

    def _evaluate(
        self,
        model: nn.Module | None,
        x: torch.Tensor,
        y: torch.Tensor | None,
        a: torch.Tensor,
        **kwargs: Any,
    ) -> MetricResult:
        raise NotImplementedError

    def _result(
        self, scores: torch.Tensor, curves: torch.Tensor | None = None, **extras: torch.Tensor
    ) -> MetricResult:
        as_cpu = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
        return MetricResult(
            self.name,
            as_cpu(scores),
            None if curves is None else as_cpu(curves),
            self.higher_is_better,
            {k: as_cpu(v) for k, v in extras.items()},
        )


# -- inputs ------------------------------------------------------------------------------------
def positive_int(value: Any, label: str) -> int:
    """``value`` as an int >= 1, or an OptionError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{label} must be an int >= 1, got {value!r}")
    return value


def as_batch(
    x: Any, label: str, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``x`` as a floating tensor (N, ...) on ``device`` in ``dtype`` (when given)."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InputError(
                f"{label} must be a tensor (N, ...), got {type(x).__name__}"
            ) from error
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(f"{label} must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    if not (
        x.is_floating_point() or x.dtype in (torch.bool, torch.uint8, torch.int32, torch.int64)
    ):
        raise InputError(f"{label} must be numeric, got {x.dtype}")
    target = dtype if dtype is not None else (x.dtype if x.is_floating_point() else torch.float32)
    x = x.detach().to(device=device if device is not None else x.device, dtype=target)
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{label} holds NaN or infinite values")
    return x


def as_labels(y: Any, n: int, device: torch.device) -> torch.Tensor:
    """The explained class per sample as a long tensor (n,)."""
    labels = torch.as_tensor(y).to(device)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"y must hold class indices (integers), got {labels.dtype}")
    labels = labels.reshape(-1).long()
    if labels.numel() == 1:
        labels = labels.expand(n)
    if labels.numel() != n:
        raise InputError(f"y must be one class or one per sample ({n}), got {labels.numel()}")
    return labels


def check_attributions(attributions: Any, x: torch.Tensor) -> torch.Tensor:
    """Attributions as a float tensor with x's rank, broadcastable to x's shape.

    Accepted: x's shape; x's rank with size-1 axes (one value for all channels); or one
    axis fewer, missing the channel axis (N, H, W) for x (N, C, H, W).
    """
    a = attributions
    if not isinstance(a, torch.Tensor):
        try:
            a = torch.as_tensor(a)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InputError(f"attributions must be a tensor, got {type(a).__name__}") from error
    a = a.detach().to(x.device)
    a = a.to(x.dtype if x.is_floating_point() else torch.float32)
    if a.ndim == x.ndim - 1 and a.ndim >= 2 and tuple(a.shape[1:]) == tuple(x.shape[2:]):
        a = a.unsqueeze(1)
    shape_ok = a.ndim == x.ndim and all(
        s in (1, t) for s, t in zip(a.shape[1:], x.shape[1:], strict=True)
    )
    if not shape_ok or a.shape[0] != x.shape[0]:
        raise InputError(
            f"attributions of shape {tuple(attributions.shape)} do not fit inputs of shape "
            f"{tuple(x.shape)}: give x's shape, or x's with size-1 axes (e.g. one channel)"
        )
    if not bool(torch.isfinite(a).all()):
        raise InputError(
            "attributions hold NaN or infinite values: check the method's output (e.g. an "
            "epsilon too small) before evaluating it"
        )
    return a


def check_mask(mask: Any, a: torch.Tensor, label: str = "mask") -> torch.Tensor:
    """A boolean mask (N, ...) broadcast to the attributions' shape (rank as for attributions)."""
    if mask is None:
        raise InputError(f"this metric needs {label}=: a boolean mask per sample, shaped like x")
    m = torch.as_tensor(mask).to(a.device)
    if m.ndim == a.ndim - 1 and m.ndim >= 2:
        m = m.unsqueeze(1)
    try:
        if m.ndim != a.ndim or m.shape[0] != a.shape[0]:
            raise RuntimeError
        shape = torch.broadcast_shapes(m.shape, a.shape)
    except RuntimeError:
        raise InputError(
            f"{label} of shape {tuple(torch.as_tensor(mask).shape)} does not fit attributions of "
            f"shape {tuple(a.shape)}: give one mask per sample with the input's shape (a size-1 "
            "channel axis is broadcast)"
        ) from None
    return m.bool().expand(shape)


def normalise_by_max(a: torch.Tensor) -> torch.Tensor:
    """Divide each sample by its largest absolute value (samples that are all 0 unchanged)."""
    peak = a.reshape(a.shape[0], -1).abs().amax(dim=1)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return a / peak.reshape(-1, *([1] * (a.ndim - 1)))


def flat(a: torch.Tensor) -> torch.Tensor:
    """(N, features) view of a batch."""
    return a.reshape(a.shape[0], -1)


# -- the model ---------------------------------------------------------------------------------
def predict(model: nn.Module, x: torch.Tensor, softmax: bool) -> torch.Tensor:
    """The model's (N, classes) output at ``x`` (softmax applied if asked), without gradients,
    through the eval view so that the user's module flags are never written."""
    with torch.no_grad(), GRAPH_LOCK.shared():
        output = eval_view(model)(x)
    if not isinstance(output, torch.Tensor):
        raise InputError(f"the model must return a tensor (N, classes), got {type(output)}")
    output = output.reshape(output.shape[0], -1)
    return torch.softmax(output, dim=1) if softmax else output


def predict_in_chunks(
    model: nn.Module, x: torch.Tensor, softmax: bool, batch_size: int
) -> torch.Tensor:
    """``predict`` at ``x``, ``batch_size`` rows per pass."""
    return torch.cat(
        [predict(model, x[s : s + batch_size], softmax) for s in range(0, x.shape[0], batch_size)]
    )


def class_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, softmax: bool, batch_size: int
) -> torch.Tensor:
    """The output at class ``y[i]`` of each sample, ``batch_size`` rows per pass."""
    out = predict_in_chunks(model, x, softmax, batch_size)
    _check_labels(y, out.shape[1])
    return out.gather(1, y[:, None])[:, 0]


def _check_labels(y: torch.Tensor, classes: int) -> None:
    if bool(((y < 0) | (y >= classes)).any()):
        raise InputError(f"y holds a class outside 0..{classes - 1} (the model has {classes})")


def row_scores(
    model: nn.Module,
    make_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n: int,
    steps: int,
    y: torch.Tensor,
    *,
    softmax: bool,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Scores of ``n * steps`` perturbed inputs, ``batch_size`` rows per forward pass.

    ``make_rows(sample, step)`` builds the inputs of the given (sample, step) pairs (two long
    tensors of equal length); the score of a row is the model's output at class
    ``y[sample]``. Rows of different samples and steps share a pass, so a metric costs
    ``ceil(n * steps / batch_size)`` passes instead of one per step. Returns (n, steps).
    """
    scores = torch.empty(n * steps, dtype=torch.float64, device=device)
    for start in range(0, n * steps, batch_size):
        index = torch.arange(start, min(start + batch_size, n * steps), device=device)
        sample, step = index // steps, index % steps
        out = predict(model, make_rows(sample, step), softmax)
        _check_labels(y[sample], out.shape[1])
        scores[index] = out.gather(1, y[sample, None])[:, 0].double()
    return scores.reshape(n, steps)


def perturbed_scores(
    model: nn.Module,
    source: torch.Tensor,
    replacement: torch.Tensor,
    step_of: torch.Tensor,
    thresholds: Sequence[int] | torch.Tensor,
    y: torch.Tensor,
    *,
    softmax: bool,
    batch_size: int,
    cumulative: bool = True,
) -> torch.Tensor:
    """Scores of many perturbed copies of each sample (``row_scores``).

    Row (i, t) is ``source[i]`` with the features whose ``step_of`` is below ``thresholds[t]``
    (``cumulative``) or equal to it (not cumulative) taken from ``replacement[i]``.
    ``source``, ``replacement`` and ``step_of`` are (N, ...) with x's shape. Returns (N, T).
    """
    thresholds = torch.as_tensor(thresholds, device=source.device).reshape(-1)
    tail = [1] * (source.ndim - 1)

    def make_rows(sample: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        limit = thresholds[step].reshape(-1, *tail)
        chosen = step_of[sample] < limit if cumulative else step_of[sample] == limit
        return torch.where(chosen, replacement[sample], source[sample])

    return row_scores(
        model,
        make_rows,
        source.shape[0],
        thresholds.numel(),
        y,
        softmax=softmax,
        batch_size=batch_size,
        device=source.device,
    )


def baseline(x: torch.Tensor, value: Any, generator: torch.Generator | None = None) -> torch.Tensor:
    """The replacement values, x's shape: a number, a tensor broadcastable to x, or by name
    per sample: "black" (its minimum), "white" (maximum), "mean", "uniform" (one U(0, 1)
    draw per sample)."""
    if isinstance(value, bool):
        raise OptionError(f"perturb_baseline must be a number, tensor or name, got {value!r}")
    if isinstance(value, int | float):
        return torch.full_like(x, float(value))
    if isinstance(value, torch.Tensor):
        try:
            return value.to(x).expand_as(x).clone()
        except RuntimeError:
            raise OptionError(
                f"a baseline tensor of shape {tuple(value.shape)} does not fit inputs of "
                f"shape {tuple(x.shape)}"
            ) from None
    if value not in BASELINES:
        raise OptionError(
            f"perturb_baseline must be a number, a tensor or one of {BASELINES}, got {value!r}"
        )
    rows = flat(x)
    if value == "black":
        per_sample = rows.amin(dim=1)
    elif value == "white":
        per_sample = rows.amax(dim=1)
    elif value == "mean":
        per_sample = rows.mean(dim=1)
    else:
        per_sample = torch.rand(x.shape[0], generator=generator, dtype=torch.float64).to(x)
    return per_sample.reshape(-1, *([1] * (x.ndim - 1))).expand_as(x).clone()


def ranks_descending(values: torch.Tensor) -> torch.Tensor:
    """Rank of each feature within its row, 0 = largest; ties keep feature order."""
    order = torch.argsort(-values, dim=1, stable=True)
    return inverse_permutation(order)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """Per row, the position of each index in ``order``."""
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def trapezoid(curves: torch.Tensor) -> torch.Tensor:
    """Area under each row's curve by the trapezoidal rule, unit spacing (numpy.trapz)."""
    if curves.shape[1] < 2:
        return torch.zeros(curves.shape[0], dtype=curves.dtype, device=curves.device)
    return torch.trapezoid(curves, dx=1.0, dim=1)


def steps_needed(features: int, features_in_step: int, label: str = "features_in_step") -> int:
    """Number of steps of ``features_in_step`` features to cover ``features``."""
    if features_in_step > features:
        raise OptionError(f"{label} ({features_in_step}) exceeds the input's {features} features")
    return math.ceil(features / features_in_step)


# -- the catalogue -----------------------------------------------------------------------------
METRICS: dict[str, type[Metric]] = {}


def register_metrics(classes: Sequence[type[Metric]]) -> None:
    """Make metric classes available by their ``name``."""
    for cls in classes:
        if cls.name in METRICS and METRICS[cls.name] is not cls:
            raise ValueError(f"metric name {cls.name!r} registered twice")
        METRICS[cls.name] = cls


def metric_class(name: str) -> type[Metric]:
    """The metric class called ``name`` (snake case); an OptionError suggests close names."""
    if name in METRICS:
        return METRICS[name]
    close = difflib.get_close_matches(str(name), list(METRICS), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise OptionError(
        f"no metric named {name!r}{hint or '.'} Known metrics: {', '.join(sorted(METRICS))}"
    )


def create_metric(name: str, **options: Any) -> Metric:
    """The metric ``name`` configured with ``options`` (Quantus's parameter names)."""
    cls = metric_class(name)
    try:
        return cls(**options)
    except TypeError as error:
        raise OptionError(f"{name}: {error}") from None
