"""The Zennit-named composites against Zennit 0.5.1 on torchvision architectures.

Random weights, eval mode, float64, batch 2 at 32x32. Zennit gets its own canonizers
(``VGGCanonizer`` / ``ResNetCanonizer``); innspect gets the plain torchvision model.
Zennit starts from the gradient it is given, so it is given one-hot times the selected
output value, innspect's start.

Zennit's merged BatchNorm stays in the model as an "identity" that still divides by
``sqrt(1 + eps)`` (see ``innspect.analyzers.composites``), so with BatchNorm the two differ
by about ``eps`` relative per BatchNorm on the path; without BatchNorm they agree to
rounding. The tolerances below say so per model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
import zennit.composites as zennit_composites
from torch import nn
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

import innspect

SIZE = 32
BOX = (-3.0, 3.0)  # low/high of epsilon_gamma_box; the inputs below stay inside

COMPOSITES = {
    "lrp.epsilon_plus": "EpsilonPlus",
    "lrp.epsilon_plus_flat": "EpsilonPlusFlat",
    "lrp.epsilon_gamma_box": "EpsilonGammaBox",
    "lrp.epsilon_alpha2_beta1": "EpsilonAlpha2Beta1",
    "lrp.epsilon_alpha2_beta1_flat": "EpsilonAlpha2Beta1Flat",
}
# model name -> (canonizer, largest relative L2 error allowed). Without BatchNorm the
# comparison is exact up to rounding (measured <= 3e-16); with it Zennit's sqrt(1 + eps)
# leftover sets the bound, growing with the number of BatchNorms on the path (measured:
# vgg11_bn 6e-6 .. 1.3e-5, resnet18 2e-5 .. 3e-5, resnet50 1.1e-4 .. 1.6e-4).
MODELS: dict[str, tuple[Any, float]] = {
    "vgg16": (VGGCanonizer, 1e-12),
    "vgg11_bn": (VGGCanonizer, 5e-5),
    "resnet18": (ResNetCanonizer, 1e-4),
    "resnet50": (ResNetCanonizer, 5e-4),
}
EXACT = 1e-12  # every model, once BatchNorm's eps is 0


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Running statistics and affine parameters far from the identity, so folding matters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    _randomise_batchnorm(model, torch.Generator().manual_seed(1))
    return model.double().eval()


@pytest.fixture(scope="module")
def cases() -> Callable[[str], tuple[nn.Module, torch.Tensor]]:
    """Builds each architecture once for the whole module (vgg16 alone has 138M parameters)."""
    built: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def get(name: str) -> tuple[nn.Module, torch.Tensor]:
        if name not in built:
            generator = torch.Generator().manual_seed(2)
            x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64, generator=generator)
            built[name] = (_build(name), x.clamp(*BOX))
        return built[name]

    return get


def _zennit_attribution(
    model: nn.Module, x: torch.Tensor, composite_name: str, canonizer_class
) -> torch.Tensor:
    kwargs = {}
    if composite_name == "EpsilonGammaBox":
        kwargs = {"low": torch.full_like(x, BOX[0]), "high": torch.full_like(x, BOX[1])}
    composite = getattr(zennit_composites, composite_name)(canonizers=[canonizer_class()], **kwargs)
    leaf = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(leaf)
        rows = torch.arange(x.shape[0])
        selected = out.argmax(dim=1)
        start = torch.zeros_like(out)
        start[rows, selected] = out[rows, selected].detach()
        (relevance,) = torch.autograd.grad(out, leaf, start)
    return relevance


def _relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_matches_zennit_on_torchvision(cases, model_name: str, name: str) -> None:
    model, x = cases(model_name)
    canonizer_class, tolerance = MODELS[model_name]
    options = {"low": BOX[0], "high": BOX[1]} if name == "lrp.epsilon_gamma_box" else {}
    ours = innspect.create_analyzer(name, model, **options).analyze(x)
    with torch.no_grad():
        before = model(x)
    expected = _zennit_attribution(model, x, COMPOSITES[name], canonizer_class)
    with torch.no_grad():
        # Zennit's context must have restored the model, or later cases compare nonsense.
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert bool(expected.abs().sum() > 0)
    error = _relative_l2(ours, expected)
    assert error <= tolerance, f"{name} on {model_name}: relative L2 error {error:.3g}"


@pytest.mark.parametrize("model_name", ["vgg11_bn", "resnet18", "resnet50"])
def test_batchnorm_eps_is_the_whole_difference(cases, model_name: str) -> None:
    """With eps = 0 Zennit's leftover vanishes: BatchNorm models then agree to rounding too."""
    model, x = cases(model_name)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms
    saved = [m.eps for m in batchnorms]
    try:
        for module in batchnorms:
            module.eps = 0.0
        name = "lrp.epsilon_alpha2_beta1_flat"
        ours = innspect.create_analyzer(name, model).analyze(x)
        expected = _zennit_attribution(model, x, COMPOSITES[name], MODELS[model_name][0])
    finally:
        for module, eps in zip(batchnorms, saved, strict=True):
            module.eps = eps
    error = _relative_l2(ours, expected)
    assert error <= EXACT, f"{model_name} with eps=0: relative L2 error {error:.3g}"
