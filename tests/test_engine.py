"""Capture, canonicalisation, the forward record, the reverse walk and their guarantees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.engine.forward import run_forward
from innspect.engine.selection import resolve
from innspect.graph.graph import ModelGraph
from innspect.graph.ops import Kind
from innspect.rules.strategy import EngineStrategy
from tests.models import FunctionalNet, assert_model_unchanged, mlp, model_state


class SoftmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.fc(x), dim=1)


class GatedNet(nn.Module):
    """x * sigmoid(y): a product of two input-dependent tensors (no gradient-free mapping).
    Not x * sigmoid(x), which canonicalisation recognises as one SiLU node."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(x)
        return hidden * torch.sigmoid(hidden.flip(-1))


class LoopNet(nn.Module):
    """A Python loop over a shape: torch.fx cannot trace it, torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for i in range(x.shape[1]):
            total = total + x[:, i : i + 1] * (i + 1)
        return self.fc(x * total)


class DataDependentNet(nn.Module):
    """Control flow on values: neither fx nor export can capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class TwoInputs(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class TupleOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x * 2


def _conv_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


# -- capture and canonicalisation -------------------------------------------------------------
def test_functional_operations_are_nodes_of_their_own() -> None:
    graph = ModelGraph(FunctionalNet())
    kinds = {info.name: info.kind for info in graph.nodes}
    assert kinds["conv1"] is Kind.LINEAR and kinds["relu1"] is Kind.ACTIVATION
    assert Kind.REARRANGE in kinds.values()  # cat, chunk, permute, reshape, slicing
    operations = {info.operation for info in graph.nodes}
    assert {"cat", "chunk", "add", "max_pool2d", "interpolate", "adaptive_avg_pool2d"} <= operations


def test_inplace_operations_become_out_of_place_without_touching_the_model() -> None:
    model = FunctionalNet()
    before = model_state(model)
    graph = ModelGraph(model)
    assert all(getattr(info.module, "inplace", False) is False for info in graph.nodes)
    assert "iadd" not in {info.operation for info in graph.nodes}
    assert model.relu2.inplace is True
    assert_model_unchanged(model, before)
    # The record keeps conv2's output as it was before the in-place addition and ReLU.
    x = torch.randn(2, 3, 8, 8)
    analyzer = innspect.create_analyzer("gradient", model)
    record = analyzer.forward_record(x)
    conv2 = analyzer.graph().by_name["conv2"].node
    a = model.relu1(model.conv1(x))
    torch.testing.assert_close(record.values[conv2], model.conv2(a))


def test_shared_module_called_twice_gets_one_name_per_call() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.fc(self.relu(x)))

    names = [info.name for info in ModelGraph(Shared()).nodes]
    assert "relu" in names and "relu:1" in names


def test_batchnorm_fusion_gives_the_same_output_and_leaves_the_model_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()).double()
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    model.train()
    before = model_state(model)
    graph = ModelGraph(model, fuse_batchnorm=True)
    assert [i.kind for i in graph.nodes].count(Kind.BATCHNORM) == 0
    fused = graph.by_name["0"]
    assert fused.fused == ["1"]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    model.eval()
    expected = model(x)
    model.train()
    torch.testing.assert_close(run_forward(graph, x).values[graph.output_node], expected)
    assert_model_unchanged(model, before)


def test_output_softmax_is_refused_and_can_be_removed() -> None:
    model = SoftmaxNet()
    x = torch.randn(2, 4)
    with pytest.raises(innspect.OutputActivationError, match="model_wo_softmax"):
        innspect.create_analyzer("gradient", model).analyze(x)
    with pytest.raises(innspect.OutputActivationError, match="softmax"):
        innspect.create_analyzer("gradient.baseline", model).analyze(x)
    stripped = innspect.model_wo_softmax(model)
    torch.testing.assert_close(stripped(x), model.fc(x))
    result = innspect.create_analyzer("gradient", stripped).analyze(x)
    assert result.shape == x.shape
    sequential = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    with pytest.raises(innspect.OutputActivationError):
        innspect.model_wo_softmax(sequential)
    torch.testing.assert_close(innspect.model_wo_output_activation(sequential)(x), sequential[0](x))


def test_model_without_softmax_helper_refuses_models_without_one() -> None:
    with pytest.raises(innspect.OutputActivationError, match="no final softmax"):
        innspect.model_wo_softmax(mlp())


