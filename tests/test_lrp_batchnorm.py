"""BatchNorm in the relevance methods: folding, the unfused affine rule, model safety.

- A BatchNorm right after a convolution (1d/2d/3d, transposed) or after a Linear on 2-D
  data is folded into the layer: every rule then gives what it gives on the same model
  folded by hand (weights computed here from the eval-mode formula).
- A BatchNorm that cannot be folded (after a concatenation, as in DenseNet's
  pre-activation layers; after a node used twice; after a Linear on 3-D data) is a
  per-channel affine layer with ``bn_layer_rule`` (default Epsilon), checked against the
  rule written out element-wise.
- The user's model is untouched, also after calls that raised.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import zennit.canonizers as zennit_canonizers
import zennit.composites as zennit_composites
from torch import nn

import innspect
from innspect.engine.forward import run_forward
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph
from innspect.graph.ops import Kind
from tests.lrp_models import randomise_batchnorm
from tests.models import assert_model_unchanged, model_state

TINY = 1e-7  # iNNvestigate's SafeDivide / the default Epsilon


def fold_by_hand(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """``layer`` followed by ``bn`` (eval mode) as one layer of the same type."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = copy.deepcopy(layer)
    # Output channels are axis 0 of a Linear / ConvNd weight, axis 1 of a ConvTranspose's.
    axis = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
    shape = [1] * layer.weight.dim()
    shape[axis] = -1
    bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        folded.weight = nn.Parameter(layer.weight * scale.reshape(shape))
        folded.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return folded


def folded_sequential(model: nn.Sequential) -> nn.Sequential:
    """The same Sequential with every (layer, BatchNorm) pair replaced by its folded layer."""
    modules = list(model)
    layers: list[nn.Module] = []
    index = 0
    while index < len(modules):
        module = modules[index]
        following = modules[index + 1] if index + 1 < len(modules) else None
        if isinstance(following, nn.modules.batchnorm._BatchNorm):
            layers.append(fold_by_hand(module, following))
            index += 2
        else:
            layers.append(copy.deepcopy(module))
            index += 1
    return nn.Sequential(*layers).eval()


# model name -> (builder, input shape)
FOLDABLE: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...]]] = {
    "conv1d": (
        lambda: nn.Sequential(
            nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3)
        ),
        (3, 3, 8),
    ),
    "conv2d": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 5, 3, bias=False),
            nn.BatchNorm2d(5),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(20, 3),
        ),
        (3, 3, 6, 6),
    ),
    "conv3d": (
        lambda: nn.Sequential(
            nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3), nn.ReLU(), nn.Flatten(), nn.Linear(81, 3)
        ),
        (3, 2, 4, 4, 4),
    ),
    "conv_transpose2d": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3),
            nn.ReLU(),
            nn.ConvTranspose2d(3, 4, 3, stride=2),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 9 * 9, 3),
        ),
        (3, 2, 6, 6),
    ),
    "linear": (
        lambda: nn.Sequential(
            nn.Linear(6, 16),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.Linear(16, 12, bias=False),
            nn.BatchNorm1d(12),
            nn.ReLU(),
            nn.Linear(12, 3),
        ),
        (3, 6),
    ),
}
RULES: dict[str, dict] = {
    "lrp.z": {},
    "lrp.epsilon": {"epsilon": 0.1},
    "lrp.alpha_2_beta_1": {},
    "lrp.alpha_1_beta_0_IB": {},
    "lrp.z_plus": {},
    "lrp.w_square": {},
    "lrp.sequential_preset_a_flat": {},
    "lrp.epsilon_plus": {},
    "lrp.epsilon_gamma_box": {"low": -4.0, "high": 4.0},
    "deep_taylor": {},
}


def _build_foldable(model_name: str) -> tuple[nn.Sequential, torch.Tensor]:
    builder, shape = FOLDABLE[model_name]
    torch.manual_seed(1)
    model = randomise_batchnorm(builder())
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return model, x


@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("model_name", sorted(FOLDABLE))
def test_folded_batchnorm_equals_the_model_folded_by_hand(model_name: str, rule_name: str) -> None:
    model, x = _build_foldable(model_name)
    by_hand = folded_sequential(model)
    analyzer = innspect.create_analyzer(rule_name, model, **RULES[rule_name])
    ours = analyzer.analyze(x)
    expected = innspect.create_analyzer(rule_name, by_hand, **RULES[rule_name]).analyze(x)
    graph = analyzer.graph()
    assert not [i for i in graph.nodes if i.kind is Kind.BATCHNORM], "every BatchNorm folds"
    bn_names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    assert sorted(sum((i.fused for i in graph.nodes), [])) == sorted(bn_names)
    assert bool(expected.abs().sum() > 0)
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-10 * scale)


