"""Gradient-type analyzers: gradient, input times gradient, deconvnet, guided backprop."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from innspect.analyzers.api import Analyzer, Explanation
from innspect.analyzers.composed import ComposedAnalyzer
from innspect.analyzers.plan import Composite, Site, always, family, kind
from innspect.analyzers.reverse import ReverseAnalyzer
from innspect.engine.inputs import ModelInputs
from innspect.engine.reverse import Mapping, Unsupported
from innspect.errors import OptionError
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.ops import Kind, rectifier_bound
from innspect.graph.outputs import select_output
from innspect.graph.views import eval_view
from innspect.rules.basic import (
    GRADIENT,
    DeconvnetReLU,
    GuidedReLU,
    RectifiedGradient,
)
from innspect.util.checks import check_flag

_POSTPROCESS = (None, "abs", "square")


def check_postprocess(postprocess: str | None) -> str | None:
    """Validate a gradient postprocess option (None, "abs", "square")."""
    if postprocess not in _POSTPROCESS:
        raise ValueError(f"postprocess must be one of {_POSTPROCESS}, got {postprocess!r}")
    return postprocess


def apply_postprocess(attribution: torch.Tensor, postprocess: str | None) -> torch.Tensor:
    """iNNvestigate's gradient postprocess: None, "abs" or "square"."""
    if postprocess == "abs":
        return attribution.abs()
    if postprocess == "square":
        return attribution.square()
    return attribution


