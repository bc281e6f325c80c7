"""Small models used across tests: hand-written ones built from functional operations."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class FunctionalNet(nn.Module):
    """Residual addition, concatenation, slicing, chunk, permute, mean and interpolation.

    Activations are nn.ReLU modules so that Captum's hooks see them too.
    """

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 6, 1)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU()
        self.head = nn.Linear(3 * 4 + 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.conv1(x))
        b = self.conv2(a)
        b += a  # in-place residual addition, as torchvision writes it
        b = self.relu2(b)
        c = torch.cat([a, b], dim=1)
        c = F.max_pool2d(c, 2)
        c = F.interpolate(c, scale_factor=2, mode="nearest")
        c = self.relu3(self.conv3(c))
        first, second = torch.chunk(c, 2, dim=1)
        pooled = F.adaptive_avg_pool2d(first + second[:, :, :, :], 2)
        flat = pooled.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        summary = x.mean(dim=(2, 3))
        return self.head(torch.cat([flat, summary], dim=1))


class TanhNet(nn.Module):
    """A network with a non-ReLU activation, written with functional calls only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.fc1(x))
        hidden = hidden * 2.0 + F.gelu(hidden)
        return self.fc2(hidden.view(x.shape[0], -1))


def mlp(sizes: tuple[int, ...] = (6, 10, 4), bias: bool = True) -> nn.Sequential:
    """A ReLU multilayer perceptron."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(n_in, n_out, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def without_inplace(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose ReLUs are not in-place (Captum's hooks need that)."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return clone


def relu6_to_relu(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ReLU6 replaced by ReLU."""
    clone = copy.deepcopy(model)
    for parent in clone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU())
    return clone


def model_state(model: nn.Module) -> dict:
    """Everything a call must leave unchanged: tensors, flags, hooks, requires_grad."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {
            k: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for k, m in model.named_modules()
        },
        "modules": {k: id(m) for k, m in model.named_modules()},
        "inplace": {k: getattr(m, "inplace", None) for k, m in model.named_modules()},
        "grads": {k: p.grad for k, p in model.named_parameters()},
    }


def assert_model_unchanged(model: nn.Module, before: dict) -> None:
    """Compare ``model`` with a ``model_state`` snapshot taken before a call."""
    after = model_state(model)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["modules"] == before["modules"]
    assert after["inplace"] == before["inplace"]
    assert all(g is None for g in after["grads"].values()) == all(
        g is None for g in before["grads"].values()
    )
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
