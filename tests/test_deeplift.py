"""DeepLIFT and DeepLiftShap: hand-computed multipliers, the paper's min example,
summation-to-delta, the reference pass, bad input. (Captum on torchvision models:
tests/conformance/test_captum_deeplift.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.analyzers.deeplift import DeepLIFT
from innspect.engine.forward import run_forward, run_forward_with_reference
from innspect.errors import InputError, UnsupportedNodeError
from innspect.graph.graph import ModelGraph
from innspect.rules.deeplift import DELTA_THRESHOLD
from tests import lrp_models
from tests.models import assert_model_unchanged, model_state


def _linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=bias is not None).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def _delta(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, selected: torch.Tensor):
    rows = torch.arange(x.shape[0])
    with torch.no_grad():
        return model(x)[rows, selected] - model(ref)[rows, selected]


def test_single_relu_multiplier_is_the_secant_and_the_derivative_where_delta_is_tiny() -> None:
    # x -> 2x + 1 -> ReLU -> 3y: at x = 1, x_ref = -1 the ReLU sees 3 and -1, so its
    # multiplier is (3 - 0) / (3 - (-1)) = 0.75 and the input's is 3 * 0.75 * 2 = 4.5.
    model = nn.Sequential(_linear([[2.0]], [1.0]), nn.ReLU(), _linear([[3.0]])).eval()
    analyzer = innspect.create_analyzer(
        "deep_lift", model, reference_inputs=-1.0, reverse_keep_tensors=True
    )
    explanation = analyzer.explain(torch.tensor([[1.0], [0.25]], dtype=torch.float64))
    multipliers = explanation.relevances["input"][:, 0]
    # Second sample: z = 1.5, z_ref = -1 -> (1.5 - 0) / 2.5 = 0.6; times 3 and 2.
    torch.testing.assert_close(multipliers, torch.tensor([4.5, 3.6], dtype=torch.float64))
    torch.testing.assert_close(
        explanation.attribution[:, 0], torch.tensor([9.0, 4.5], dtype=torch.float64)
    )
    # Reference equal to the input: the secant is 0/0, DeepLIFT takes the derivative at x.
    same = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    tiny = innspect.create_analyzer(
        "deep_lift", model, reference_inputs=same + DELTA_THRESHOLD / 4, reverse_keep_tensors=True
    ).explain(same)
    torch.testing.assert_close(
        tiny.relevances["input"][:, 0], torch.tensor([6.0, 0.0], dtype=torch.float64)
    )


class MinNet(nn.Module):
    """The paper's example: ``o = i1 - ReLU(i1 - i2) = min(i1, i2)`` (Shrikumar et al.
    2017, sec. 3.5.3, fig. 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.difference = _linear([[1.0, -1.0]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] - torch.relu(self.difference(x))


def test_reveal_cancel_on_the_papers_min_example() -> None:
    # References 0, i1 = 3 > i2 = 1: rescale gives all of min(i1, i2) = 1 to i2 (the ReLU's
    # multiplier is 1, so i1's paths cancel), reveal-cancel gives 0.5 * min to each input.
    x = torch.tensor([[3.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    model = MinNet().eval()
    rescale = innspect.create_analyzer("deep_lift", model).analyze(x)
    torch.testing.assert_close(rescale, torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    reveal = innspect.create_analyzer("deep_lift", model, nonlinear_mode="reveal_cancel").analyze(x)
    torch.testing.assert_close(reveal, torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64))
    # By hand for the first sample: dx+ = 3, dx- = -1, dy+ = (3 + 2) / 2, dy- = (0 - 1) / 2.
    wrapper = innspect.create_analyzer(
        "deep_lift.wrapper", model, nonlinear_mode="reveal_cancel", reverse_keep_tensors=True
    ).explain(x)
    pair = wrapper.relevances["difference"]  # the multipliers (m+, m-) at the linear layer
    torch.testing.assert_close(pair[:, 0, 0], torch.tensor([-2.5 / 3, -0.5], dtype=torch.float64))


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual", "concat", "upsampling"])
@pytest.mark.parametrize("mode", ["rescale", "reveal_cancel"])
def test_summation_to_delta(name: str, mode: str) -> None:
    model = lrp_models.build(name, bias=True)
    x = lrp_models.inputs(name)
    reference = 0.3 * torch.randn(x.shape[1:], dtype=torch.float64)  # one for all samples
    analyzer = innspect.create_analyzer(
        "deep_lift",
        model,
        reference_inputs=reference,
        nonlinear_mode=mode,
        max_pooling="delta",
        neuron_selection_mode="index",
    )
    selected = torch.tensor([2, 0, 1])
    attribution = analyzer.analyze(x, neuron_selection=selected)
    expected = _delta(model, x, reference.expand_as(x), selected)
    sums = attribution.reshape(x.shape[0], -1).sum(dim=1)
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-8)
    assert attribution.abs().sum() > 0.1


class FunctionalActivations(nn.Module):
    """Functional GELU, SiLU, ReLU6 and sigmoid, one ReLU module called twice, and a layer
    output read by an activation and a sum."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 7), nn.Linear(7, 7), nn.Linear(7, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.gelu(self.fc1(x)) + F.silu(self.fc1(x))
        z = self.fc2(a)  # read by an activation and by a sum: both multipliers add up
        b = self.relu(F.relu6(z) - torch.sigmoid(a)) + z
        return self.fc3(self.relu(b + a))


@pytest.mark.parametrize("mode", ["rescale", "reveal_cancel"])
def test_functional_and_reused_activations_sum_to_delta(mode: str) -> None:
    # The plain gradient at any of these activations would break summation-to-delta.
    torch.manual_seed(2)
    model = FunctionalActivations().double().eval()
    x, ref = 2 * torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    explanation = innspect.create_analyzer(
        "deep_lift", model, reference_inputs=ref, nonlinear_mode=mode
    ).explain(x)
    expected = _delta(model, x, ref, explanation.selected)
    torch.testing.assert_close(explanation.attribution.sum(dim=1), expected, rtol=0, atol=1e-8)


class Chunked(nn.Module):
    """A node returning a tuple (chunk) whose parts take different paths."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(6, 6), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(torch.tanh(self.fc(x)), 2, dim=1)
        return self.out(torch.relu(a) * 2 - b)


def test_tuple_outputs_sum_to_delta() -> None:
    torch.manual_seed(0)
    model = Chunked().double().eval()
    x, ref = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    explanation = innspect.create_analyzer("deep_lift", model, reference_inputs=ref).explain(x)
    expected = _delta(model, x, ref, explanation.selected)
    torch.testing.assert_close(explanation.attribution.sum(dim=1), expected, rtol=0, atol=1e-10)


def test_reveal_cancel_differs_from_rescale_and_sums_with_batchnorm() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3)
    )
    model = lrp_models.randomise_batchnorm(model)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    ref = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    results = {}
    for mode in ("rescale", "reveal_cancel"):
        explanation = innspect.create_analyzer(
            "deep_lift", model, reference_inputs=ref, nonlinear_mode=mode
        ).explain(x)
        expected = _delta(model, x, ref, explanation.selected)
        torch.testing.assert_close(
            explanation.attribution.sum(dim=(1, 2, 3)), expected, rtol=0, atol=1e-8
        )
        results[mode] = explanation.attribution
    assert (results["rescale"] - results["reveal_cancel"]).abs().max() > 1e-3


def test_max_pooling_gradient_mode_is_the_gradient_at_x() -> None:
    # One max pool over 4 values: the gradient at x sends the whole multiplier to x's
    # maximum; Captum's "delta" rule shares it with the reference's maximum.
    model = nn.Sequential(nn.MaxPool1d(4), nn.Flatten()).double().eval()
    x = torch.tensor([[[1.0, 5.0, 2.0, 0.0]]], dtype=torch.float64)
    ref = torch.tensor([[[0.0, 0.0, 0.0, 3.0]]], dtype=torch.float64)
    gradient = innspect.create_analyzer("deep_lift", model, reference_inputs=ref).analyze(x)
    torch.testing.assert_close(gradient, torch.tensor([[[0.0, 5.0, 0.0, 0.0]]]).double())
    delta = innspect.create_analyzer(
        "deep_lift", model, reference_inputs=ref, max_pooling="delta"
    ).analyze(x)
    # max(5, 3) - 3 = 2 at x's maximum, 5 - 5 = 0 at the reference's: sums to 5 - 3.
    torch.testing.assert_close(delta, torch.tensor([[[0.0, 2.0, 0.0, 0.0]]]).double())


def test_reference_pass_equals_two_forward_passes_and_splits_shape_queries() -> None:
    class ViewNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x))
            return y.view(y.size(0), -1)  # a shape query: the half's own batch size

    model = ViewNet().double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    ref = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    graph = ModelGraph(model, x)
    batched = run_forward_with_reference(graph, x, ref)
    separate = run_forward_with_reference(graph, x, ref, batched=False)
    alone = run_forward(graph, ref)
    for info in graph.nodes:
        node = info.node
        for ours, theirs in ((batched.values, separate.values), (batched.reference, alone.values)):
            a, b = ours[node], theirs[node]
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
            else:
                assert a == b
    with pytest.raises(InputError, match="reference input has shape"):
        run_forward_with_reference(graph, x, ref[:1])

    # One reference for every sample (DeepLIFT's default): run once, read back as a
    # stride-0 view, equal at every node to a forward pass of the expanded reference.
    x3 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    shared = ref[:1].expand(3, -1, -1, -1)
    once = run_forward_with_reference(graph, x3, shared.clone())
    alone = run_forward(graph, shared.contiguous())
    recorded = [
        info.node for info in graph.nodes if isinstance(once.values[info.node], torch.Tensor)
    ]
    for node in recorded:
        torch.testing.assert_close(once.reference[node], alone.values[node], rtol=0, atol=1e-12)
    assert once.reference[graph.output_node].stride(0) == 0  # the reference rows ran once


