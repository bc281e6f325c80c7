"""The LRP analyzer: rule specifications, presets, codes, errors, and model safety.

Which rule a layer got is checked from behaviour: with ``reverse_keep_tensors`` the
signal leaving a layer must equal the expected rule applied to the signal arriving there.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import innspect
from innspect.analyzers.lrp import LRP, is_conv, is_dense
from innspect.errors import UnsupportedNodeError
from innspect.rules import lrp as rules
from tests import lrp_models

ALL_LRP_NAMES = [
    "lrp",
    "lrp.z",
    "lrp.z_IB",
    "lrp.epsilon",
    "lrp.epsilon_IB",
    "lrp.w_square",
    "lrp.flat",
    "lrp.alpha_2_beta_1",
    "lrp.alpha_2_beta_1_IB",
    "lrp.alpha_1_beta_0",
    "lrp.alpha_1_beta_0_IB",
    "lrp.z_plus",
    "lrp.z_plus_fast",
    "lrp.sequential_preset_a",
    "lrp.sequential_preset_b",
    "lrp.sequential_preset_a_flat",
    "lrp.sequential_preset_b_flat",
    "lrp.sequential_preset_b_flat_until_idx",
    "lrp.epsilon_plus",
    "lrp.epsilon_plus_flat",
    "lrp.epsilon_alpha2_beta1",
    "lrp.epsilon_alpha2_beta1_flat",
    "deep_taylor",
]
REQUIRED_OPTIONS: dict[str, dict[str, Any]] = {
    "lrp.alpha_beta": {"alpha": 3},
    "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
    "deep_taylor.bounded": {"low": -3.0, "high": 3.0},
}


def assert_layer_rule(
    name_or_analyzer: Any,
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    expected_rule: Any,
    **options,
) -> None:
    """The signal leaving ``layer`` is ``expected_rule`` applied to the signal arriving there."""
    analyzer = (
        innspect.create_analyzer(name_or_analyzer, model, reverse_keep_tensors=True, **options)
        if isinstance(name_or_analyzer, str)
        else name_or_analyzer
    )
    relevances = analyzer.explain(x).relevances
    graph = analyzer.graph()
    info = graph.by_name[layer]
    (source,) = info.signal_inputs
    record = analyzer.forward_record(x)
    expected = expected_rule.relevance(
        graph.linear_op(info), record.values[source], record.values[info.node], relevances[layer]
    )
    actual = relevances[graph.infos[source].name]
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12, msg=f"layer {layer}")


def layer_relevance_differs(model, x, layer, rule_a, rule_b) -> bool:
    """Sanity: the two rules give different results at this layer (the check can fail)."""
    op = innspect.create_analyzer("lrp.z", model, reverse_keep_tensors=True)
    relevances = op.explain(x).relevances
    graph = op.graph()
    info = graph.by_name[layer]
    (source,) = info.signal_inputs
    record = op.forward_record(x)
    args = (graph.linear_op(info), record.values[source], record.values[info.node])
    a = rule_a.relevance(*args, relevances[layer])
    b = rule_b.relevance(*args, relevances[layer])
    return not torch.allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.fixture
def mlp_case() -> tuple[nn.Module, torch.Tensor]:
    return lrp_models.build("mlp", bias=True), lrp_models.inputs("mlp")


@pytest.fixture
def cnn_case() -> tuple[nn.Module, torch.Tensor]:
    return lrp_models.build("cnn", bias=True), lrp_models.inputs("cnn")


# -- rule specification forms ---------------------------------------------------------------
def test_rule_given_by_name_and_by_object(mlp_case) -> None:
    model, x = mlp_case
    for layer in ("0", "2", "4"):
        assert_layer_rule("lrp", model, x, layer, rules.Epsilon(), rule="Epsilon")
        assert_layer_rule("lrp", model, x, layer, rules.Epsilon(0.3), rule=rules.Epsilon(0.3))
        assert_layer_rule("lrp", model, x, layer, rules.Gamma(), rule=rules.Gamma)
    assert layer_relevance_differs(model, x, "2", rules.Epsilon(0.3), rules.Z())


def test_rule_list_gives_one_rule_per_layer_in_order(mlp_case) -> None:
    model, x = mlp_case
    spec = ["WSquare", rules.AlphaBeta(2, 1), {"rule": "Epsilon", "epsilon": 0.2}]
    expected = [rules.WSquare(), rules.AlphaBeta(2, 1), rules.Epsilon(0.2)]
    for layer, rule in zip(("0", "2", "4"), expected, strict=True):
        assert_layer_rule("lrp", model, x, layer, rule, rule=spec)
    assert layer_relevance_differs(model, x, "2", rules.AlphaBeta(2, 1), rules.Epsilon(0.2))


def test_rule_list_of_wrong_length_is_refused(mlp_case) -> None:
    model, x = mlp_case
    analyzer = innspect.create_analyzer("lrp", model, rule=["Z", "Z"])
    with pytest.raises(ValueError, match="2 entries but the model has 3 linear layers"):
        analyzer.analyze(x)


def test_conditions_first_match_wins(cnn_case) -> None:
    model, x = cnn_case
    spec = [(is_dense, rules.Epsilon(0.5)), (is_conv, "Alpha2Beta1"), (lambda i: True, "Z")]
    assert_layer_rule("lrp", model, x, "3", rules.AlphaBeta(2, 1), rule=spec)
    assert_layer_rule("lrp", model, x, "7", rules.Epsilon(0.5), rule=spec)
    assert_layer_rule("lrp", model, x, "9", rules.Epsilon(0.5), rule=spec)


def test_no_matching_condition_names_the_layer(cnn_case) -> None:
    model, x = cnn_case
    analyzer = innspect.create_analyzer("lrp", model, rule=[(is_conv, "Z")])
    with pytest.raises(UnsupportedNodeError, match="'9'.*Linear.*no \\(condition, rule\\)"):
        analyzer.analyze(x)


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ("Flat", rules.Flat()),
        ("WSquare", rules.WSquare()),
        (rules.Epsilon(0.7), rules.Epsilon(0.7)),
        ((-2.0, 3.0), rules.Bounded(-2.0, 3.0)),
        ([-2.0, 3.0], rules.Bounded(-2.0, 3.0)),
    ],
)
def test_input_layer_rule_forms(cnn_case, spec, rule) -> None:
    model, x = cnn_case
    assert_layer_rule("lrp.z", model, x, "0", rule, input_layer_rule=spec)
    assert_layer_rule("lrp.z", model, x, "3", rules.Z(), input_layer_rule=spec)
    assert layer_relevance_differs(model, x, "0", rule, rules.Z())


def test_input_layer_is_found_through_flatten() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    assert_layer_rule("lrp.z", model, x, "1", rules.Flat(), input_layer_rule="Flat")
    assert_layer_rule("lrp.z", model, x, "3", rules.Z(), input_layer_rule="Flat")


def test_until_layer_idx(mlp_case) -> None:
    model, x = mlp_case
    options = {"rule": "Epsilon", "until_layer_idx": 1, "until_layer_rule": "Flat"}
    assert_layer_rule("lrp", model, x, "0", rules.Flat(), **options)
    assert_layer_rule("lrp", model, x, "2", rules.Flat(), **options)
    assert_layer_rule("lrp", model, x, "4", rules.Epsilon(), **options)
    # the input layer rule has priority, as in iNNvestigate
    assert_layer_rule("lrp", model, x, "0", rules.WSquare(), input_layer_rule="WSquare", **options)


def test_presets_choose_rules_by_layer_type(cnn_case) -> None:
    model, x = cnn_case
    a, b = rules.AlphaBeta(1, 0, bias=True), rules.AlphaBeta(2, 1, bias=True)
    dense = rules.Epsilon(0.1)
    for name, first, conv in [
        ("lrp.sequential_preset_a", a, a),
        ("lrp.sequential_preset_b", b, b),
        ("lrp.sequential_preset_a_flat", rules.Flat(), a),
        ("lrp.sequential_preset_b_flat", rules.Flat(), b),
    ]:
        assert_layer_rule(name, model, x, "0", first)
        assert_layer_rule(name, model, x, "3", conv)
        assert_layer_rule(name, model, x, "7", dense)
        assert_layer_rule(name, model, x, "9", dense)
    assert layer_relevance_differs(model, x, "3", a, b)
    preset = innspect.create_analyzer("lrp.sequential_preset_a_flat", model)
    assert preset.rule_of("0", x) == rules.Flat()
    assert preset.rule_of("3", x) == a
    with pytest.raises(KeyError, match="no node named"):
        preset.rule_of("nope")


def test_preset_b_flat_until_idx(cnn_case) -> None:
    model, x = cnn_case
    name = "lrp.sequential_preset_b_flat_until_idx"
    assert_layer_rule(name, model, x, "3", rules.Flat(), until_layer_idx=2)
    assert_layer_rule(name, model, x, "7", rules.Flat(), until_layer_idx=2)
    assert_layer_rule(name, model, x, "9", rules.Epsilon(0.1), until_layer_idx=2)
    assert_layer_rule(name, model, x, "3", rules.AlphaBeta(2, 1), until_layer_idx=0)


def test_rule_codes(cnn_case) -> None:
    model, x = cnn_case
    assert_layer_rule("lrp", model, x, "0", rules.Bounded(), rule="zbab")
    assert_layer_rule(
        "lrp", model, x, "0", rules.Bounded(0, 2), rule="zbab", input_layer_rule=(0, 2)
    )
    assert_layer_rule("lrp", model, x, "0", rules.WSquare(), rule="wwab")
    for code in ("zbab", "wwab"):
        for layer in ("3", "7", "9"):
            assert_layer_rule("lrp", model, x, layer, rules.AlphaBeta(2, 1), rule=code)
    with pytest.raises(ValueError, match="contradicts"):
        innspect.create_analyzer("lrp", model, rule="wwab", input_layer_rule="Flat")


def test_named_variants_use_their_rule(mlp_case) -> None:
    model, x = mlp_case
    cases = {
        "lrp.z": rules.Z(),
        "lrp.z_IB": rules.Z(bias=False),
        "lrp.epsilon": rules.Epsilon(),
        "lrp.epsilon_IB": rules.Epsilon(bias=False),
        "lrp.w_square": rules.WSquare(),
        "lrp.flat": rules.Flat(),
        "lrp.alpha_2_beta_1": rules.AlphaBeta(2, 1),
        "lrp.alpha_2_beta_1_IB": rules.AlphaBeta(2, 1, bias=False),
        "lrp.alpha_1_beta_0": rules.AlphaBeta(1, 0),
        "lrp.alpha_1_beta_0_IB": rules.AlphaBeta(1, 0, bias=False),
        "lrp.z_plus": rules.ZPlus(),
        "lrp.z_plus_fast": rules.ZPlusFast(),
    }
    for name, rule in cases.items():
        assert_layer_rule(name, model, x, "2", rule)
    assert_layer_rule("lrp.epsilon", model, x, "2", rules.Epsilon(0.3), epsilon=0.3)
    assert_layer_rule("lrp.alpha_beta", model, x, "2", rules.AlphaBeta(3, 2), beta=2)


def test_lrp_starts_from_the_selected_output_value(mlp_case) -> None:
    model, x = mlp_case
    explanation = innspect.create_analyzer("lrp.z", model, reverse_keep_tensors=True).explain(x)
    start = explanation.relevances["4"]
    with torch.no_grad():
        y = model(x)
    expected = torch.zeros_like(y)
    rows = torch.arange(y.shape[0])
    expected[rows, y.argmax(1)] = y.max(1).values
    torch.testing.assert_close(start, expected)


# -- BatchNorm --------------------------------------------------------------------------------
class BNFirst(nn.Module):
    """BatchNorm before a convolution (as in DenseNet): it cannot be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(self.relu(self.bn(x))), 1))


