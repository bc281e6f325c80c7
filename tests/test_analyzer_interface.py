"""The common interface: names, numpy/torch in and out, neuron selection, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import innspect
from tests.models import FunctionalNet, mlp

GRADIENT_FAMILY = [
    "gradient",
    "gradient.baseline",
    "input_t_gradient",
    "deconvnet",
    "guided_backprop",
    "integrated_gradients",
    "smoothgrad",
]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(KeyError, match="gradient.*guided_backprop"):
        innspect.create_analyzer("no_such_method", mlp())


def test_list_contains_gradient_family_and_descriptions() -> None:
    names = innspect.list_analyzers()
    assert set(GRADIENT_FAMILY) | {"input", "random"} <= set(names)
    descriptions = innspect.describe_analyzers()
    assert all(descriptions[n] for n in GRADIENT_FAMILY)


@pytest.mark.parametrize("name", GRADIENT_FAMILY)
def test_numpy_in_numpy_out_and_tensor_in_tensor_out(name: str) -> None:
    model = mlp()
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    options = {"seed": 0} if name == "smoothgrad" else {}
    from_numpy = innspect.create_analyzer(name, model, **options).analyze(x)
    from_tensor = innspect.create_analyzer(name, model, **options).analyze(torch.from_numpy(x))
    assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == x.shape
    assert isinstance(from_tensor, torch.Tensor) and from_tensor.shape == x.shape
    np.testing.assert_allclose(from_numpy, from_tensor.numpy(), rtol=1e-6)


def test_numpy_float64_input_is_cast_to_the_model_dtype() -> None:
    model = mlp()
    x = np.random.default_rng(0).normal(size=(2, 6))
    result = innspect.create_analyzer("gradient", model).analyze(x)
    assert result.dtype == np.float32


def _linear_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False)).double()


def test_index_mode_per_sample_selects_each_row_of_the_weight_matrix() -> None:
    model = _linear_model()
    weight = model[0].weight.detach()
    x = torch.randn(3, 4, dtype=torch.float64)
    analyzer = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")
    result = analyzer.analyze(x, neuron_selection=[2, 0, 1])
    assert torch.equal(result, weight[[2, 0, 1]])
    same_for_all = analyzer.analyze(x, neuron_selection=1)
    assert torch.equal(same_for_all, weight[[1, 1, 1]])


def test_max_activation_selects_the_largest_output_per_sample() -> None:
    model = _linear_model()
    x = torch.randn(5, 4, dtype=torch.float64)
    explanation = innspect.create_analyzer("gradient", model).explain(x)
    assert torch.equal(explanation.selected, model(x).argmax(dim=1))
    assert torch.equal(explanation.scores, model(x).max(dim=1).values.detach())


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "integrated_gradients"])
def test_all_equals_sum_over_single_neurons(name: str) -> None:
    model = FunctionalNet(classes=4).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    options = {"steps": 4} if name == "integrated_gradients" else {}
    everything = innspect.create_analyzer(name, model, neuron_selection_mode="all", **options)
    single = innspect.create_analyzer(name, model, neuron_selection_mode="index", **options)
    total = sum(single.analyze(x, neuron_selection=k) for k in range(4))
    torch.testing.assert_close(everything.analyze(x), total, rtol=1e-10, atol=1e-12)


def test_outputs_with_more_than_two_axes_are_flattened() -> None:
    model = torch.nn.Conv2d(2, 3, 1, bias=False).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    analyzer = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")
    # flattened index 3 * 16 - 1 is channel 2, pixel (3, 3)
    result = analyzer.analyze(x, neuron_selection=47)
    expected = torch.zeros_like(x)
    expected[:, :, 3, 3] = model.weight.detach()[2, :, 0, 0]
    assert torch.equal(result, expected)


@pytest.mark.parametrize(
    ("mode", "selection", "message"),
    [
        ("index", None, "needs analyze"),
        ("max_activation", 1, "only allowed"),
        ("all", [0, 1], "only allowed"),
        ("index", 3, "out of range.*3 outputs"),
        ("index", -1, "out of range"),
        ("index", [0, 1, 2], "3 indices for a batch of 2"),
        ("index", 0.5, "integers"),
    ],
)
def test_neuron_selection_misuse_is_a_clear_error(mode: str, selection, message: str) -> None:
    analyzer = innspect.create_analyzer("gradient", _linear_model(), neuron_selection_mode=mode)
    with pytest.raises(innspect.NeuronSelectionError, match=message):
        analyzer.analyze(torch.randn(2, 4, dtype=torch.float64), neuron_selection=selection)


def test_unknown_neuron_selection_mode() -> None:
    with pytest.raises(innspect.NeuronSelectionError, match="max_activation"):
        innspect.create_analyzer("gradient", mlp(), neuron_selection_mode="best")


def test_integrated_gradients_chooses_the_neuron_on_the_clean_input() -> None:
    model = mlp((4, 8, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    explanation = innspect.create_analyzer("integrated_gradients", model, steps=4).explain(x)
    assert torch.equal(explanation.selected, model(x).argmax(dim=1))
    indexed = innspect.create_analyzer(
        "integrated_gradients", model, steps=4, neuron_selection_mode="index"
    ).analyze(x, neuron_selection=explanation.selected)
    assert torch.equal(indexed, explanation.attribution)


def test_integrated_gradients_of_a_linear_model_is_exact_and_complete() -> None:
    model = _linear_model()
    x = torch.randn(3, 4, dtype=torch.float64)
    reference = torch.randn(1, 4, dtype=torch.float64)
    analyzer = innspect.create_analyzer(
        "integrated_gradients", model, steps=3, reference_inputs=reference.numpy()
    )
    explanation = analyzer.explain(x)
    weight = model[0].weight.detach()[explanation.selected]
    torch.testing.assert_close(explanation.attribution, weight * (x - reference))
    completeness = model(x) - model(reference)
    rows = torch.arange(3)
    torch.testing.assert_close(
        explanation.attribution.sum(dim=1), completeness[rows, explanation.selected].detach()
    )


def test_integrated_gradients_chunking_does_not_change_the_result() -> None:
    model = FunctionalNet().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    big = innspect.create_analyzer("integrated_gradients", model, steps=5, batch_size=100)
    small = innspect.create_analyzer("integrated_gradients", model, steps=5, batch_size=4)
    torch.testing.assert_close(big.analyze(x), small.analyze(x), rtol=1e-12, atol=1e-14)


def test_smoothgrad_noise_scale_is_honoured_and_zero_noise_gives_the_gradient() -> None:
    model = FunctionalNet().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gradient = innspect.create_analyzer("gradient", model).analyze(x)
    quiet = innspect.create_analyzer("smoothgrad", model, noise_scale=0.0, augment_by_n=3)
    torch.testing.assert_close(quiet.analyze(x), gradient, rtol=1e-12, atol=1e-14)
    noisy = innspect.create_analyzer("smoothgrad", model, noise_scale=2.0, augment_by_n=3, seed=0)
    assert not torch.allclose(noisy.analyze(x), gradient)


def test_smoothgrad_with_seed_is_reproducible_and_equals_manual_mean() -> None:
    model = FunctionalNet().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    analyzer = innspect.create_analyzer(
        "smoothgrad", model, augment_by_n=4, noise_scale=0.5, seed=7
    )
    first, second = analyzer.analyze(x), analyzer.analyze(x)
    assert torch.equal(first, second)
    # Independent computation: the same noise (same generator stream), plain autograd.
    generator = torch.Generator().manual_seed(7)
    rows = torch.arange(8)
    samples = rows % 2
    noisy = x[samples] + 0.5 * torch.randn((8, 3, 8, 8), generator=generator, dtype=x.dtype)
    target = model(x).argmax(dim=1)[samples]
    leaf = noisy.requires_grad_(True)
    (grads,) = torch.autograd.grad(model(leaf).gather(1, target[:, None]).sum(), leaf)
    expected = torch.zeros_like(x).index_add_(0, samples, grads) / 4
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-12)


def test_gradient_postprocess() -> None:
    model = _linear_model()
    x = torch.randn(2, 4, dtype=torch.float64)
    plain = innspect.create_analyzer("gradient", model).analyze(x)
    assert torch.equal(
        innspect.create_analyzer("gradient", model, postprocess="abs").analyze(x), plain.abs()
    )
    assert torch.equal(
        innspect.create_analyzer("gradient", model, postprocess="square").analyze(x), plain**2
    )
    with pytest.raises(ValueError, match="postprocess"):
        innspect.create_analyzer("gradient", model, postprocess="cube")


def test_fit_on_an_untrainable_analyzer_warns() -> None:
    with pytest.warns(UserWarning, match="needs no fitting"):
        innspect.create_analyzer("gradient", mlp()).fit(np.zeros((2, 6)))


def test_random_analyzer_seed_and_stddev() -> None:
    x = np.zeros((2000, 5), dtype=np.float32)
    a = innspect.create_analyzer("random", mlp((5, 3)), stddev=3.0, seed=1).analyze(x)
    b = innspect.create_analyzer("random", mlp((5, 3)), stddev=3.0, seed=1).analyze(x)
    assert np.array_equal(a, b)
    assert abs(a.std() - 3.0) < 0.1
    assert np.array_equal(innspect.create_analyzer("input", mlp((5, 3))).analyze(x + 1), x + 1)


def test_save_and_load_round_trip(tmp_path) -> None:
    model = FunctionalNet().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    analyzer = innspect.create_analyzer(
        "integrated_gradients", model, steps=3, reference_inputs=0.5, neuron_selection_mode="all"
    )
    name, state = analyzer.save()
    restored = innspect.Analyzer.load(name, state, model)
    assert torch.equal(restored.analyze(x), analyzer.analyze(x))
    analyzer.save_npz(tmp_path / "ig.npz")
    from_file = innspect.Analyzer.load_npz(tmp_path / "ig.npz", model)
    assert type(from_file) is type(analyzer)
    assert from_file.get_config() == analyzer.get_config()
    assert torch.equal(from_file.analyze(x), analyzer.analyze(x))
    assert [p.name for p in tmp_path.iterdir()] == ["ig.npz"]  # no temporary file left


class _ShiftedReLU(torch.nn.Module):
    """f(x) = relu(x - 0.6) per feature, summed into one output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x - 0.6).sum(dim=1, keepdim=True)