@pytest.mark.parametrize("max_pooling", ["gradient", "delta"])
def test_deeplift_equals_captum_on_small_nets_and_leaves_the_model_alone(max_pooling: str) -> None:
    from captum.attr import DeepLift

    torch.manual_seed(0)
    if max_pooling == "gradient":
        # Captum's max-pool rule is lost when the pooling follows a hooked ReLU (as in VGG
        # and ResNet): Captum then gives the gradient at x, which is innspect's default.
        model = lrp_models.build("cnn", bias=True)
    else:  # a max pool right after a convolution: Captum applies its own rule
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 3)
        ).double()
    before = model_state(model)
    x = lrp_models.inputs("cnn")
    reference = torch.randn_like(x)
    explanation = innspect.create_analyzer(
        "deep_lift", model, reference_inputs=reference, max_pooling=max_pooling
    ).explain(x)
    expected = DeepLift(model).attribute(x.clone(), reference, target=explanation.selected)
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-10, atol=1e-12)
    assert_model_unchanged(model, before)


def test_deep_lift_shap_is_the_mean_over_references_and_fits_a_background() -> None:
    from captum.attr import DeepLiftShap as CaptumDeepLiftShap

    model = lrp_models.build("cnn", bias=True)
    x = lrp_models.inputs("cnn")
    background = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    analyzer = innspect.create_analyzer(
        "deep_lift_shap", model, reference_inputs=background, batch_size=5
    )
    explanation = analyzer.explain(x)
    expected = CaptumDeepLiftShap(model).attribute(
        x.clone(), background, target=explanation.selected
    )
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-10, atol=1e-12)
    # The mean over references of DeepLIFT with each reference.
    single = [
        DeepLIFT(model, reference_inputs=b, neuron_selection_mode="index").analyze(
            x, neuron_selection=explanation.selected
        )
        for b in background
    ]
    torch.testing.assert_close(explanation.attribution, torch.stack(single).mean(dim=0))
    fitted = innspect.create_analyzer("deep_lift_shap", model, background_size=3, seed=1)
    fitted.fit(torch.cat([background, background]))
    assert fitted.references.shape == (3, 2, 8, 8)
    assert fitted.analyze(x).shape == x.shape