def test_folding_keeps_the_forward_exact() -> None:
    """The folded graph computes the eval-mode model, for every foldable layer type."""
    for model_name in FOLDABLE:
        model, x = _build_foldable(model_name)
        graph = ModelGraph(model, x, fuse_batchnorm=True)
        with torch.no_grad():
            expected = model(x)
        actual = run_forward(graph, x).values[graph.output_node]
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12, msg=model_name)


# -- Linear + BatchNorm1d: only on 2-D data ---------------------------------------------------
class TokenMLP(nn.Module):
    """A Linear over the last axis of (N, C, F) data, then BatchNorm1d over the C axis.

    With C == F the shapes allow folding the BatchNorm into the Linear, which would be
    wrong: the BatchNorm scales axis 1, the Linear's outputs are on axis 2.
    """

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(6, channels)
        self.bn = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()
        self.head = nn.Linear(channels * channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.relu(self.bn(self.fc(x))), 1))


def epsilon_on_batchnorm(
    bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, relevance: torch.Tensor
) -> torch.Tensor:
    """The Epsilon rule (epsilon 1e-7, bias included) on an eval-mode BatchNorm, by channel."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(shape)
    shift = bn.bias.reshape(shape) - bn.running_mean.reshape(shape) * scale
    z = x * scale + shift
    return x * scale * relevance / (z + TINY * torch.where(z >= 0, 1.0, -1.0))


def test_linear_on_3d_data_is_not_folded_with_batchnorm_over_channels() -> None:
    model = randomise_batchnorm(TokenMLP())
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.z", model, reverse_keep_tensors=True)
    relevances = analyzer.explain(x).relevances
    graph = analyzer.graph()
    assert graph.by_name["bn"].kind is Kind.BATCHNORM
    assert graph.by_name["fc"].fused == []
    with torch.no_grad():
        expected_output = model(x)
    torch.testing.assert_close(run_forward(graph, x).values[graph.output_node], expected_output)
    record = analyzer.forward_record(x)
    fc_output = record.values[graph.by_name["fc"].node]
    torch.testing.assert_close(
        relevances["fc"], epsilon_on_batchnorm(model.bn, fc_output, relevances["bn"])
    )


def test_linear_batchnorm_folded_on_2d_data_refuses_other_ranks() -> None:
    """A graph folded for (N, F) data refuses (N, C, F) data instead of computing nonsense."""
    model = randomise_batchnorm(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)))
    analyzer = innspect.create_analyzer("lrp.epsilon", model)
    analyzer.analyze(torch.randn(2, 6, dtype=torch.float64))
    assert analyzer.graph().by_name["0"].fused == ["1"]
    three_d = torch.randn(2, 8, 6, dtype=torch.float64)
    model(three_d)  # the model itself accepts it: BatchNorm1d over the 8 channels
    with pytest.raises(InputError, match="exact on 2-D inputs only"):
        analyzer.analyze(three_d)
    # A new analyzer sees the 3-D data and leaves that BatchNorm unfused.
    fresh = innspect.create_analyzer("lrp.epsilon", model)
    assert bool(torch.isfinite(fresh.analyze(three_d)).all())
    assert fresh.graph().by_name["1"].kind is Kind.BATCHNORM


def test_without_example_input_linear_batchnorm_stays_unfused_but_conv_folds() -> None:
    model = randomise_batchnorm(
        nn.Sequential(
            nn.Conv1d(2, 3, 3),
            nn.BatchNorm1d(3),
            nn.Flatten(),
            nn.Linear(12, 5),
            nn.BatchNorm1d(5),
            nn.Linear(5, 2),
        )
    )
    graph = ModelGraph(model, fuse_batchnorm=True)
    assert graph.by_name["0"].fused == ["1"]
    assert graph.by_name["4"].kind is Kind.BATCHNORM  # rank unknown: left alone
    x = torch.randn(2, 2, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(run_forward(graph, x).values[graph.output_node], expected)
    assert ModelGraph(model, x, fuse_batchnorm=True).by_name["3"].fused == ["4"]


# -- BatchNorm that cannot be folded ----------------------------------------------------------
class DenseLayer(nn.Module):
    """DenseNet's pattern: concatenated features, then BatchNorm -> ReLU -> convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(5)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(5, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.cat([x, self.conv0(x)], dim=1)
        return self.fc(torch.flatten(self.conv1(self.relu(self.norm(features))), 1))


