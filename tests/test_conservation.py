"""Relevance conservation (float64, bias-free ReLU networks) and the conservation report."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import innspect
from innspect.evaluation.conservation import conservation_report
from tests import lrp_models

MODELS = sorted(lrp_models.INPUT_SHAPES)

# (analyzer name, options): every configuration that must conserve on a bias-free network.
CONSERVATIVE = {
    "z": ("lrp.z", {}),
    "z_IB": ("lrp.z_IB", {}),
    "z_plus": ("lrp.z_plus", {}),
    "alpha_1_beta_0_IB": ("lrp.alpha_1_beta_0_IB", {}),
    "z+wsquare_input": ("lrp.z", {"input_layer_rule": "WSquare"}),
    "z+flat_input": ("lrp.z", {"input_layer_rule": "Flat"}),
    "z+bounded_input": ("lrp.z", {"input_layer_rule": (-3.0, 3.0)}),
    "zplus+bounded_input": ("lrp.z_plus", {"input_layer_rule": (-3.0, 3.0)}),
    "deep_taylor": ("deep_taylor", {}),
    "deep_taylor.bounded": ("deep_taylor.bounded", {"low": -3.0, "high": 3.0}),
}


def _check_conserved(name: str, options: dict[str, Any], model_name: str) -> None:
    model = lrp_models.build(model_name, bias=False)
    analyzer = innspect.create_analyzer(name, model, **options)
    report = conservation_report(analyzer, lrp_models.inputs(model_name))
    assert len(report.nodes) >= 5
    for node, balance in report.nodes.items():
        assert bool((balance.arriving.abs() > 0).any()), f"no relevance reached {node}"
        difference = balance.relative_difference
        assert float(difference.max()) <= 1e-8, f"{name} on {model_name}: node {node} {difference}"
    torch.testing.assert_close(report.input_total, report.output_total, rtol=1e-8, atol=0)
    assert bool((report.output_total.abs() > 0).all())


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("config", sorted(CONSERVATIVE))
def test_conservative_rules_conserve_at_every_node(config: str, model_name: str) -> None:
    name, options = CONSERVATIVE[config]
    _check_conserved(name, options, model_name)


@pytest.mark.parametrize("name", ["lrp.w_square", "lrp.flat"])
def test_wsquare_and_flat_on_every_layer_conserve(name: str) -> None:
    _check_conserved(name, {}, "mlp")


def test_report_measures_what_epsilon_absorbs() -> None:
    """At the last layer, leaving = sum_j R_j z_j / (z_j + eps sign z_j), by hand."""
    model = lrp_models.build("mlp")
    x = lrp_models.inputs("mlp")
    analyzer = innspect.create_analyzer("lrp.epsilon", model, epsilon=0.5)
    report = conservation_report(analyzer, x)
    last = report.nodes["4"]
    with torch.no_grad():
        y = model(x)
    selected = y.max(dim=1).values
    expected = selected * selected / (selected + 0.5 * torch.sign(selected))
    torch.testing.assert_close(last.arriving, selected)
    torch.testing.assert_close(last.leaving, expected)
    assert float(last.relative_difference.min()) > 1e-3
    assert report.worst_nodes(1)[0][1] == pytest.approx(report.max_relative_difference())


def test_report_lists_nodes_in_reverse_order_and_totals() -> None:
    model = lrp_models.build("cnn")
    x = lrp_models.inputs("cnn")
    analyzer = innspect.create_analyzer("lrp.z", model)
    report = conservation_report(analyzer, x)
    assert list(report.nodes)[:3] == ["9", "8", "7"]
    attribution = analyzer.analyze(x)
    torch.testing.assert_close(report.input_total, attribution.sum(dim=(1, 2, 3)))
    text = str(report)
    assert "arriving" in text and "(output -> input)" in text
    # the option is switched off again afterwards
    assert analyzer.reverse_options.node_sums is False
    assert analyzer.explain(x).node_sums == {}


def test_report_refuses_analyzers_without_reverse_walk() -> None:
    model = lrp_models.build("mlp")
    with pytest.raises(TypeError, match="reverse walk"):
        conservation_report(innspect.create_analyzer("input", model), lrp_models.inputs("mlp"))


@pytest.mark.parametrize("model_name", ["mlp", "cnn", "residual", "concat"])
def test_lrp_z_equals_input_times_gradient_on_bias_free_relu_networks(model_name: str) -> None:
    model = lrp_models.build(model_name)
    x = lrp_models.inputs(model_name)
    lrp = innspect.create_analyzer("lrp.z", model).analyze(x)
    leaf = x.clone().requires_grad_(True)
    output = model(leaf)
    output.max(dim=1).values.sum().backward()
    torch.testing.assert_close(lrp, x * leaf.grad, rtol=1e-10, atol=1e-12)
