"""DeepLIFT (rescale) and DeepLiftShap against Captum 0.9 on torchvision models.

Random weights, float64, eval mode. Captum's hooks need help where it misses a
non-linearity; each patch applies to the peer's run only:
- a module called twice (resnet's ``relu`` in every block) keeps only its last call's
  values in Captum: the peer runs an fx copy with one module per call;
- ``ReLU6`` (mobilenet_v2) is not in Captum's table of non-linearities (it would get the
  plain gradient): the peer registers it with Captum's own rescale rule;
- in-place ReLUs are made out-of-place for Captum's hooks.
Captum's max-pool rule is lost when the pooling follows a ReLU (VGG, ResNet): Captum gives
the gradient at x there, which is innspect's default (``max_pooling="gradient"``).
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torchvision
from captum.attr import DeepLift, DeepLiftShap
from captum.attr._core import deep_lift as captum_deep_lift
from torch import fx, nn

import innspect

TORCHVISION = ("mobilenet_v2", "resnet18", "vgg11")


def unshared(model: nn.Module) -> nn.Module:
    """An fx graph of ``model`` in which every module call has its own module (a copy for
    the second and later calls; the model's own modules are shared, never changed)."""
    traced = fx.symbolic_trace(model)
    seen: set[str] = set()
    for index, node in enumerate(traced.graph.nodes):
        if node.op != "call_module":
            continue
        if node.target in seen:
            name = f"{node.target.replace('.', '_')}_call{index}"
            traced.add_submodule(name, copy.deepcopy(traced.get_submodule(node.target)))
            node.target = name
        seen.add(node.target)
    traced.recompile()
    return traced


@contextlib.contextmanager
def out_of_place(model: nn.Module):
    """The model's in-place ReLUs made out-of-place for Captum's hooks, then restored."""
    flagged = [m for m in model.modules() if getattr(m, "inplace", False)]
    for module in flagged:
        module.inplace = False
    try:
        yield
    finally:
        for module in flagged:
            module.inplace = True


@pytest.fixture
def captum_knows_relu6(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(captum_deep_lift.SUPPORTED_NON_LINEAR, nn.ReLU6, captum_deep_lift.nonlinear)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module", params=TORCHVISION)
def torchvision_case(request) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, request.param)(weights=None, num_classes=10)
    model = model.double().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=generator)
    return model, unshared(model), x


def test_deeplift_equals_captum_on_torchvision(torchvision_case, captum_knows_relu6) -> None:
    model, peer, x = torchvision_case
    reference = 0.1 * torch.randn(x.shape[1:], dtype=torch.float64)
    explanation = innspect.create_analyzer("deep_lift", model, reference_inputs=reference).explain(
        x
    )
    baselines = reference.expand_as(x).clone()
    with out_of_place(peer):
        expected = DeepLift(peer).attribute(x.clone(), baselines, target=explanation.selected)
    assert _relative_error(explanation.attribution, expected) <= 1e-4
    rows = torch.arange(x.shape[0])
    with torch.no_grad():
        delta = model(x)[rows, explanation.selected] - model(baselines)[rows, explanation.selected]
    sums = explanation.attribution.sum(dim=(1, 2, 3))
    if any(isinstance(m, nn.MaxPool2d) for m in model.modules()):
        # Max pooling by the gradient loses a little of summation-to-delta (vgg, resnet).
        assert float((sums - delta).abs().max()) <= 0.2 * float(delta.abs().max())
    else:
        torch.testing.assert_close(sums, delta, rtol=1e-10, atol=1e-10)


def test_deep_lift_shap_equals_captum_on_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    background = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    explanation = innspect.create_analyzer(
        "deep_lift_shap", model, reference_inputs=background, batch_size=4
    ).explain(x)
    peer = unshared(model)
    with out_of_place(peer):
        expected = DeepLiftShap(peer).attribute(x.clone(), background, target=explanation.selected)
    assert _relative_error(explanation.attribution, expected) <= 1e-4


class SmoothNet(nn.Module):
    """Convolutions with sigmoid, tanh, ELU and softplus (modules, so Captum hooks them)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.Sigmoid(),
            nn.Conv2d(6, 6, 3, stride=2),
            nn.Tanh(),
            nn.Conv2d(6, 4, 3),
            nn.ELU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.Softplus())
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.features(x)))


@pytest.mark.parametrize("mode", ["rescale", "reveal_cancel"])
def test_smooth_activations_equal_captum_and_sum_to_delta(mode: str) -> None:
    torch.manual_seed(0)
    model = SmoothNet().double().eval()
    x = torch.randn(3, 3, 14, 14, dtype=torch.float64)
    reference = torch.randn(3, 3, 14, 14, dtype=torch.float64)
    explanation = innspect.create_analyzer(
        "deep_lift", model, reference_inputs=reference, nonlinear_mode=mode
    ).explain(x)
    rows = torch.arange(3)
    with torch.no_grad():
        delta = model(x)[rows, explanation.selected] - model(reference)[rows, explanation.selected]
    torch.testing.assert_close(explanation.attribution.sum(dim=(1, 2, 3)), delta, rtol=0, atol=1e-8)
    expected = DeepLift(model).attribute(x.clone(), reference, target=explanation.selected)
    error = _relative_error(explanation.attribution, expected)
    if mode == "rescale":
        assert error <= 1e-4
    else:  # Captum has no reveal-cancel: it must differ, while summing to the same delta
        assert error > 1e-3


@pytest.mark.parametrize("mode", ["rescale", "reveal_cancel"])
def test_resnet18_sums_to_delta_with_captums_max_pool_rule(mode: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    reference = 0.1 * torch.randn(2, 3, 32, 32, dtype=torch.float64)
    explanation = innspect.create_analyzer(
        "deep_lift", model, reference_inputs=reference, nonlinear_mode=mode, max_pooling="delta"
    ).explain(x)
    rows = torch.arange(2)
    with torch.no_grad():
        delta = model(x)[rows, explanation.selected] - model(reference)[rows, explanation.selected]
    sums = explanation.attribution.sum(dim=(1, 2, 3))
    torch.testing.assert_close(sums, delta, rtol=0, atol=1e-8)