def test_unfusable_batchnorm_gets_bn_layer_rule() -> None:
    model = lrp_models.randomise_batchnorm(BNFirst())
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    assert_layer_rule("lrp.z", model, x, "bn", rules.Epsilon())
    assert_layer_rule("lrp.z", model, x, "bn", rules.Z(), bn_layer_rule="Z")
    assert_layer_rule("lrp.z", model, x, "bn", rules.AlphaBeta(2, 1), bn_layer_rule="Alpha2Beta1")
    assert layer_relevance_differs(model, x, "bn", rules.Epsilon(), rules.AlphaBeta(2, 1))


def test_batchnorm_after_conv_is_folded_like_by_hand() -> None:
    torch.manual_seed(2)
    model = lrp_models.randomise_batchnorm(
        nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)
        )
    )
    conv, bn = model[0], model[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(2, 3, 3).double()
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    by_hand = nn.Sequential(folded, nn.ReLU(), nn.Flatten(), model[4]).eval()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    for name in ("lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.sequential_preset_a_flat"):
        torch.testing.assert_close(
            innspect.create_analyzer(name, model).analyze(x),
            innspect.create_analyzer(name, by_hand).analyze(x),
        )


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("lrp", {"rule": None}, ValueError, "needs rule"),
        ("lrp", {"rule": "NoSuchRule"}, ValueError, "unknown LRP rule"),
        ("lrp", {"rule": 42}, TypeError, "cannot use 42 as an LRP rule"),
        ("lrp", {"rule": []}, ValueError, "empty list"),
        ("lrp", {"until_layer_idx": 1}, ValueError, "go together"),
        ("lrp", {"until_layer_idx": -1, "until_layer_rule": "Flat"}, ValueError, "must be >= 0"),
        ("lrp", {"input_layer_rule": "Bogus"}, ValueError, "input_layer_rule"),
        ("lrp.epsilon", {"epsilon": 0}, ValueError, "epsilon must be > 0"),
        ("lrp.alpha_beta", {}, ValueError, "needs alpha or beta"),
        ("lrp.alpha_beta", {"alpha": 2, "beta": 2}, ValueError, "alpha - beta = 1"),
        ("deep_taylor.bounded", {"low": 0}, ValueError, "needs both low and high"),
        ("lrp.epsilon_gamma_box", {"high": 1}, ValueError, "needs low and high"),
        ("lrp.epsilon_plus", {"rule": "Z"}, TypeError, "fixes its rules"),
    ],
)
def test_invalid_arguments_give_clear_errors(name, options, error, message) -> None:
    with pytest.raises(error, match=message):
        innspect.create_analyzer(name, lrp_models.build("mlp"), **options)


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        # An operation no rule covers (products of two signals have rules since issue 16).
        return torch.cumprod(h, dim=1)