def test_torch_export_fallback_when_fx_fails() -> None:
    model = LoopNet()
    x = torch.randn(2, 4)
    ours = innspect.create_analyzer("gradient", model).analyze(x)
    torch.testing.assert_close(
        ours, innspect.create_analyzer("gradient.baseline", model).analyze(x)
    )


def test_model_neither_fx_nor_export_can_capture_names_both_failures() -> None:
    with pytest.raises(innspect.NotAnalyzableModelError, match="torch.fx failed.*torch.export"):
        innspect.create_analyzer("gradient", DataDependentNet()).analyze(torch.randn(2, 3))


def test_a_missing_input_or_an_ambiguous_tuple_output_is_refused_clearly() -> None:
    # Wave 1 refused every two-input or tuple-returning model; now both are analyzed
    # (tests/test_engine_io.py) and only a missing input or an unchosen output is an error.
    with pytest.raises(innspect.InputError, match="'b' is missing"):
        innspect.create_analyzer("gradient", TwoInputs()).analyze(torch.randn(2, 3))
    with pytest.raises(innspect.OutputSelectionError, match="returns 2 tensors.*0, 1"):
        innspect.create_analyzer("gradient", TupleOutput()).analyze(torch.randn(2, 3))


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(2, 3, 8), "rank 4"),
        (torch.randn(2, 1, 8, 8), "3 channels"),
        (torch.randn(2, 8, 8, 3), "channels-last"),
        (torch.full((2, 3, 8, 8), float("nan")), "384 NaN"),
        (torch.tensor([[[[float("inf")]]]]).expand(1, 3, 8, 8).clone(), "192 infinite"),
        (torch.randn(0, 3, 8, 8), "at least one sample"),
        (torch.randn(2, 3, 8, 8, dtype=torch.float64), "dtype"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_model_is_unchanged(x, message: str) -> None:
    model = _conv_model()
    before = model_state(model)
    with pytest.raises(innspect.InputError, match=message):
        innspect.create_analyzer("gradient", model).analyze(x)
    assert_model_unchanged(model, before)


def test_wrong_spatial_size_names_the_failing_node() -> None:
    model = _conv_model()
    with pytest.raises(innspect.InputError, match=r"node '3' \(Linear\).*shape \(2, 3, 9, 9\)"):
        innspect.create_analyzer("gradient", model).analyze(torch.randn(2, 3, 9, 9))


def test_linear_first_layer_wrong_width() -> None:
    with pytest.raises(innspect.InputError, match="expects 6 features"):
        innspect.create_analyzer("gradient", mlp()).analyze(torch.randn(2, 5))


def test_unsupported_node_names_node_and_operation_and_model_is_unchanged() -> None:
    model = GatedNet()
    model.train()
    handle = model.fc.register_forward_hook(lambda *args: None)
    before = model_state(model)
    with pytest.raises(innspect.UnsupportedNodeError, match=r"'sigmoid' \(sigmoid\).*deconvnet"):
        innspect.create_analyzer("deconvnet", model, strict=True).analyze(torch.randn(2, 4))
    assert_model_unchanged(model, before)
    handle.remove()


@pytest.mark.parametrize(
    "name", ["gradient", "guided_backprop", "integrated_gradients", "smoothgrad"]
)
def test_model_is_unchanged_after_a_successful_call(name: str) -> None:
    model = FunctionalNet()
    model.train()
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    model.conv2.register_forward_pre_hook(lambda *args: None)
    before = model_state(model)
    innspect.create_analyzer(name, model).analyze(torch.randn(2, 3, 8, 8))
    assert_model_unchanged(model, before)


def test_analysis_runs_in_eval_mode_even_for_a_training_model() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.9), nn.Linear(8, 3))
    model.train()
    x = torch.randn(4, 4)
    first = innspect.create_analyzer("gradient", model).analyze(x)
    second = innspect.create_analyzer("gradient", model).analyze(x)
    assert torch.equal(first, second)
    assert model.training and model[1].training


