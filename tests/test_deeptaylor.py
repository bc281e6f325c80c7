"""Deep Taylor: rules per node, the max(0, y) start, the bounded variant, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import innspect
from innspect.errors import UnsupportedNodeError
from innspect.rules import lrp as rules
from tests import lrp_models
from tests.test_lrp_analyzer import assert_layer_rule


def test_every_linear_layer_gets_z_plus() -> None:
    model, x = lrp_models.build("cnn", bias=True), lrp_models.inputs("cnn")
    for layer in ("0", "3", "7", "9"):  # "9" has no ReLU after it: still z+ (iNNvestigate)
        assert_layer_rule("deep_taylor", model, x, layer, rules.ZPlus())


def test_bounded_variant_uses_z_b_on_the_input_layer_only() -> None:
    model, x = lrp_models.build("cnn", bias=True), lrp_models.inputs("cnn")
    options = {"low": -2.0, "high": 3.0}
    assert_layer_rule("deep_taylor.bounded", model, x, "0", rules.Bounded(-2.0, 3.0), **options)
    assert_layer_rule("deep_taylor.bounded", model, x, "3", rules.ZPlus(), **options)


def test_starts_from_the_positive_part_of_the_output() -> None:
    model, x = lrp_models.build("mlp", bias=True), lrp_models.inputs("mlp")
    with torch.no_grad():
        y = model(x)
    lowest = y.argmin(dim=1)
    assert bool((y.min(dim=1).values < 0).all())
    analyzer = innspect.create_analyzer("deep_taylor", model, neuron_selection_mode="index")
    assert bool((analyzer.analyze(x, neuron_selection=lowest) == 0).all())
    # on a positive output it is z+ everywhere, starting from y
    positive = innspect.create_analyzer("deep_taylor", model).analyze(x)
    torch.testing.assert_close(positive, innspect.create_analyzer("lrp.z_plus", model).analyze(x))


def test_average_pooling_is_a_gradient_and_addition_a_z_rule() -> None:
    model = lrp_models.build("residual")
    x = lrp_models.inputs("residual")
    analyzer = innspect.create_analyzer("deep_taylor", model, reverse_keep_tensors=True)
    relevances = analyzer.explain(x).relevances
    pooled = relevances["pool"]  # (N, C, 1, 1) over a 5x5 map: gradient spreads R / 25
    before_pool = relevances["relu:1"]
    torch.testing.assert_close(before_pool, pooled.expand_as(before_pool) / 25)
    graph = analyzer.graph()
    add = next(i for i in graph.nodes if i.operation == "add")
    record = analyzer.forward_record(x)
    left, right = (record.values[n] for n in add.signal_inputs)
    share = relevances[add.name] / (left + right)
    torch.testing.assert_close(relevances["conv2"], left * share)


class TanhNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_non_relu_networks_are_refused_naming_the_node() -> None:
    model = TanhNet().double()
    with pytest.raises(UnsupportedNodeError, match="'act' \\(Tanh\\).*ReLU"):
        innspect.create_analyzer("deep_taylor", model).analyze(
            torch.randn(2, 4, dtype=torch.float64)
        )


def test_scaling_is_refused() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x * 2.0)

    with pytest.raises(UnsupportedNodeError, match="mul"):
        innspect.create_analyzer("deep_taylor", Scaled().double()).analyze(
            torch.randn(2, 3, dtype=torch.float64)
        )


def test_relu6_counts_as_a_rectifier() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU6(), nn.Linear(6, 3)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    relevances = (
        innspect.create_analyzer("deep_taylor", model, reverse_keep_tensors=True)
        .explain(x)
        .relevances
    )
    torch.testing.assert_close(relevances["0"], relevances["1"])  # passed through unchanged
