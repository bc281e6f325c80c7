"""Where innspect's LRP deliberately differs from iNNvestigate 2.1.2 (README, same title).

iNNvestigate's own reference data covers none of these (its models have no BatchNorm and
its analyzers are always given a rule), so each difference is shown here directly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import innspect
from innspect.engine.forward import run_forward
from innspect.graph.graph import ModelGraph
from innspect.graph.linear_ops import batchnorm_scale_shift
from innspect.rules import lrp as rules
from tests import lrp_models
from tests.lrp_models import randomise_batchnorm
from tests.test_lrp_analyzer import assert_layer_rule, layer_relevance_differs
from tests.test_lrp_batchnorm import (
    DenseLayer,
    epsilon_on_batchnorm,
    fold_by_hand,
)


# -- BatchNorm fusion -------------------------------------------------------------------------
def innvestigate_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """iNNvestigate 2.1.2's linearised BatchNorm (``apply_mapping_to_fused_bn_layer``).

    ``k = gamma / sqrt(var**2 + eps)`` and ``b = beta - mean / sqrt(var**2 + eps)``: the
    variance is squared and gamma is missing from the bias.
    """
    root = torch.sqrt(bn.running_var**2 + bn.eps)
    return (bn.weight / root).detach(), (bn.bias - bn.running_mean / root).detach()


def fold_with(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        folded.weight = nn.Parameter(conv.weight * scale[:, None, None, None])
        folded.bias = nn.Parameter(conv.bias * scale + shift)
    return folded


def conv_bn_model(var: float | None, gamma: float | None) -> nn.Sequential:
    """conv -> BatchNorm -> ReLU -> dense, with non-zero means and optionally var / gamma."""
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).double()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.8, -0.6, 0.3, -1.1]))
        bn.bias.copy_(torch.tensor([0.2, -0.1, 0.4, 0.05]))
        bn.running_var.copy_(
            torch.full((4,), var) if var is not None else torch.tensor([0.25, 0.5, 2.0, 4.0])
        )
        bn.weight.copy_(
            torch.full((4,), gamma) if gamma is not None else torch.tensor([1.5, 0.6, -0.8, 2.0])
        )
    return model.eval()


def test_batchnorm_fusion_is_exact_where_innvestigates_formula_is_not() -> None:
    model = conv_bn_model(var=None, gamma=None)
    conv, bn = model[0], model[1]
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        expected_output = model(x)
        # innspect's affine view of the BatchNorm is the eval-mode BatchNorm itself...
        h = conv(x)
        scale, shift = batchnorm_scale_shift(bn)
        torch.testing.assert_close(
            h * scale[:, None, None] + shift[:, None, None], bn(h), rtol=1e-14, atol=1e-14
        )
        # ...and iNNvestigate's is not.
        k, b = innvestigate_scale_shift(bn)
        assert not torch.allclose(h * k[:, None, None] + b[:, None, None], bn(h), atol=1e-3)
    graph = ModelGraph(model, x, fuse_batchnorm=True)
    torch.testing.assert_close(
        run_forward(graph, x).values[graph.output_node], expected_output, rtol=1e-12, atol=1e-12
    )
    exact = nn.Sequential(fold_by_hand(conv, bn), *list(model)[2:]).eval()
    buggy = nn.Sequential(fold_with(conv, k, b), *list(model)[2:]).eval()
    for name in ("lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1"):
        ours = innspect.create_analyzer(name, model).analyze(x)
        torch.testing.assert_close(ours, innspect.create_analyzer(name, exact).analyze(x))
        wrong = innspect.create_analyzer(name, buggy).analyze(x)
        assert not torch.allclose(ours, wrong, rtol=1e-2, atol=1e-6), name


def test_innvestigates_formula_is_reproduced_faithfully() -> None:
    """Control: with var = 1 and gamma = 1 both bugs vanish, and the two folds agree."""
    model = conv_bn_model(var=1.0, gamma=1.0)
    conv, bn = model[0], model[1]
    bn.eps = 0.0  # sqrt(1 + eps) and sqrt(1**2 + eps) agree only then
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    k, b = innvestigate_scale_shift(bn)
    buggy = nn.Sequential(fold_with(conv, k, b), *list(model)[2:]).eval()
    torch.testing.assert_close(
        innspect.create_analyzer("lrp.alpha_2_beta_1", model).analyze(x),
        innspect.create_analyzer("lrp.alpha_2_beta_1", buggy).analyze(x),
    )


# -- defaults ---------------------------------------------------------------------------------
def test_lrp_without_a_rule_is_lrp_z() -> None:
    """iNNvestigate's LRP raises "Need LRP rule(s)."; innspect's ``lrp`` defaults to Z."""
    model, x = lrp_models.build("cnn", bias=True), lrp_models.inputs("cnn")
    default = innspect.create_analyzer("lrp", model).analyze(x)
    torch.testing.assert_close(default, innspect.create_analyzer("lrp.z", model).analyze(x))
    assert not torch.allclose(default, innspect.create_analyzer("lrp.z_IB", model).analyze(x))
    for layer in ("0", "3", "7", "9"):
        assert_layer_rule("lrp", model, x, layer, rules.Z())


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("lrp.z", {}),
        ("lrp.epsilon", {"epsilon": 0.5}),
        ("lrp.w_square", {}),
        ("lrp.alpha_2_beta_1", {}),
        ("lrp.z_plus", {}),
        ("lrp.sequential_preset_b", {}),
    ],
)
def test_unfused_batchnorm_gets_epsilon_whatever_the_named_rule(name: str, options) -> None:
    """iNNvestigate gives an unfused BatchNorm the analyzer's own rule (LRPZ: Z, presets:
    AlphaBetaX2m100...); innspect gives it ``bn_layer_rule``, Epsilon(1e-7) by default."""
    model = randomise_batchnorm(DenseLayer())
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer(name, model, reverse_keep_tensors=True, **options)
    relevances = analyzer.explain(x).relevances
    graph = analyzer.graph()
    cat = graph.by_name["norm"].signal_inputs[0]
    features = analyzer.forward_record(x).values[cat]
    expected = epsilon_on_batchnorm(model.norm, features, relevances["norm"])
    torch.testing.assert_close(relevances[graph.infos[cat].name], expected, rtol=1e-10, atol=1e-12)


# -- Zennit's conventions in the Zennit-named composites --------------------------------------
def test_zennit_named_composites_follow_zennit_at_the_layer() -> None:
    """z+ keeps b+ and alpha-beta splits the bias (Zennit), with the 1e-6 signed stabiliser;
    the iNNvestigate names ignore the bias (z+) or add it whole (alpha-beta)."""
    model, x = lrp_models.build("cnn", bias=True), lrp_models.inputs("cnn")
    zennit_plus = rules.AlphaBeta(1, 0, stabilizer=1e-6, split_bias=True)
    zennit_ab = rules.AlphaBeta(2, 1, stabilizer=1e-6, split_bias=True)
    assert_layer_rule("lrp.epsilon_plus", model, x, "3", zennit_plus)
    assert_layer_rule("lrp.z_plus", model, x, "3", rules.ZPlus())
    assert_layer_rule("lrp.epsilon_alpha2_beta1", model, x, "3", zennit_ab)
    assert_layer_rule("lrp.alpha_2_beta_1", model, x, "3", rules.AlphaBeta(2, 1))
    assert_layer_rule("lrp.epsilon_plus", model, x, "9", rules.Epsilon(1e-6))
    assert layer_relevance_differs(model, x, "3", zennit_plus, rules.ZPlus())
    assert layer_relevance_differs(model, x, "3", zennit_ab, rules.AlphaBeta(2, 1))


def test_zennit_named_composites_pass_an_unfused_batchnorm_through() -> None:
    """Zennit's Pass on a BatchNorm its canonizer could not merge; LRP names use Epsilon."""
    model = randomise_batchnorm(DenseLayer())
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.epsilon_plus", model, reverse_keep_tensors=True)
    relevances = analyzer.explain(x).relevances
    graph = analyzer.graph()
    cat_name = graph.infos[graph.by_name["norm"].signal_inputs[0]].name
    torch.testing.assert_close(relevances[cat_name], relevances["norm"])