def test_bad_input_gives_clear_errors() -> None:
    model = lrp_models.build("mlp", bias=True)
    x = lrp_models.inputs("mlp")
    with pytest.raises(InputError, match="reference_inputs of shape"):
        innspect.create_analyzer("deep_lift", model, reference_inputs=torch.zeros(4)).analyze(x)
    with pytest.raises(ValueError, match="nonlinear_mode"):
        innspect.create_analyzer("deep_lift", model, nonlinear_mode="linear")
    with pytest.raises(InputError, match="needs references"):
        innspect.create_analyzer("deep_lift_shap", model).analyze(x)
    with pytest.raises(InputError, match="shaped like one sample"):
        innspect.create_analyzer(
            "deep_lift_shap", model, reference_inputs=torch.zeros(2, 5, dtype=torch.float64)
        ).analyze(x)

    class Gated(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x)[:, :1]

    with pytest.raises(UnsupportedNodeError, match="DeepLIFT has rules"):
        innspect.create_analyzer("deep_lift", Gated()).analyze(x)


def test_reveal_cancel_splits_at_an_unfolded_batchnorm() -> None:
    # BatchNorm before any convolution cannot be folded: the ReLU after it gets the
    # positive/negative split of its per-channel scale (negative gammas swap the streams).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 3)
    )
    model = lrp_models.randomise_batchnorm(model)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    ref = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    explanation = innspect.create_analyzer(
        "deep_lift",
        model,
        reference_inputs=ref,
        nonlinear_mode="reveal_cancel",
        reverse_keep_tensors=True,
    ).explain(x)
    assert explanation.relevances["0"].shape == (2, 3, 2, 5, 5)  # the pair at the BatchNorm
    expected = _delta(model, x, ref, explanation.selected)
    torch.testing.assert_close(
        explanation.attribution.sum(dim=(1, 2, 3)), expected, rtol=0, atol=1e-10
    )
