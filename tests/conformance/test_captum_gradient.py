"""Gradient family against autograd and Captum on torchvision and hand-written models.

Random weights, small inputs, eval mode. Deconvnet and guided backprop start from the
output value (iNNvestigate's convention), so Captum's results are scaled by the score.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
)

import innspect
from tests.models import FunctionalNet, TanhNet, relu6_to_relu, without_inplace

TORCHVISION = {
    "resnet18": 32,
    "densenet121": 32,
    "mobilenet_v2": 32,
    "vgg11": 32,
    "inception_v3": 75,
}


def _torchvision_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
    return model.double().eval()


@pytest.fixture(scope="module", params=sorted(TORCHVISION))
def torchvision_case(request) -> tuple[str, torch.nn.Module, torch.Tensor]:
    name = request.param
    model = _torchvision_model(name)
    size = TORCHVISION[name]
    x = torch.randn(
        2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    return name, model, x


class _RectifiedReLU(torch.autograd.Function):
    """ReLU whose backward is guided backprop's or deconvnet's (for functional F.relu calls)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, guided: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.guided = guided
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        rectified = grad.clamp_min(0)
        return (rectified * (x > 0) if ctx.guided else rectified), None


@contextlib.contextmanager
def _functional_relus_rectified(guided: bool):
    """Captum hooks nn.ReLU modules only; torchvision's densenet and inception also call
    F.relu. This gives those calls the same backward, independently of innspect."""
    original = F.relu
    F.relu = lambda x, inplace=False: _RectifiedReLU.apply(x, guided)
    try:
        yield
    finally:
        F.relu = original


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _targets(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def test_gradient_equals_autograd(torchvision_case) -> None:
    _, model, x = torchvision_case
    ours = innspect.create_analyzer("gradient", model).analyze(x)
    leaf = x.clone().requires_grad_(True)
    output = model(leaf)
    (expected,) = torch.autograd.grad(output.max(dim=1).values.sum(), leaf)
    assert _relative_error(ours, expected) < 1e-10


def test_input_t_gradient_equals_captum(torchvision_case) -> None:
    _, model, x = torchvision_case
    ours = innspect.create_analyzer("input_t_gradient", model).analyze(x)
    expected = InputXGradient(model).attribute(x.clone(), target=_targets(model, x))
    assert _relative_error(ours, expected) < 1e-10


@pytest.mark.parametrize(
    ("name", "captum_class"), [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)]
)
def test_relu_variants_equal_captum(torchvision_case, name: str, captum_class) -> None:
    model_name, model, x = torchvision_case
    if model_name == "mobilenet_v2":
        # Both methods are defined for ReLU networks: compare on mobilenet's structure with
        # ReLU in place of ReLU6 (the refusal of ReLU6 is tested below).
        model = relu6_to_relu(model)
    explanation = innspect.create_analyzer(name, model).explain(x)
    peer = without_inplace(model)
    with _functional_relus_rectified(guided=name == "guided_backprop"):
        expected = captum_class(peer).attribute(x.clone(), target=explanation.selected)
    expected = expected * explanation.scores.reshape(-1, 1, 1, 1)
    assert _relative_error(explanation.attribution, expected) < 1e-10


def test_integrated_gradients_equals_captum_riemann_left(torchvision_case) -> None:
    _, model, x = torchvision_case
    ours = innspect.create_analyzer("integrated_gradients", model, steps=8, batch_size=6)
    result = ours.analyze(x)
    expected = IntegratedGradients(model).attribute(
        x.clone(), target=_targets(model, x), n_steps=8, method="riemann_left"
    )
    assert _relative_error(result, expected) < 1e-10


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_relu_variants_refuse_relu6_naming_the_node(name: str) -> None:
    model = _torchvision_model("mobilenet_v2")
    with pytest.raises(innspect.UnsupportedNodeError, match=r"features\.\d+\.\d+.*ReLU6"):
        innspect.create_analyzer(name, model, strict=True).analyze(
            torch.randn(1, 3, 32, 32, dtype=torch.float64)
        )


def test_functional_model_gradient_and_captum() -> None:
    model = FunctionalNet().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    target = out.argmax(dim=1)
    (expected,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), leaf)
    assert _relative_error(innspect.create_analyzer("gradient", model).analyze(x), expected) < 1e-12
    explanation = innspect.create_analyzer("guided_backprop", model).explain(x)
    captum = GuidedBackprop(without_inplace(model)).attribute(x.clone(), target=target)
    scaled = captum * explanation.scores.reshape(-1, 1, 1, 1)
    assert _relative_error(explanation.attribution, scaled) < 1e-12


def test_non_relu_model_gradient_equals_autograd() -> None:
    model = TanhNet().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    (expected,) = torch.autograd.grad(out.max(dim=1).values.sum(), leaf)
    assert _relative_error(innspect.create_analyzer("gradient", model).analyze(x), expected) < 1e-12
    with pytest.raises(innspect.UnsupportedNodeError, match="gelu|tanh"):
        innspect.create_analyzer("guided_backprop", model, strict=True).analyze(x)