def _alpha_beta_on_batchnorm(alpha: float, beta: float):
    """AlphaBeta (iNNvestigate's whole-bias convention) on a BatchNorm, by channel."""

    def rule(bn, x, relevance):
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(shape)
        shift = bn.bias.reshape(shape) - bn.running_mean.reshape(shape) * scale
        contribution = x * scale  # one input per output: x+ w+ + x- w- is its positive part
        positive, negative = contribution.clamp(min=0), contribution.clamp(max=0)

        def safe(d):
            return torch.where(d == 0, TINY, d)

        return alpha * positive * relevance / safe(positive + shift) - (
            beta * negative * relevance / safe(negative + shift)
        )

    return rule


@pytest.mark.parametrize(
    ("options", "formula"),
    [
        ({}, epsilon_on_batchnorm),
        ({"bn_layer_rule": "Alpha2Beta1"}, _alpha_beta_on_batchnorm(2, 1)),
        ({"bn_layer_rule": "Alpha1Beta0"}, _alpha_beta_on_batchnorm(1, 0)),
    ],
    ids=["default-epsilon", "alpha2beta1", "alpha1beta0"],
)
def test_batchnorm_before_a_convolution_gets_bn_layer_rule(options, formula) -> None:
    model = randomise_batchnorm(DenseLayer())
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.z", model, reverse_keep_tensors=True, **options)
    relevances = analyzer.explain(x).relevances
    graph = analyzer.graph()
    assert graph.by_name["norm"].kind is Kind.BATCHNORM
    cat = graph.by_name["norm"].signal_inputs[0]
    features = analyzer.forward_record(x).values[cat]
    expected = formula(model.norm, features, relevances["norm"])
    torch.testing.assert_close(relevances[graph.infos[cat].name], expected, rtol=1e-10, atol=1e-12)
    assert bool(expected.abs().sum() > 0)