# -- reverse options ----------------------------------------------------------------------------
def test_keep_tensors_gives_every_node_signal_by_name() -> None:
    model = mlp((6, 10, 4)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    analyzer = innspect.create_analyzer("gradient", model, reverse_keep_tensors=True)
    explanation = analyzer.explain(x)
    assert {"0", "1", "2", "input"} <= set(explanation.relevances)
    # at the ReLU's output the gradient is row `selected` of the last weight matrix
    weight = model[2].weight.detach()[explanation.selected]
    torch.testing.assert_close(explanation.relevances["1"], weight)
    torch.testing.assert_close(explanation.relevances["input"], explanation.attribution)


def test_clip_check_finite_and_min_max() -> None:
    model = mlp((6, 10, 4)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    clipped = innspect.create_analyzer("gradient", model, reverse_clip_values=(-0.01, 0.01))
    assert float(clipped.analyze(x).abs().max()) <= 0.01
    reported = innspect.create_analyzer("gradient", model, reverse_min_max=True).explain(x)
    low, high = reported.min_max["input"]
    assert low == float(reported.attribution.min()) and high == float(reported.attribution.max())

    class Explode(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(x)  # gradient at 0 is infinite

    checking = innspect.create_analyzer("gradient", Explode(), reverse_check_finite=True)
    with pytest.raises(innspect.NonFiniteRelevanceError, match="sqrt"):
        checking.analyze(torch.zeros(1, 2))


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        b = torch.relu(a + self.branch(a))
        return self.fc(b.flatten(1))


def test_freeing_forward_adds_in_place_and_leaves_inputs_and_observed_values_alone() -> None:
    """Without a record, ``a + branch(a)`` is written into the branch's output (read by the
    addition only), as a ResNet's ``out += identity``: the same output to the bit, the
    caller's input untouched, and a term a statistics pass observes never overwritten."""
    torch.manual_seed(0)
    model = ResidualNet().eval()
    x = torch.randn(4, 3, 8, 8)
    graph = ModelGraph(model, x[:1])
    add, branch = graph.by_name["add"].node, graph.by_name["branch"].node
    assert graph.inplace_adds() == {add: 1}
    given = x.clone()
    with torch.no_grad():
        expected = model(x)
        output = run_forward(graph, x, keep=False).output(graph)
        assert torch.equal(output, expected) and torch.equal(x, given)
        record = run_forward(graph, x, keep={branch})
        stem = torch.relu(model.stem(x))
        assert torch.equal(record.values[branch], model.branch(stem))
        assert torch.equal(record.output(graph), expected)


def test_bottlenecks_are_the_nodes_every_path_passes_through() -> None:
    graph = ModelGraph(ResidualNet())
    names = {graph.infos[n].name for n in graph.bottleneck_nodes()}
    assert names == {"input", "stem", "relu", "add", "relu_1", "flatten", "fc"}
    # FunctionalNet's x.mean() bypasses everything up to the final concatenation.
    graph = ModelGraph(FunctionalNet())
    names = {graph.infos[n].name for n in graph.bottleneck_nodes()}
    assert names == {"input", "cat_1", "head"}


def test_project_bottleneck_scales_bottleneck_signals_into_range() -> None:
    model = ResidualNet().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    analyzer = innspect.create_analyzer(
        "gradient", model, reverse_project_bottleneck_layers=(0, 1), reverse_keep_tensors=True
    )
    kept = analyzer.explain(x).relevances
    plain = innspect.create_analyzer("gradient", model, reverse_keep_tensors=True).explain(x)
    for name in ("relu", "add"):
        per_sample = kept[name].reshape(2, -1)
        assert float(per_sample.min()) >= 0 and float(per_sample.max()) <= 1
        assert torch.allclose(
            per_sample.amax(dim=1).double(), torch.ones(2, dtype=torch.float64)
        ) or (torch.allclose(per_sample.amin(dim=1), torch.zeros(2, dtype=torch.float64)))
    assert not torch.allclose(kept["branch"], plain.relevances["branch"])


@pytest.mark.parametrize("name", ["gradient", "lrp.epsilon", "deconvnet"])
def test_projection_skips_a_kernel_fused_with_its_activation_and_no_result_changes(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel read only by its ReLU is projected once, at the ReLU (a Keras layer with
    ``activation=``); with the symmetric default range the result equals projecting at
    every bottleneck, since the projection is a positive per-sample scaling."""
    from innspect.engine import reverse

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    graph = ModelGraph(model, x[:1])
    kernels = {i.node for i in graph.nodes if i.kind is Kind.LINEAR}
    skipped = graph.bottleneck_nodes() - reverse.projection_nodes(graph)
    assert skipped and skipped <= kernels

    def attribution(projection: tuple[float, float]) -> torch.Tensor:
        options = {"reverse_project_bottleneck_layers": projection}
        return innspect.create_analyzer(name, model, **options).explain(x).attribution

    fused = {r: attribution(r) for r in ((-1.0, 1.0), (0.0, 1.0))}
    monkeypatch.setattr(reverse, "projection_nodes", lambda g: g.bottleneck_nodes())
    everywhere = {r: attribution(r) for r in ((-1.0, 1.0), (0.0, 1.0))}
    symmetric = (-1.0, 1.0)
    torch.testing.assert_close(fused[symmetric], everywhere[symmetric], rtol=1e-12, atol=1e-14)
    # an offset range is not a scaling: there the skipped projections show
    assert not torch.allclose(fused[(0.0, 1.0)], everywhere[(0.0, 1.0)])


def test_float64_and_float32_follow_the_model() -> None:
    x = np.random.default_rng(0).normal(size=(2, 6))
    assert innspect.create_analyzer("gradient", mlp().double()).analyze(x).dtype == np.float64
    assert innspect.create_analyzer("gradient", mlp()).analyze(x).dtype == np.float32


def test_aten_graphs_from_torch_export_are_classified_not_silently_gradient() -> None:
    """The export fallback yields ATen operators: a ReLU must still be a ReLU."""

    class LoopCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.fc = nn.Linear(3 * 2 * 2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(x.shape[0] - x.shape[0] + 1):  # untraceable for fx, fine for export
                x = F.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(x.flatten(1))

    class PlainCNN(LoopCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))

    exported = LoopCNN().double()
    plain = PlainCNN().double()
    plain.load_state_dict(exported.state_dict())
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    graph = innspect.create_analyzer("deconvnet", exported).graph(x)
    assert any("aten" in str(info.node.target) for info in graph.nodes)
    assert [i.is_relu for i in graph.nodes].count(True) == 1
    for name in ("deconvnet", "guided_backprop", "lrp.epsilon", "lrp.sequential_preset_a"):
        ours = innspect.create_analyzer(name, exported).analyze(x)
        expected = innspect.create_analyzer(name, plain).analyze(x)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("model_factory", [FunctionalNet, ResidualNet])
def test_gradient_by_one_autograd_pass_equals_the_node_by_node_walk(model_factory) -> None:
    """A plan of pure VJPs runs as one autograd pass; per-node options force the walk."""
    model = model_factory().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    fast = innspect.create_analyzer("gradient", model)
    walked = innspect.create_analyzer("gradient", model, reverse_keep_tensors=True)
    graph = fast.graph(x)
    assert fast._plain_gradient
    if model_factory is ResidualNet:
        # Both ReLUs read a layer output nobody else reads: the freeing pass runs them in place.
        assert {graph.infos[n].name for n in graph.inplace_relus()} == {"relu", "relu_1"}
    explanation = walked.explain(x)
    assert "input" in explanation.relevances  # the walk really ran
    torch.testing.assert_close(fast.analyze(x), explanation.attribution, rtol=1e-12, atol=1e-14)


def test_the_walk_frees_recorded_values_as_it_goes() -> None:
    model = ResidualNet().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    analyzer = innspect.create_analyzer("guided_backprop", model)
    graph = analyzer.graph(x)
    record = analyzer.forward_record(x)
    assert len(record.values) == len(graph.nodes)
    output = record.output(graph)
    analyzer.explain_record(record, resolve(output, "max_activation"))
    assert set(record.values) <= {graph.input_node} | {
        i.node for i in graph.nodes if i.kind is Kind.CONSTANT
    }


class SumsNet(ResidualNet):
    """Residual sums of every shape the sum rule meets: a + b, a - b, broadcasting, constants."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        b = torch.relu(a + self.branch(a))
        c = b - a.mean(dim=(2, 3), keepdim=True)  # broadcast second argument
        d = torch.add(c, 0.5).sub(b)  # a constant, a method call
        return self.fc((d + d).flatten(1))


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.z", "deep_taylor", "lrp.epsilon_plus"])
def test_sum_rule_without_autograd_equals_the_autograd_z_rule(name: str) -> None:
    torch.manual_seed(0)
    model = SumsNet().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    fast = innspect.create_analyzer(name, model)
    fast.graph(x)
    used = [type(m).__name__ for m in fast._mappings.values()]
    # a + branch, b - mean, .sub(b) and d + d (c + 0.5 is a shift, not a sum); Zennit's
    # composites take d + d (one distinct input) as a plain gradient.
    assert used.count("ZRuleSum") == (3 if name == "lrp.epsilon_plus" else 4)
    result = fast.analyze(x)
    slow = innspect.create_analyzer(name, model)
    slow.engine_strategy = EngineStrategy(sum_without_autograd=False)
    slow.graph(x)
    assert "ZRuleSum" not in {type(m).__name__ for m in slow._mappings.values()}
    torch.testing.assert_close(result, slow.analyze(x), rtol=1e-12, atol=1e-14)


def test_record_drops_relu_outputs_it_can_rebuild_and_results_do_not_change(monkeypatch) -> None:
    import innspect.engine.forward as forward

    torch.manual_seed(0)
    model = ResidualNet().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.epsilon", model)
    graph = analyzer.graph(x)
    record = analyzer.forward_record(x)
    names = {graph.infos[n].name for n in record.values.recompute}
    # relu feeds a convolution and a sum (no autograd); relu_1 feeds flatten (a VJP node).
    assert names == {"relu"}
    (relu,) = record.values.recompute
    assert relu not in record.values
    torch.testing.assert_close(record.values[relu], torch.relu(record.values[relu.args[0]]))
    result = analyzer.analyze(x)
    monkeypatch.setattr(forward, "rematerialisable", lambda graph, autograd_nodes: set())
    kept = innspect.create_analyzer("lrp.epsilon", model)
    assert not kept.forward_record(x).values.recompute
    torch.testing.assert_close(result, kept.analyze(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_relu_variants_transpose_linear_layers_like_autograd_through_batchnorm(name: str) -> None:
    # Guided backprop and Deconvnet fold BatchNorm into the convolutions and map linear
    # layers by their transposed operation; both must equal autograd's VJP on the model.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, stride=2),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    model.eval()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    fast = innspect.create_analyzer(name, model)
    fast.graph(x)
    assert "LinearGradient" in {type(m).__name__ for m in fast._mappings.values()}
    assert fast.graph().fused  # the BatchNorms were folded
    result = fast.analyze(x)
    slow = innspect.create_analyzer(name, model)
    slow.engine_strategy = EngineStrategy(transpose_linear=False)
    slow.fuse_batchnorm = False
    slow.graph(x)
    assert "LinearGradient" not in {type(m).__name__ for m in slow._mappings.values()}
    torch.testing.assert_close(result, slow.analyze(x), rtol=1e-10, atol=1e-12)


class PoolingNet(nn.Module):
    """Overlapping max pooling (ties among the ReLU zeros), functional and adaptive ones."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.adaptive = nn.AdaptiveMaxPool2d(2)
        self.linear = nn.Linear(20, 3)
        self.relu, self.relu2 = nn.ReLU(), nn.ReLU()  # modules: Zennit's composites need them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv(x)))
        x = F.max_pool2d(self.relu2(self.conv2(x)), 2, stride=1)
        return self.linear(torch.flatten(self.adaptive(x), 1))


@pytest.mark.parametrize(
    "name",
    [
        "lrp.epsilon",
        "lrp.sequential_preset_b",
        "lrp.epsilon_plus_flat",
        "deep_taylor",
        "guided_backprop",
    ],
)
def test_max_pooling_recomputed_in_the_walk_equals_its_recorded_vjp(name: str) -> None:
    torch.manual_seed(0)
    model = PoolingNet().double().eval()
    model.conv.bias.data.fill_(-0.5)  # many ReLU zeros: windows with tied maxima
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    fast = innspect.create_analyzer(name, model)
    graph = fast.graph(x)
    pools = [node for node, m in fast._mappings.items() if type(m).__name__ == "RecomputedGradient"]
    assert {graph.infos[node].kind for node in pools} == {Kind.MAX_POOL} and len(pools) == 3
    # No local autograd graph holds the pools' inputs, so the record drops the ReLU outputs.
    pool_inputs = {node.all_input_nodes[0].name for node in pools[:2]}

    def dropped(analyzer) -> set[str]:
        return {node.name for node in analyzer.forward_record(x).values.recompute}

    assert pool_inputs <= dropped(fast)
    result = fast.analyze(x)
    slow = innspect.create_analyzer(name, model)
    slow.engine_strategy = EngineStrategy(recompute_max_pool=False)
    slow.graph(x)
    assert "RecomputedGradient" not in {type(m).__name__ for m in slow._mappings.values()}
    assert not pool_inputs & dropped(slow)
    torch.testing.assert_close(result, slow.analyze(x), rtol=0, atol=0)
