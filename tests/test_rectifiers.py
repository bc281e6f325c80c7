"""Guided backprop and Deconvnet on every rectifier, and innspect's generalisation.

The oracle replaces each activation by an autograd function whose backward is the
method's: guided backprop ``relu(g) * (0 < x < t)`` and Deconvnet ``relu(g)`` at a clamp to
[0, t] (ReLU6, hardtanh(0, t), clamp(0, t)); ``relu(g) * f'(x)`` at any other element-wise
activation ``f``. The walk starts from the selected output's value (iNNvestigate's
convention), so the oracle's backward starts from the same signal.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import innspect


class _Rectifier(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float, guided: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound, ctx.guided = bound, guided
        return x.clamp(0, bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        rectified = grad.clamp_min(0)
        if ctx.guided:
            rectified = rectified * ((x > 0) & (x < ctx.bound))
        return rectified, None, None


class _Generalised(torch.autograd.Function):
    """``f(x)`` forward, ``relu(g) * f'(x)`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return module(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (derivative,) = torch.autograd.grad(ctx.module(leaf).sum(), leaf)
        return grad.clamp_min(0) * derivative, None


class _Oracle(nn.Module):
    def __init__(self, module: nn.Module, guided: bool) -> None:
        super().__init__()
        self.module, self.guided = module, guided

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.module, nn.Hardtanh) and self.module.min_val == 0:
            return _Rectifier.apply(x, self.module.max_val, self.guided)
        return _Generalised.apply(x, self.module)


def _oracle_model(model: nn.Module, guided: bool) -> nn.Module:
    oracle = copy.deepcopy(model)
    for parent in list(oracle.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU6 | nn.SiLU | nn.GELU | nn.LeakyReLU | nn.Hardswish):
                setattr(parent, child_name, _Oracle(child, guided))
            elif isinstance(child, nn.Sigmoid | nn.Tanh | nn.Hardtanh):
                setattr(parent, child_name, _Oracle(child, guided))
    return oracle


def _oracle_attribution(model: nn.Module, x: torch.Tensor, explanation, guided: bool):
    oracle = _oracle_model(model, guided).eval()
    leaf = x.clone().requires_grad_(True)
    out = oracle(leaf)
    start = torch.zeros_like(out)
    rows = torch.arange(out.shape[0])
    start[rows, explanation.selected] = explanation.scores
    (grad,) = torch.autograd.grad(out, leaf, start)
    return grad


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_mobilenet_v2_relu6_equals_the_masked_rectified_oracle(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    explanation = innspect.create_analyzer(name, model).explain(x)
    expected = _oracle_attribution(model, x, explanation, guided=name == "guided_backprop")
    assert expected.abs().max() > 0
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-10, atol=1e-12)
    rules = {type(rule).__name__ for rule in explanation.plan.rules.values()}
    assert ("GuidedReLU" if name == "guided_backprop" else "DeconvnetReLU") in rules


class ManyActivations(nn.Module):
    """Every element-wise activation the generalisation covers, modules and functions."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(8))
        self.acts = nn.ModuleList(
            [
                nn.SiLU(),
                nn.GELU(),
                nn.LeakyReLU(0.1),
                nn.Hardswish(),
                nn.Sigmoid(),
                nn.Tanh(),
                nn.Hardtanh(0.0, 2.0),
            ]
        )
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers, self.acts, strict=False):
            x = act(layer(x))
        return self.out(self.layers[-1](x))


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_other_activations_get_the_rectified_signal_times_the_derivative(name: str) -> None:
    torch.manual_seed(0)
    model = ManyActivations().double().eval()
    x = torch.randn(5, 8, dtype=torch.float64)
    explanation = innspect.create_analyzer(name, model).explain(x)
    expected = _oracle_attribution(model, x, explanation, guided=name == "guided_backprop")
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(innspect.UnsupportedNodeError, match="strict=True"):
        innspect.create_analyzer(name, model, strict=True).analyze(x)


class FunctionalClamps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardtanh(self.a(x), 0.0, 1.5)
        x = torch.clamp(self.b(x), 0, 0.5)
        return self.c(x)


def test_functional_clamps_are_rectifiers_with_their_bound() -> None:
    torch.manual_seed(0)
    model = FunctionalClamps().double().eval()
    x = torch.randn(6, 6, dtype=torch.float64) * 2
    explanation = innspect.create_analyzer("guided_backprop", model).explain(x)
    bounds = [
        getattr(rule, "bound", None)
        for rule in explanation.plan.rules.values()
        if type(rule).__name__ == "GuidedReLU"
    ]
    assert bounds == [1.5, 0.5]
    # The oracle, written out: the rectified signal masked by 0 < x < t at each clamp.
    a = model.a(x)
    b = model.b(F.hardtanh(a, 0.0, 1.5))
    start = torch.zeros(6, 3, dtype=torch.float64)
    start[torch.arange(6), explanation.selected] = explanation.scores
    g = start @ model.c.weight
    g = g.clamp_min(0) * ((b > 0) & (b < 0.5))
    g = g @ model.b.weight
    g = g.clamp_min(0) * ((a > 0) & (a < 1.5))
    torch.testing.assert_close(explanation.attribution, g @ model.a.weight, rtol=1e-12, atol=1e-14)