@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon_plus", "deep_taylor"])
def test_node_without_mapping_is_an_error_naming_it(name: str) -> None:
    model = Gated().double()
    with pytest.raises(UnsupportedNodeError, match="'cumprod'"):
        innspect.create_analyzer(name, model).analyze(torch.randn(2, 4, dtype=torch.float64))


# -- every name, the model, persistence -------------------------------------------------------
@pytest.mark.parametrize("name", ALL_LRP_NAMES + sorted(REQUIRED_OPTIONS))
def test_every_name_runs_and_conserves_roughly(name: str) -> None:
    model = lrp_models.build("residual", bias=True)
    x = lrp_models.inputs("residual", nonnegative=True)
    explanation = innspect.create_analyzer(name, model, **REQUIRED_OPTIONS.get(name, {})).explain(x)
    assert explanation.attribution.shape == x.shape
    assert bool(torch.isfinite(explanation.attribution).all())
    assert bool((explanation.attribution != 0).any())


def test_model_is_unchanged_by_analysis() -> None:
    model = lrp_models.randomise_batchnorm(
        nn.Sequential(
            nn.Conv2d(2, 3, 3),
            nn.BatchNorm2d(3),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(48, 2),
        )
    )
    model.train()
    model[4].eval()
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for m in model.modules()
    ]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    for name in ALL_LRP_NAMES + sorted(REQUIRED_OPTIONS):
        innspect.create_analyzer(name, model, **REQUIRED_OPTIONS.get(name, {})).analyze(x)
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), key
    assert [m.training for m in model.modules()] == flags
    assert hooks == [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for m in model.modules()
    ]
    assert model[2].inplace is True


