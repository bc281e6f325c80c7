"""Layers written as functional calls (F.linear, F.conv2d with parameters) get the same rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect


class ModuleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.fc = nn.Linear(2 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = torch.relu(self.up(h))
        return self.fc(h.flatten(1))


class FunctionalNet(nn.Module):
    """The same computation with functional calls on the parameters of a ModuleNet."""

    def __init__(self, source: ModuleNet) -> None:
        super().__init__()
        self.conv_weight, self.conv_bias = source.conv.weight, source.conv.bias
        self.up_weight, self.up_bias = source.up.weight, source.up.bias
        self.fc_weight, self.fc_bias = source.fc.weight, source.fc.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(F.conv2d(x, self.conv_weight, self.conv_bias, stride=2, padding=1))
        h = torch.relu(F.conv_transpose2d(h, self.up_weight, self.up_bias, stride=2))
        return F.linear(h.flatten(1), self.fc_weight, self.fc_bias)


@pytest.mark.parametrize(
    "name", ["lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.z_plus", "lrp.sequential_preset_a"]
)
def test_functional_layers_get_the_same_relevance_as_modules(name: str) -> None:
    modules = ModuleNet().double()
    functional = FunctionalNet(modules)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(functional(x), modules(x))
    expected = innspect.create_analyzer(name, modules).analyze(x)
    ours = innspect.create_analyzer(name, functional).analyze(x)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_weights_computed_in_forward_get_the_linear_rules() -> None:
    # Issue 25 item 6 (once refused): a weight computed from parameters alone is a linear
    # layer with that weight (tests/test_computed_weights.py covers every method).
    class Computed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = nn.Parameter(torch.randn(3, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.v / self.v.norm())

    model = Computed()
    baked = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        baked.weight.copy_(model.v / model.v.norm())
    x = torch.randn(2, 4)
    expected = innspect.create_analyzer("lrp.epsilon", baked).analyze(x)
    torch.testing.assert_close(innspect.create_analyzer("lrp.epsilon", model).analyze(x), expected)
