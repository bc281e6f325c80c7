"""Methods averaged over points: integrated gradients, SmoothGrad (and, in ``deeplift.py``,
DeepLiftShap) as one wrapper around any method computed by a reverse walk.

Zennit splits an attribution into an *attributor* (how points are chosen and combined) and
a *composite* (the rules); Captum's ``NoiseTunnel`` averages any attribution method. Here
``Averaged`` is the attributor: it resolves the call's selection once, on the clean input,
makes ``points`` (a set of rows per sample, each with a weight), and hands every batch of
rows to the inner analyzer's ``explain_feed`` with the selection for those rows. The inner
method is a name (``"gradient"`` by default, ``"lrp.epsilon"``, ``"guided_backprop"``...);
with the gradient, ``integrated_gradients`` and ``smoothgrad`` are the classic methods.

Points go through the model in batches of ``batch_size`` rows, never one sample at a time.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from innspect.analyzers.api import Analyzer, Explanation, analyzer_parameters, floating_value
from innspect.analyzers.baselines import named_baseline
from innspect.analyzers.registry import analyzer_class
from innspect.analyzers.reverse import ReverseAnalyzer
from innspect.engine.inputs import ModelInputs
from innspect.errors import OptionError
from innspect.util.checks import MAX_POINTS, check_flag, check_int, check_number
from innspect.util.progress import progress


@dataclass
class Points:
    """The points of one call, for one attributed input or node.

    Attributes
    ----------
    count
        Points per sample.
    make
        ``make(samples, points)``: the value fed for rows whose sample and point indices
        are given (None: the input itself, e.g. DeepLiftShap varies references instead).
    weights
        One weight per point (None: the plain mean, computed as a sum divided by ``count``).
    options
        ``options(samples, points)``: extra arguments of the inner ``explain_feed`` for
        those rows (DeepLIFT's references), or None.
    by_sample
        Row order: False (default), row r is point ``r // N`` of sample ``r % N``; True,
        sample ``r // count``, point ``r % count`` (Captum's DeepLiftShap pairs).
    """

    count: int
    make: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    weights: torch.Tensor | None = None
    options: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]] | None = None
    by_sample: bool = False


class Averaged(Analyzer):
    """A method (``inner``) averaged over points; the base of integrated gradients, SmoothGrad
    and DeepLiftShap.

    Parameters
    ----------
    inner
        The averaged method: the name of any analyzer computed by a reverse walk (gradient,
        input_t_gradient, guided_backprop, deconvnet, every ``lrp.*``, ``deep_taylor``,
        ``deep_lift``, ``pattern.*``). Options this wrapper does not take go to it
        (``epsilon=``, ``postprocess=``, the ``reverse_*`` options...).
    batch_size
        Rows (points of samples) pushed through the model at once.
    verbose
        Show a progress bar.
    postprocess
        None, "abs" or "square": the inner method's postprocess (the gradient's), applied
        at each point before the average (iNNvestigate).
    """

    default_inner = "gradient"
    # Options this class does not take go to the inner method (which names them if wrong).
    forwards_options_to_inner = True

    def __init__(
        self,
        model: nn.Module,
        *,
        inner: str | None = None,
        neuron_selection_mode: str = "max_activation",
        target: Any = None,
        output: Any = None,
        attribute_to: Any = None,
        attribute_sum_axis: int | None = None,
        batch_size: int = 64,
        verbose: bool = False,
        allow_nonfinite: bool = False,
        postprocess: str | None = None,
        **inner_options: Any,
    ) -> None:
        if "subanalyzer" in inner_options:
            raise TypeError(
                f"{self.name} builds its inner analyzer itself (inner=...); iNNvestigate's "
                "subanalyzer= (used by its own save/load) is not taken"
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
        self.inner_name = self.default_inner if inner is None else inner
        if postprocess is not None:  # iNNvestigate's option: applied to each point's result
            inner_options["postprocess"] = postprocess
        self._inner = self._make_inner(model, output, attribute_to, inner_options)

    def _make_inner(
        self, model: nn.Module, output: Any, attribute_to: Any, options: dict[str, Any]
    ) -> ReverseAnalyzer:
        name = self.inner_name
        try:
            cls = analyzer_class(name) if isinstance(name, str) else None
        except KeyError:
            cls = None
        if cls is None or not issubclass(cls, ReverseAnalyzer):
            raise OptionError(
                f"{self.name}: inner={name!r} is not a method computed by a reverse walk; "
                "give gradient, input_t_gradient, guided_backprop, deconvnet, an lrp.* "
                "method, deep_taylor, deep_lift or a pattern.* method"
            )
        unknown = [key for key in options if key not in analyzer_parameters(cls)[0]]
        if unknown:
            valid = analyzer_parameters(type(self))[0] | analyzer_parameters(cls)[0]
            shared = analyzer_parameters(Analyzer)[0]
            close = difflib.get_close_matches(unknown[0], sorted(valid), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            listed = ", ".join(sorted(v for v in valid - shared if not v.startswith("reverse_")))
            raise OptionError(
                f"{self.name}: '{unknown[0]}' is not an option of {self.name} nor of its "
                f"inner method {cls.name}; {hint}valid options: {listed}"
            )
        # Every point explains the selection resolved here, on the clean input; the inner
        # analyzer's own mode is never used. Non-finite values are checked on the result.
        return cls(model, output=output, attribute_to=attribute_to, allow_nonfinite=True, **options)

    @property
    def inner(self) -> ReverseAnalyzer:
        """The analyzer averaged over the points."""
        return self._inner

    def fit(self, *args: Any, **kwargs: Any) -> None:
        """Fit the inner analyzer on data (PatternNet's patterns); others need no fitting."""
        if self._inner.is_trainable:
            self._inner.fit(*args, **kwargs)
        else:
            super().fit(*args, **kwargs)

    def get_state(self) -> dict[str, np.ndarray]:
        return {f"inner/{k}": v for k, v in self._inner.get_state().items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        own = {k[len("inner/") :]: v for k, v in state.items() if k.startswith("inner/")}
        if own:
            self._inner.set_state(own)

    # -- the analysis -------------------------------------------------------------------
    def _explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        target = self._call_target(neuron_selection, target)
        inner = self._inner
        graph = inner.graph(inputs)
        feed = graph.feed(inputs.values)
        output, clean = inner.clean_pass(graph, feed)
        sources = graph.source_nodes
        for node in sources:
            floating_value(self.name, graph.source_names[node], clean[node])
        selection = self._resolve(output, neuron_selection, target, inputs)
        n = output.shape[0]
        call: dict[str, Any] = {}  # per-call state of the point makers (a noise generator)
        points = {
            node: self._points(node, clean[node], graph.source_names[node], call)
            for node in sources
        }
        first = points[sources[0]]
        totals = {node: torch.zeros_like(clean[node]) for node in sources}
        squares = (
            {node: torch.zeros_like(clean[node]) for node in sources} if self._squares() else {}
        )
        n_rows = first.count * n
        starts = range(0, n_rows, self.batch_size)
        for start in progress(starts, self.verbose, total=len(starts), desc=self.name):
            rows = torch.arange(start, min(start + self.batch_size, n_rows), device=output.device)
            if first.by_sample:
                samples, indices = rows // first.count, rows % first.count
            else:
                samples, indices = rows % n, rows // n
            batch = {
                node: value[samples]
                if isinstance(value, torch.Tensor) and value.dim() > 0
                else value
                for node, value in feed.items()
            }
            options: dict[str, Any] = {}
            for node in sources:
                if points[node].make is not None:
                    batch[node] = points[node].make(samples, indices)
                if points[node].options is not None:
                    options.update(points[node].options(samples, indices))
            explanation = inner.explain_feed(
                graph, batch, selection.rows(samples, output.dim()), **options
            )
            for node in sources:
                attribution = explanation.attributions[graph.source_names[node]]
                weights = points[node].weights
                if weights is None:
                    totals[node].index_add_(0, samples, attribution)
                else:
                    shape = [-1] + [1] * (attribution.dim() - 1)
                    weight = weights.to(attribution.dtype)[indices].reshape(shape)
                    totals[node].index_add_(0, samples, attribution * weight)
                if squares:
                    squares[node].index_add_(0, samples, attribution * attribution)
        attributions = {}
        for node in sources:
            name = graph.source_names[node]
            count = points[node].count
            mean = totals[node] / count if points[node].weights is None else totals[node]
            mean_square = squares[node] / count if squares else None
            attribution = self._combine(mean, mean_square, clean[node], name)
            if self.attribute_sum_axis is not None:
                attribution = attribution.sum(dim=self.attribute_sum_axis)
            attributions[name] = attribution
        first_attribution = next(iter(attributions.values()))
        return Explanation(
            first_attribution, selection.selected, selection.scores, attributions=attributions
        )

    def _points(self, node: fx.Node, x: torch.Tensor, name: str, call: dict[str, Any]) -> Points:
        """The points of one call for the attributed ``node`` (value ``x``, named ``name``);
        ``call`` holds state shared by the call's attributed nodes."""
        raise NotImplementedError

    def _squares(self) -> bool:
        """Whether ``_combine`` needs the mean of the squared inner attributions."""
        return False

    def _combine(
        self,
        mean: torch.Tensor,
        mean_square: torch.Tensor | None,
        x: torch.Tensor,
        name: str,
    ) -> torch.Tensor:
        """The attribution from the (weighted) mean of the inner attributions."""
        return mean


# Captum 0.9's integral approximations (captum/attr/_utils/approximation_methods.py): the
# points' positions alpha in [0, 1] and their weights.
IG_METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)


def path_points(method: str, steps: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions ``alpha_k`` on the path and weights ``w_k`` of an integral approximation
    with ``steps`` points, in float64 (None: every weight is ``1 / steps``).

    Riemann sums (left: ``k / n``; right: ``(k + 1) / n``; middle: ``(k + 1/2) / n``) weigh
    every point ``1 / n``. ``riemann_trapezoid`` is Captum's: points ``k / (n - 1)`` with
    weights ``1 / n``, halved at both ends, which sum to ``(n - 1) / n`` rather than 1 (so
    its completeness error is about ``1 / n`` of the output difference). ``gausslegendre``
    is the Gauss-Legendre rule on [0, 1] (numpy's ``leggauss`` nodes and weights, halved
    and shifted), Captum's default.
    """
    n = steps
    k = np.arange(n, dtype=np.float64)
    if method == "riemann_left":
        return k / n, None
    if method == "riemann_right":
        return (k + 1) / n, None
    if method == "riemann_middle":
        return (k + 0.5) / n, None
    if method == "riemann_trapezoid":
        if n < 2:
            raise OptionError("method='riemann_trapezoid' needs steps >= 2")
        weights = np.full(n, 1.0 / n)
        weights[0] /= 2
        weights[-1] /= 2
        return k / (n - 1), weights
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (1 + nodes), 0.5 * weights
    raise OptionError(f"method must be one of {IG_METHODS}, got {method!r}")


class IntegratedGradients(Averaged):
    """Integrated gradients (Sundararajan et al. 2017): the gradient integrated along the
    straight path from a baseline to the input, times the input's difference from it.

    ``(x - x_ref) * sum_k w_k g(x_ref + alpha_k (x - x_ref))`` with ``g`` the inner method
    (the gradient by default; with an LRP method, Zennit's ``IntegratedGradients`` with a
    composite: the path integral of the modified gradient).

    Parameters
    ----------
    steps
        Number of points on the path.
    method
        How the integral is approximated: "riemann_left" (default, iNNvestigate's: points
        ``k / steps``, k = 0 .. steps-1), "riemann_right", "riemann_middle",
        "riemann_trapezoid" or "gausslegendre" (Captum's default), with Captum's points and
        weights (``path_points``).
    reference_inputs
        The baseline: a number, or an array broadcastable to the input; for several
        attributed inputs or nodes, a dict from their names to such baselines (0 for
        names it leaves out).
    inner
        The integrated method (default "gradient"); see ``Averaged``.
    postprocess
        None, "abs" or "square", applied to each gradient on the path (iNNvestigate).
    batch_size, verbose
        See ``Averaged``.
    """

    name = "integrated_gradients"
    family = "gradient"
    title = "integrated gradients"
    summary = (
        "The gradient averaged along the straight path from a baseline (0) to the input, times"
        " the input; sums to the change of the score along the path."
    )
    paper = "Sundararajan et al. 2017, ICML (arXiv 1703.01365)"
    innvestigate = "IntegratedGradients"

    def __init__(
        self,
        model: nn.Module,
        *,
        steps: int = 64,
        reference_inputs: Any = 0.0,
        method: str = "riemann_left",
        **kwargs: Any,
    ) -> None:
        if "augment_by_n" in kwargs:
            raise TypeError(
                "integrated_gradients takes steps= for the number of points on the path "
                "(iNNvestigate passes steps to its PathIntegrator as augment_by_n)"
            )
        super().__init__(model, **kwargs)
        self.steps = check_int("steps", steps, 1, MAX_POINTS)
        if method not in IG_METHODS:
            raise OptionError(f"method must be one of {IG_METHODS}, got {method!r}")
        self.method = method
        path_points(method, self.steps)  # refuses steps=1 for the trapezoid now
        self.reference_inputs = reference_inputs

    def _nonfinite_hint(self) -> str:
        return (
            " at a point of the path from reference_inputs to the input (a model that is "
            "NaN at the baseline, e.g. 0, needs another reference_inputs)"
        )

    def _reference(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return named_baseline(self.reference_inputs, x, name, "reference_inputs")

    def _points(self, node: fx.Node, x: torch.Tensor, name: str, call: dict[str, Any]) -> Points:
        ref = self._reference(x, name)
        delta = x - ref
        shape = [-1] + [1] * (x.dim() - 1)
        if self.method == "riemann_left":
            # k / steps computed in the input's dtype (innspect 0.1's exact arithmetic).
            def alphas(points: torch.Tensor) -> torch.Tensor:
                return points.to(x.dtype) / self.steps

            weights = None
        else:
            positions, weight_array = path_points(self.method, self.steps)
            table = torch.as_tensor(positions, device=x.device).to(x.dtype)

            def alphas(points: torch.Tensor) -> torch.Tensor:
                return table[points]

            weights = None if weight_array is None else torch.as_tensor(weight_array)
            weights = None if weights is None else weights.to(x.device)

        def make(samples: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
            return ref[samples] + alphas(points).reshape(shape) * delta[samples]

        return Points(self.steps, make, weights)

    def _combine(
        self,
        mean: torch.Tensor,
        mean_square: torch.Tensor | None,
        x: torch.Tensor,
        name: str,
    ) -> torch.Tensor:
        return mean * (x - self._reference(x, name))


NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


class SmoothGrad(Averaged):
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over noisy copies of the input.

    With ``inner``, any reverse-walk method is averaged (Captum's ``NoiseTunnel``, Zennit's
    ``SmoothGrad`` with a composite).

    Parameters
    ----------
    augment_by_n
        Number of noisy samples per input.
    noise_scale
        Standard deviation of the Gaussian noise, in input units (iNNvestigate 1.0.9's
        meaning; 2.1.2 ignores it, innspect honours it).
    nt_type
        Captum's NoiseTunnel variants: "smoothgrad" (the mean, default), "smoothgrad_sq"
        (the mean of the squared attributions, Hooker et al. 2019) or "vargrad" (their
        variance, Adebayo et al. 2018: mean of squares minus the squared mean).
    inner
        The averaged method (default "gradient"); see ``Averaged``.
    postprocess
        None, "abs" or "square" applied to each gradient before averaging.
    seed
        Seed for reproducible noise.
    batch_size, verbose
        See ``Averaged``.
    """

    name = "smoothgrad"
    family = "gradient"
    title = "SmoothGrad"
    summary = (
        "The gradient averaged over noisy copies of the input, which removes much of the "
        "gradient's noise."
    )
    paper = "Smilkov et al. 2017 (arXiv 1706.03825)"
    innvestigate = "SmoothGrad"

    def __init__(
        self,
        model: nn.Module,
        *,
        augment_by_n: int = 64,
        noise_scale: float = 1.0,
        nt_type: str = "smoothgrad",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.augment_by_n = check_int("augment_by_n", augment_by_n, 1, MAX_POINTS)
        self.noise_scale = check_number("noise_scale", noise_scale, minimum=0.0)
        if nt_type not in NT_TYPES:
            raise OptionError(f"nt_type must be one of {NT_TYPES}, got {nt_type!r}")
        self.nt_type = nt_type
        self.seed = None if seed is None else check_int("seed", seed, 0, 2**63 - 1)

    def _points(self, node: fx.Node, x: torch.Tensor, name: str, call: dict[str, Any]) -> Points:
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

        return Points(self.augment_by_n, make)

    def _squares(self) -> bool:
        return self.nt_type != "smoothgrad"

    def _combine(
        self,
        mean: torch.Tensor,
        mean_square: torch.Tensor | None,
        x: torch.Tensor,
        name: str,
    ) -> torch.Tensor:
        if self.nt_type == "smoothgrad":
            return mean
        assert mean_square is not None
        if self.nt_type == "smoothgrad_sq":
            return mean_square
        return mean_square - mean * mean


ANALYZERS = [IntegratedGradients, SmoothGrad]