def test_integrated_gradients_uses_the_left_riemann_points_k_over_steps() -> None:
    # Points 0 and 0.5 lie below the kink at 0.6: a left Riemann sum gives 0. iNNvestigate
    # 2.x's linspace(0, 1, steps) would evaluate at 1 too and give 0.5.
    x = torch.ones(1, 1, dtype=torch.float64)
    analyzer = innspect.create_analyzer("integrated_gradients", _ShiftedReLU(), steps=2)
    assert float(analyzer.analyze(x)) == 0.0
    assert (
        float(innspect.create_analyzer("integrated_gradients", _ShiftedReLU(), steps=5).analyze(x))
        == 0.2
    )


@pytest.mark.parametrize("name", ["integrated_gradients", "smoothgrad"])
def test_wrappers_accept_one_index_for_a_whole_batch(name: str) -> None:
    """iNNvestigate 2.x repeats a scalar index only augment_by_n times, not per sample."""
    model = mlp((4, 8, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    options = {"steps": 3} if name == "integrated_gradients" else {"augment_by_n": 3, "seed": 0}
    analyzer = innspect.create_analyzer(name, model, neuron_selection_mode="index", **options)
    scalar = analyzer.analyze(x, neuron_selection=2)
    per_sample = analyzer.analyze(x, neuron_selection=[2] * 5)
    assert torch.equal(scalar, per_sample)


def test_smoothgrad_max_activation_explains_the_clean_inputs_neuron() -> None:
    """iNNvestigate 2.x silently turns max_activation into 'all' in its wrappers."""
    model = mlp((4, 8, 3)).double()
    x = torch.randn(4, 4, dtype=torch.float64)
    explanation = innspect.create_analyzer("smoothgrad", model, augment_by_n=3, seed=0).explain(x)
    assert torch.equal(explanation.selected, model(x).argmax(dim=1))
    indexed = innspect.create_analyzer(
        "smoothgrad", model, augment_by_n=3, seed=0, neuron_selection_mode="index"
    ).analyze(x, neuron_selection=explanation.selected)
    everything = innspect.create_analyzer(
        "smoothgrad", model, augment_by_n=3, seed=0, neuron_selection_mode="all"
    ).analyze(x)
    assert torch.equal(indexed, explanation.attribution)
    assert not torch.allclose(everything, explanation.attribution)


def test_verbose_wrappers_show_a_progress_bar_over_their_chunks(capsys) -> None:
    model = mlp((4, 8, 3))
    x = torch.randn(3, 4)
    analyzer = innspect.create_analyzer(
        "integrated_gradients", model, steps=4, batch_size=5, verbose=True
    )
    quiet = innspect.create_analyzer("integrated_gradients", model, steps=4, batch_size=5)
    assert torch.equal(analyzer.analyze(x), quiet.analyze(x))
    err = capsys.readouterr().err
    assert "integrated_gradients" in err and "3/3" in err  # 12 rows in chunks of 5
