"""The Zennit-style composites against Zennit 0.5.1 itself, on small hand-written models.

(The torchvision comparisons live in their own test module.) With BatchNorm ``eps = 0``
the match is exact: Zennit's merged BatchNorm keeps dividing by sqrt(1 + eps), which
innspect's exact folding does not, so with the default eps the results differ by ~1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch
import zennit.canonizers as zennit_canonizers
import zennit.composites as zennit_composites
import zennit.layer as zennit_layer
from torch import nn

import innspect


class Block(nn.Module):
    """conv-bn-relu-conv-bn + identity (summed by a zennit Sum, as its ResNet canonizer does)."""

    def __init__(self, use_zennit_sum: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.sum = zennit_layer.Sum() if use_zennit_sum else None

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = self.sum(torch.stack([x, out], dim=-1)) if self.sum is not None else x + out
        return self.relu(out)


def make_model(use_zennit_sum: bool) -> nn.Module:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        Block(use_zennit_sum),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(8, 5),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.5)
            module.eps = 0.0
    return model.double().eval()


def zennit_attribution(model, x, composite) -> torch.Tensor:
    model = copy.deepcopy(model)
    leaf = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(leaf)
        rows = torch.arange(x.shape[0])
        start = torch.zeros_like(out)
        selected = out.argmax(1)
        start[rows, selected] = out[rows, selected].detach()  # innspect starts from y
        (grad,) = torch.autograd.grad(out, leaf, start)
    return grad


COMPOSITES = {
    "lrp.epsilon_plus": ("EpsilonPlus", {}),
    "lrp.epsilon_plus_flat": ("EpsilonPlusFlat", {}),
    "lrp.epsilon_alpha2_beta1": ("EpsilonAlpha2Beta1", {}),
    "lrp.epsilon_alpha2_beta1_flat": ("EpsilonAlpha2Beta1Flat", {}),
    "lrp.epsilon_gamma_box": ("EpsilonGammaBox", {"low": -2.0, "high": 2.5}),
}


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_matches_zennit(name: str) -> None:
    class_name, bounds = COMPOSITES[name]
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    zennit_kwargs = {k: torch.full_like(x, v) for k, v in bounds.items()}
    composite = getattr(zennit_composites, class_name)(
        canonizers=[zennit_canonizers.SequentialMergeBatchNorm()], **zennit_kwargs
    )
    expected = zennit_attribution(make_model(use_zennit_sum=True), x, composite)
    ours = innspect.create_analyzer(name, make_model(use_zennit_sum=False), **bounds).analyze(x)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_zennit_conventions_differ_from_innvestigate_names() -> None:
    """epsilon_alpha2_beta1 is not preset B: stabiliser, split bias and epsilon differ."""
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    model = make_model(use_zennit_sum=False)
    composite = innspect.create_analyzer("lrp.epsilon_alpha2_beta1", model).analyze(x)
    preset = innspect.create_analyzer("lrp.sequential_preset_b", model, epsilon=1e-6).analyze(x)
    assert not torch.allclose(composite, preset, rtol=1e-6, atol=1e-9)
