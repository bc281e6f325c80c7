"""Gradient-type analyzers: gradient, input times gradient, deconvnet, guided backprop."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from innspect.analyzers.base import Analyzer, Explanation, ReverseAnalyzer
from innspect.analyzers.io import ModelInputs, select_output, target_gradient
from innspect.analyzers.registry import register
from innspect.engine.reverse import Mapping, Unsupported
from innspect.graph.capture import eval_view
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.kinds import Kind
from innspect.rules.basic import (
    GRADIENT,
    DeconvnetReLU,
    GuidedReLU,
    LinearGradient,
    gradient_mapping,
)

LINEAR_GRADIENT = LinearGradient()
_POSTPROCESS = (None, "abs", "square")


def check_postprocess(postprocess: str | None) -> str | None:
    """Validate a gradient postprocess option (None, "abs", "square")."""
    if postprocess not in _POSTPROCESS:
        raise ValueError(f"postprocess must be one of {_POSTPROCESS}, got {postprocess!r}")
    return postprocess


@register
class GradientAnalyzer(ReverseAnalyzer):
    """Gradient of the selected output with respect to the input.

    Parameters
    ----------
    postprocess
        None, "abs" or "square", applied to the gradient.
    """

    name = "gradient"

    def __init__(self, model: nn.Module, *, postprocess: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.postprocess = check_postprocess(postprocess)

    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        return GRADIENT

    def _postprocess(self, attribution: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.postprocess == "abs":
            return attribution.abs()
        if self.postprocess == "square":
            return attribution.square()
        return attribution


@register
class InputTimesGradient(GradientAnalyzer):
    """Input times the gradient (element-wise)."""

    name = "input_t_gradient"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)

    def _postprocess(self, attribution: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return super()._postprocess(attribution, x) * x


class _ReLUVariant(ReverseAnalyzer):
    """Gradient everywhere except at ReLUs; other activations are refused.

    Like iNNvestigate (whose reference data shows it), the walk starts from the selected
    output's value, not from 1: results are the gradient-style signal scaled by y.
    """

    relu_mapping: Mapping
    relevance_start = True
    # Eval-mode BatchNorm folded into its convolution: the same gradient, one recorded
    # tensor per layer fewer.
    fuse_batchnorm = True

    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        if info.is_relu:
            return self.relu_mapping
        if info.kind is Kind.ACTIVATION:
            return Unsupported(
                self.name,
                "this method is defined for ReLU activations only; replace the activation by "
                "nn.ReLU or use 'gradient'",
            )
        if info.module is not None and info.kind in (Kind.LINEAR, Kind.BATCHNORM):
            return LINEAR_GRADIENT
        return gradient_mapping(info.kind)


@register
class Deconvnet(_ReLUVariant):
    """Deconvnet (Zeiler & Fergus 2014): at each ReLU the backward signal is rectified."""

    name = "deconvnet"
    relu_mapping = DeconvnetReLU()


@register
class GuidedBackprop(_ReLUVariant):
    """Guided backprop (Springenberg et al. 2015): rectified signal times the ReLU mask."""

    name = "guided_backprop"
    relu_mapping = GuidedReLU()


@register
class GradientBaseline(Analyzer):
    """The gradient computed with plain autograd on the model: a cross-check of the engine."""

    name = "gradient.baseline"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._checked = False

    def _explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        target = self._target(target)
        self._check_selection_arguments(neuron_selection, target)
        names = self._attributed_inputs(inputs)
        if not self._checked:
            # The same output-activation refusal as the engine's analyzers.
            GradientAnalyzer(self.model, output=self.output, attribute_to=list(names)).graph(inputs)
            self._checked = True
        given = inputs.by_name()
        leaves = {name: given[name].detach().requires_grad_(True) for name in names}
        # The caller's Python values (return_dict=False...) are passed as given.
        bound = dict(inputs.call.bound)
        values = {**{n: bound[n] for n in inputs.call.fixed}, **given, **leaves}
        order = inputs.order or inputs.names
        # The eval view of the model: its training flags are never touched (capture.eval_view).
        model = eval_view(self.model)
        with torch.enable_grad():
            if inputs.call.keyword:
                result = model(**{name: values[name] for name in order})
            else:
                result = model(*[values[name] for name in order])
            output = select_output(result, self.output)
            selected = None
            if target is not None:
                weights, scores = target_gradient(output, target)
                objective = (output * weights).sum()
            else:
                flat = output.reshape(output.shape[0], -1)
                selected = self._select(flat, neuron_selection)
                if selected is None:
                    objective = flat.sum()
                    scores = flat.detach().sum(dim=1)
                else:
                    picked = flat.gather(1, selected[:, None])[:, 0]
                    objective, scores = picked.sum(), picked.detach()
            grads = torch.autograd.grad(objective, [leaves[n] for n in names], allow_unused=True)
        attributions = {
            name: torch.zeros_like(leaves[name]) if grad is None else grad
            for name, grad in zip(names, grads, strict=True)
        }
        return Explanation(attributions[names[0]], selected, scores, attributions=attributions)