class GradientAnalyzer(ReverseAnalyzer):
    """Gradient of the selected output with respect to the input.

    Parameters
    ----------
    postprocess
        None, "abs" or "square", applied to the gradient.
    """

    name = "gradient"
    family = "gradient"
    title = "gradient"
    summary = (
        "How much a small change of each input element changes the score: sensitivity, not "
        "contribution, so often noisy and spread over the background."
    )
    paper = "Simonyan et al. 2014 (arXiv 1312.6034)"
    innvestigate = "Gradient"

    def __init__(self, model: nn.Module, *, postprocess: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.postprocess = check_postprocess(postprocess)

    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        return GRADIENT

    def _postprocess(self, attribution: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return apply_postprocess(attribution, self.postprocess)


class InputTimesGradient(GradientAnalyzer):
    """Input times the gradient (element-wise)."""

    name = "input_t_gradient"
    family = "gradient"
    title = "input × gradient"
    summary = "Gradient times the input's value: only non-zero inputs (inked pixels) get relevance."
    paper = "Shrikumar et al. 2016 (arXiv 1605.01713)"
    innvestigate = "InputTimesGradient"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)

    def _postprocess(self, attribution: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return super()._postprocess(attribution, x) * x


_RELU_ONLY = (
    "this method is defined for ReLU activations only (strict=True); replace the activation by "
    "nn.ReLU, use strict=False for innspect's generalisation, or use 'gradient'"
)


def rectifier_composite(name: str, guided: bool, strict: bool) -> Composite:
    """Guided backprop / Deconvnet as data: a rectifier mapping at every ReLU (and, unless
    ``strict``, at every clamp to [0, t] and, generalised, every element-wise activation),
    the gradient everywhere else."""

    def at_rectifier(site: Site) -> Mapping:
        if not guided:
            return DeconvnetReLU()
        return GuidedReLU(rectifier_bound(site.info.node, site.info.module))

    activation = kind(Kind.ACTIVATION)
    if strict:
        entries = [
            (activation & family("relu"), at_rectifier),
            (activation, Unsupported(name, _RELU_ONLY)),
        ]
    else:
        entries = [
            (activation & family("relu", "rectifier"), at_rectifier),
            (activation, RectifiedGradient()),
        ]
    return Composite([*entries, (always(), GRADIENT)], name=name)


class _RectifierVariant(ComposedAnalyzer):
    """Gradient everywhere except at rectifiers (ReLU, ReLU6, clamps to [0, t]).

    Like iNNvestigate (whose reference data shows it), the walk starts from the selected
    output's value, not from 1: results are the gradient-style signal scaled by y.

    Parameters
    ----------
    strict
        True: only ReLU networks, other activations refused (iNNvestigate's behaviour).
        False (default): ReLU6 and ``hardtanh(0, t)`` / ``clamp(0, t)`` are rectifiers with
        forward mask ``0 < x < t``; any other element-wise activation ``f`` gets the
        rectified signal times its local derivative, ``relu(R) * f'(x)`` (innspect's
        generalisation, the same for both methods).
    start
        "output" (default, iNNvestigate's): the walk starts from the selected output's value
        ``y``, so the map is Captum's times ``y``: zero where ``y = 0`` and sign-flipped where
        ``y < 0``. "ones" (Captum's): it starts from 1, as the gradient does.
    """

    guided = False
    relevance_start = True
    # Eval-mode BatchNorm folded into its convolution: the same gradient, one recorded
    # tensor per layer fewer.
    fuse_batchnorm = True

    def __init__(
        self, model: nn.Module, *, strict: bool = False, start: str = "output", **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.strict = check_flag("strict", strict)
        if start not in ("output", "ones"):
            raise OptionError(
                f"start must be 'output' (iNNvestigate) or 'ones' (Captum), got {start!r}"
            )
        self.start = start
        self.relevance_start = start == "output"
        self.composite = rectifier_composite(self.name, self.guided, strict)


class Deconvnet(_RectifierVariant):
    """Deconvnet (Zeiler & Fergus 2014): at each ReLU the backward signal is rectified."""

    name = "deconvnet"
    family = "gradient"
    title = "Deconvnet"
    summary = (
        "The backward signal is rectified at every ReLU, ignoring the forward pass's masks: "
        "shows patterns the network responds to, largely independent of the class."
    )
    paper = "Zeiler & Fergus 2014, ECCV (arXiv 1311.2901)"
    innvestigate = "Deconvnet"


class GuidedBackprop(_RectifierVariant):
    """Guided backprop (Springenberg et al. 2015): rectified signal times the ReLU mask."""

    name = "guided_backprop"
    family = "gradient"
    title = "guided backprop"
    summary = (
        "Like Deconvnet, but the signal also passes only where the forward ReLU was active: "
        "sharp, yet known to be weakly class-specific."
    )
    paper = "Springenberg et al. 2015, ICLR workshop (arXiv 1412.6806)"
    innvestigate = "GuidedBackprop"
    guided = True


class GradientBaseline(Analyzer):
    """The gradient computed with plain autograd on the model: a cross-check of the engine.

    Parameters
    ----------
    postprocess
        None, "abs" or "square", applied to the gradient (iNNvestigate's BaselineGradient).
    """

    name = "gradient.baseline"
    family = "gradient"
    title = "gradient (autograd)"
    summary = (
        "The same gradient computed with plain autograd, a cross-check of the engine: it must"
        " look exactly like 'gradient'."
    )
    innvestigate = "BaselineGradient"

    def __init__(self, model: nn.Module, *, postprocess: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.postprocess = check_postprocess(postprocess)
        self._checked = False

    def _explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        target = self._call_target(neuron_selection, target)
        names = self._attributed_inputs(inputs)
        if not self._checked:
            # The same output-activation refusal as the engine's analyzers.
            GradientAnalyzer(
                self.model,
                output=self.output,
                attribute_to=list(names),
                disable_model_checks=self.disable_model_checks,
            ).graph(inputs)
            self._checked = True
        given = inputs.by_name()
        leaves = {name: given[name].detach().requires_grad_(True) for name in names}
        # The caller's Python values (return_dict=False...) are passed as given.
        bound = dict(inputs.call.bound)
        values = {**{n: bound[n] for n in inputs.call.fixed}, **given, **leaves}
        order = inputs.order or inputs.names
        # The eval view of the model: its training flags are never touched (views.eval_view).
        model = eval_view(self.model)
        with torch.enable_grad():
            if inputs.call.keyword:
                result = model(**{name: values[name] for name in order})
            else:
                result = model(*[values[name] for name in order])
            output = select_output(result, self.output)
            selection = self._resolve(output, neuron_selection, target, inputs)
            # The plain autograd objective: the start signal's dot product with the output.
            objective = (output * selection.start(output, torch.ones_like)).sum()
            grads = torch.autograd.grad(objective, [leaves[n] for n in names], allow_unused=True)
        attributions = {
            name: apply_postprocess(
                torch.zeros_like(leaves[name]) if grad is None else grad, self.postprocess
            )
            for name, grad in zip(names, grads, strict=True)
        }
        return Explanation(
            attributions[names[0]], selection.selected, selection.scores, attributions=attributions
        )


ANALYZERS = [GradientAnalyzer, GradientBaseline, InputTimesGradient, Deconvnet, GuidedBackprop]