def test_rule_objects_survive_save_and_load(tmp_path, cnn_case) -> None:
    model, x = cnn_case
    analyzer = innspect.create_analyzer(
        "lrp",
        model,
        rule=[rules.Bounded(-1, 1), "Alpha2Beta1", rules.Epsilon(0.25), rules.Epsilon(0.5)],
        input_layer_rule=(-2.0, 2.0),
        bn_layer_rule=rules.Epsilon(0.3),
    )
    path = tmp_path / "lrp.npz"
    analyzer.save_npz(path)
    loaded = innspect.Analyzer.load_npz(path, model)
    assert isinstance(loaded, LRP)
    torch.testing.assert_close(loaded.analyze(x), analyzer.analyze(x))
    name, state = innspect.create_analyzer("lrp.epsilon", model, epsilon=0.2).save()
    torch.testing.assert_close(
        innspect.Analyzer.load(name, state, model).analyze(x),
        innspect.create_analyzer("lrp.epsilon", model, epsilon=0.2).analyze(x),
    )


# -- other node kinds ---------------------------------------------------------------------------
class EmbeddingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(3 * 4, 2, bias=False)

    def forward(self, tokens):
        return self.fc(self.embed(tokens).flatten(1))


def test_embedding_relevance_is_summed_over_the_embedding_axis() -> None:
    torch.manual_seed(0)
    model = EmbeddingNet().double()
    tokens = torch.tensor([[1, 4, 7], [2, 2, 9]])
    analyzer = innspect.create_analyzer("lrp.z", model, reverse_keep_tensors=True)
    explanation = analyzer.explain(tokens)
    assert explanation.attribution.shape == (2, 3)
    torch.testing.assert_close(explanation.attribution, explanation.relevances["embed"].sum(-1))
    torch.testing.assert_close(explanation.attribution.sum(1), explanation.scores)


class ScaledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.fc(x * 3.0)


def test_scaling_by_a_constant_passes_relevance_through() -> None:
    torch.manual_seed(0)
    model = ScaledNet().double()
    x = torch.randn(2, 3, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.z", model, reverse_keep_tensors=True)
    explanation = analyzer.explain(x)
    mul = next(i.name for i in analyzer.graph().nodes if i.operation == "mul")
    torch.testing.assert_close(explanation.attribution, explanation.relevances[mul])
    # Zennit hooks no module there: its composites take the gradient (3x the relevance)
    zennit_style = innspect.create_analyzer("lrp.epsilon_plus", model).analyze(x)
    torch.testing.assert_close(zennit_style, 3.0 * explanation.attribution, rtol=1e-4, atol=1e-8)


def test_subtraction_splits_relevance_like_a_z_rule() -> None:
    class Difference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)
            self.fc = nn.Linear(4, 2, bias=False)

        def forward(self, x):
            return self.fc(torch.relu(self.a(x) - self.b(x)))

    torch.manual_seed(1)
    model = Difference().double()
    x = torch.randn(3, 3, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.z", model, reverse_keep_tensors=True)
    relevances = analyzer.explain(x).relevances
    record = analyzer.forward_record(x)
    graph = analyzer.graph()
    sub = next(i for i in graph.nodes if i.operation == "sub")
    left, right = (record.values[n] for n in sub.signal_inputs)
    share = relevances[sub.name] / torch.where(left - right == 0, 1e-7, left - right)
    torch.testing.assert_close(relevances["a"], left * share)
    torch.testing.assert_close(relevances["b"], -right * share)


class FunctionalLayers(nn.Module):
    """A convolution and a dense layer written with F.conv2d / F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 2, 3, 3))
        self.b1 = nn.Parameter(torch.randn(4))
        self.w2 = nn.Parameter(torch.randn(3, 4 * 4 * 4))

    def forward(self, x):
        hidden = torch.relu(torch.nn.functional.conv2d(x, self.w1, self.b1, padding=1))
        return torch.nn.functional.linear(hidden.flatten(1), self.w2)


def test_presets_recognise_functional_layers() -> None:
    torch.manual_seed(0)
    model = FunctionalLayers().double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    assert_layer_rule("lrp.sequential_preset_b", model, x, "conv2d", rules.AlphaBeta(2, 1))
    assert_layer_rule("lrp.sequential_preset_b", model, x, "linear", rules.Epsilon(0.1))