class UsedTwice(nn.Module):
    """The convolution's output feeds the BatchNorm and a skip connection: no folding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(torch.flatten(torch.relu(self.bn(y) + y), 1))


def test_batchnorm_after_a_node_used_twice_gets_bn_layer_rule() -> None:
    model = randomise_batchnorm(UsedTwice())
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.z", model, reverse_keep_tensors=True)
    relevances = analyzer.explain(x).relevances
    graph = analyzer.graph()
    assert graph.by_name["bn"].kind is Kind.BATCHNORM
    add = next(i for i in graph.nodes if i.operation == "add")
    with torch.no_grad():
        y = model.conv(x)
        normalised = model.bn(y)
    # z-rule at the addition, Epsilon at the BatchNorm, summed where y is used twice
    z = normalised + y
    share = relevances[add.name] / torch.where(z == 0, TINY, z)
    expected = y * share + epsilon_on_batchnorm(model.bn, y, normalised * share)
    torch.testing.assert_close(relevances["conv"], expected, rtol=1e-10, atol=1e-12)


def test_batchnorm_without_running_statistics_is_refused_clearly() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3, track_running_stats=False))
    model = nn.Sequential(*model, nn.Linear(3, 2)).double().eval()
    with pytest.raises(ValueError, match="no running statistics"):
        innspect.create_analyzer("lrp.z", model).analyze(torch.randn(4, 4, dtype=torch.float64))


# -- the user's model -------------------------------------------------------------------------
def _training_model_with_hooks() -> tuple[nn.Module, list]:
    torch.manual_seed(4)
    model = randomise_batchnorm(
        nn.Sequential(
            nn.Conv2d(2, 3, 3),
            nn.BatchNorm2d(3),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(48, 6),
            nn.BatchNorm1d(6),
            nn.ReLU(),
            nn.Linear(6, 2),
        )
    )
    model.train()  # a forward in this mode would update the running statistics
    model[7].eval()
    model[0].weight.requires_grad_(False)
    calls: list = []
    # Observing hooks, on layers that are not folded (a hooked layer is never folded).
    model[2].register_forward_hook(lambda *args: calls.append("relu"))
    model[6].register_forward_pre_hook(lambda *args: calls.append("relu1d"))
    return model, calls


@pytest.mark.parametrize(
    "name", ["lrp.z", "lrp.alpha_2_beta_1", "lrp.epsilon_plus", "lrp.sequential_preset_b_flat"]
)
def test_model_is_unchanged_after_lrp_on_a_batchnorm_model(name: str) -> None:
    model, _ = _training_model_with_hooks()
    before = model_state(model)
    analyzer = innspect.create_analyzer(name, model)
    analyzer.analyze(torch.randn(3, 2, 6, 6, dtype=torch.float64))
    assert analyzer.graph().by_name["4"].fused == ["5"]  # the rank probe ran a forward
    assert_model_unchanged(model, before)


def test_model_is_unchanged_after_calls_that_raised() -> None:
    model, _ = _training_model_with_hooks()
    before = model_state(model)
    analyzer = innspect.create_analyzer("lrp.epsilon", model)
    with pytest.raises(InputError):
        analyzer.analyze(torch.randn(3, 2, 2, 2, dtype=torch.float64))  # too small: conv fails
    assert_model_unchanged(model, before)
    # The failed call kept no graph: the next one folds Linear + BatchNorm1d as usual.
    analyzer.analyze(torch.randn(3, 2, 6, 6, dtype=torch.float64))
    assert analyzer.graph().by_name["4"].fused == ["5"]
    assert_model_unchanged(model, before)
    # A failure inside the reverse walk (an unfused BatchNorm without statistics).
    broken = copy.deepcopy(model)
    broken[5] = nn.BatchNorm1d(6, track_running_stats=False).double()  # cannot be folded
    broken_before = model_state(broken)
    with pytest.raises(ValueError, match="no running statistics"):
        innspect.create_analyzer("lrp.epsilon", broken).analyze(
            torch.randn(3, 2, 6, 6, dtype=torch.float64)
        )
    assert_model_unchanged(broken, broken_before)


def test_zennit_composite_folds_linear_batchnorm_like_zennit() -> None:
    """Zennit's SequentialMergeBatchNorm merges Linear + BatchNorm1d too; on 2-D data the
    composites now agree with it exactly (eps = 0 removes Zennit's sqrt(1 + eps) leftover)."""
    model, x = _build_foldable("linear")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eps = 0.0
    ours = innspect.create_analyzer("lrp.epsilon_alpha2_beta1", model).analyze(x)
    composite = zennit_composites.EpsilonAlpha2Beta1(
        canonizers=[zennit_canonizers.SequentialMergeBatchNorm()]
    )
    leaf = x.clone().requires_grad_(True)
    with composite.context(copy.deepcopy(model)) as modified:
        out = modified(leaf)
        rows, selected = torch.arange(x.shape[0]), out.argmax(dim=1)
        start = torch.zeros_like(out)
        start[rows, selected] = out[rows, selected].detach()
        (expected,) = torch.autograd.grad(out, leaf, start)
    assert bool(expected.abs().sum() > 0)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def _folding_net() -> nn.Module:
    """A convolution and a Linear, each with a batch norm folded into it (on 2-D data)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )
    return randomise_batchnorm(net)  # float64


def _sgd_step(net: nn.Module, x: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net(x).square().sum().backward()
    optimizer.step()


def _running_statistics_update(net: nn.Module, x: torch.Tensor) -> None:
    net.train()
    with torch.no_grad():
        net(x * 3 + 1)
    net.eval()


def _load_other_weights(net: nn.Module, x: torch.Tensor) -> None:
    other = _folding_net()
    for module in other.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.normal_(module.weight)
    net.load_state_dict(other.state_dict())


def _new_parameters(net: nn.Module, x: torch.Tensor) -> None:
    net[0].weight = nn.Parameter(net[0].weight.detach() * -2)  # folded
    net[7].weight = nn.Parameter(net[7].weight.detach() * -2)  # not folded


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.alpha_1_beta_0", "deep_lift"])
@pytest.mark.parametrize(
    "change", [_sgd_step, _running_statistics_update, _load_other_weights, _new_parameters]
)
def test_folded_batchnorm_follows_the_model_after_a_change(method: str, change) -> None:
    """An analyzer kept across a training step explains the model as it is now (its folded
    copies are remade), not as it was when its graph was captured."""
    net = _folding_net()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer(method, net)
    before = analyzer.analyze(x)
    graph = analyzer.graph(x)
    assert len(graph.folds) == 2 and not graph.stale_folds()
    change(net, x)
    assert graph.stale_folds()
    after = analyzer.analyze(x)
    assert not graph.stale_folds()
    expected = innspect.create_analyzer(method, net).analyze(x)
    torch.testing.assert_close(after, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(after, before, rtol=1e-3, atol=1e-4)


def test_folded_layer_that_changed_shape_asks_for_a_new_analyzer() -> None:
    net = _folding_net()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.epsilon", net)
    analyzer.analyze(x)
    net[1].running_mean = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(InputError, match="changed shape since the graph was captured"):
        analyzer.analyze(x)
