"""Issue 26 items 13-14: a TorchScript model keeps its submodule paths as node and parameter
names (iNNtrospect configs and Ray model specs name them), and loading it prints nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import innspect
from innspect.introspect.collect import collect
from innspect.loading.models import ModelSpec, checked_model_spec, load_model


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


def _scripted(tmp_path: Path) -> tuple[Net, Path]:
    torch.manual_seed(0)
    model = Net().eval()
    path = tmp_path / "net.pt"
    torch.jit.script(model).save(str(path))
    return model, path


def test_a_scripted_model_keeps_its_layer_names_and_loads_quietly(tmp_path, capfd) -> None:
    model, path = _scripted(tmp_path)
    capfd.readouterr()
    loaded = load_model(str(path), None, example=torch.randn(1, 1, 8, 8)).module
    assert capfd.readouterr().err == ""  # "dimension inputs[0].shape[0] 0/1 specialized" before
    assert {name for name, _ in loaded.named_parameters()} == {
        name for name, _ in model.named_parameters()
    }  # conv.weight, fc.bias... (layer_5.weight before)
    x = torch.randn(2, 1, 8, 8)
    analyzer = innspect.create_analyzer("lrp.epsilon", loaded)
    names = {info.name for info in analyzer.graph(x).nodes}
    assert {"conv", "fc"} <= names
    torch.testing.assert_close(
        analyzer.analyze(x), innspect.create_analyzer("lrp.epsilon", model).analyze(x)
    )


def test_ray_model_specs_accept_the_scripted_file_of_the_same_model(tmp_path) -> None:
    model, path = _scripted(tmp_path)
    example = np.zeros((1, 1, 8, 8), dtype=np.float32)
    spec, _ = checked_model_spec(model, ModelSpec(str(path)), example)  # "weights differ" before
    assert spec.spec == str(path)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.c(x))


class Nested(nn.Module):
    def __init__(self, functional_relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.act = nn.ReLU()
        self.block = _Block()
        self.act2 = nn.LeakyReLU(0.2)
        self.head = nn.Linear(3 * 6 * 6, 4)
        self.functional_relu = functional_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.block(self.act(self.conv(x))))
        if self.functional_relu:
            x = torch.relu(x)
        return self.head(x.flatten(1))


@pytest.mark.parametrize("functional_relu", [False, True])
def test_stateless_modules_keep_their_names_or_are_left_unnamed(tmp_path, functional_relu):
    # iNNtrospect configs name activations (layer_names_of_interest: ["act", "act2"]).
    torch.manual_seed(0)
    model = Nested(functional_relu).eval()
    path = tmp_path / "nested.pt"
    torch.jit.script(model).save(str(path))
    loaded = load_model(str(path), None, example=torch.randn(1, 1, 8, 8)).module
    x = torch.randn(2, 1, 8, 8)
    analyzer = innspect.create_analyzer("lrp.epsilon", loaded)
    names = {info.name for info in analyzer.graph(x).nodes}
    if functional_relu:
        # Three relu calls, two of them modules: which is which is not guessed.
        assert "act" not in names and "block.act" not in names
        assert "act2" in names  # the one LeakyReLU call is its module's
    else:
        assert {"act", "block.act", "act2"} <= names
        groups = np.array([0, 1])
        profiles = collect(loaded, x.numpy(), groups=groups, layers=["act", "act2"])
        expected = collect(model, x.numpy(), groups=groups, layers=["act", "act2"])
        for layer in ("act", "act2"):
            np.testing.assert_allclose(profiles[layer], expected[layer], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        analyzer.analyze(x), innspect.create_analyzer("lrp.epsilon", model).analyze(x)
    )
