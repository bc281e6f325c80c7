"""The averaging wrapper (analyzers/averaged.py): SmoothGrad and integrated gradients of any
reverse-walk method equal the hand-written average of that method over the same points;
every integral approximation equals Captum 0.9's; NoiseTunnel's variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients as CaptumIG
from torch import nn

import innspect
from innspect.analyzers.averaged import IG_METHODS, path_points
from innspect.errors import OptionError


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    ).double()


def _x() -> torch.Tensor:
    return torch.randn(3, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _selected(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _inner_at(name: str, model: nn.Module, points: torch.Tensor, neurons: torch.Tensor):
    """The inner method by hand: each point explained at its sample's neuron."""
    analyzer = innspect.create_analyzer(name, model, neuron_selection_mode="index")
    return analyzer.analyze(points, neuron_selection=neurons)


@pytest.mark.parametrize("inner", ["gradient", "lrp.epsilon", "guided_backprop", "deep_taylor"])
def test_smoothgrad_of_any_method_is_its_mean_over_the_same_noisy_points(inner: str) -> None:
    model, x = _cnn(), _x()
    n, points, scale, seed = x.shape[0], 5, 0.3, 11
    ours = innspect.create_analyzer(
        "smoothgrad",
        model,
        inner=inner,
        augment_by_n=points,
        noise_scale=scale,
        seed=seed,
        batch_size=points * n,  # one batch: the noise is drawn as below
    ).analyze(x)
    # Row r of the batch is point r // N of sample r % N; the noise comes from one seeded
    # generator, drawn for the whole batch at once.
    noise = torch.randn(
        (points * n, *x.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=x.dtype
    )
    noisy = x.repeat(points, 1, 1, 1) + scale * noise
    by_hand = _inner_at(inner, model, noisy, _selected(model, x).repeat(points))
    expected = by_hand.reshape(points, n, *x.shape[1:]).mean(dim=0)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("inner", ["gradient", "lrp.epsilon", "input_t_gradient"])
@pytest.mark.parametrize("method", ["riemann_left", "gausslegendre"])
def test_integrated_gradients_of_any_method_averages_it_along_the_path(
    inner: str, method: str
) -> None:
    model, x = _cnn(), _x()
    n, steps = x.shape[0], 4
    reference = 0.25
    ours = innspect.create_analyzer(
        "integrated_gradients",
        model,
        inner=inner,
        steps=steps,
        method=method,
        reference_inputs=reference,
    ).analyze(x)
    alphas, weights = path_points(method, steps)
    weights = np.full(steps, 1 / steps) if weights is None else weights
    neurons = _selected(model, x)
    total = torch.zeros_like(x)
    for alpha, weight in zip(alphas, weights, strict=True):
        point = reference + float(alpha) * (x - reference)
        total += float(weight) * _inner_at(inner, model, point, neurons)
    expected = (x - reference) * total
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    assert n == ours.shape[0]


def _sigmoid_mlp() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)
    ).double()


@pytest.mark.parametrize("method", IG_METHODS)
@pytest.mark.parametrize("case", ["vgg11", "sigmoid_mlp"])
def test_every_integration_method_equals_captum(method: str, case: str) -> None:
    if case == "vgg11":
        torch.manual_seed(3)
        model = torchvision.models.vgg11(weights=None).double().eval()
        x = torch.rand(
            2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
        )
    else:
        model = _sigmoid_mlp().eval()
        x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    steps = 8  # Riemann weights 1 / 8 and 1 / 16: exact in float32 (see below)
    neurons = _selected(model, x)
    ours = innspect.create_analyzer(
        "integrated_gradients", model, steps=steps, method=method, batch_size=256
    ).analyze(x)
    # Where Captum is imprecise: it computes its Riemann points (torch.linspace) in torch's
    # default dtype, and multiplies every gradient by float32 weights
    # (torch.tensor(step_sizes).float(), captum/attr/_core/integrated_gradients.py), even for
    # a float64 model. With float64 as the default dtype its points are exact, and with 8
    # steps its Riemann weights (1/8, 1/16) are exact in float32: those must agree to float64
    # rounding. Gauss-Legendre weights are not representable in float32, so Captum's result
    # carries their rounding (a relative 6e-8 at most); innspect's Gauss-Legendre points and
    # weights are checked exactly against the hand-written average above.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        theirs = CaptumIG(model).attribute(
            x, baselines=torch.zeros_like(x), target=neurons, n_steps=steps, method=method
        )
    finally:
        torch.set_default_dtype(default)
    rtol = 1e-7 if method == "gausslegendre" else 1e-10
    torch.testing.assert_close(ours, theirs.detach(), rtol=rtol, atol=1e-13)


def test_gauss_legendre_is_far_more_complete_than_riemann_at_the_same_cost() -> None:
    """Completeness: the attributions sum to f(x) - f(0); Gauss-Legendre with 8 points is
    closer than the left Riemann sum with 8 (a smooth model)."""
    model, x = _sigmoid_mlp().eval(), torch.randn(4, 6, dtype=torch.float64)
    neurons = _selected(model, x)
    with torch.no_grad():
        rows = torch.arange(x.shape[0])
        delta = model(x)[rows, neurons] - model(torch.zeros_like(x))[rows, neurons]
    errors = {}
    for method in ("riemann_left", "gausslegendre"):
        attribution = innspect.create_analyzer(
            "integrated_gradients", model, steps=8, method=method
        ).analyze(x)
        errors[method] = float((attribution.sum(dim=1) - delta).abs().max())
    assert errors["gausslegendre"] < errors["riemann_left"] / 100


def test_path_points_are_captums() -> None:
    left, weights = path_points("riemann_left", 4)
    np.testing.assert_allclose(left, [0, 0.25, 0.5, 0.75])
    assert weights is None
    np.testing.assert_allclose(path_points("riemann_right", 4)[0], [0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(path_points("riemann_middle", 2)[0], [0.25, 0.75])
    points, weights = path_points("riemann_trapezoid", 3)
    np.testing.assert_allclose(points, [0, 0.5, 1])
    np.testing.assert_allclose(weights, [1 / 6, 1 / 3, 1 / 6])  # Captum's: sums to 2/3
    points, weights = path_points("gausslegendre", 3)
    np.testing.assert_allclose(weights.sum(), 1.0)
    np.testing.assert_allclose(points, 0.5 + np.array([-1, 0, 1]) * np.sqrt(0.15))


@pytest.mark.parametrize("nt_type", ["smoothgrad_sq", "vargrad"])
def test_noise_tunnel_variants(nt_type: str) -> None:
    model, x = _cnn(), _x()
    n, points, seed = x.shape[0], 6, 3
    ours = innspect.create_analyzer(
        "smoothgrad",
        model,
        augment_by_n=points,
        noise_scale=0.5,
        nt_type=nt_type,
        seed=seed,
        batch_size=points * n,
    ).analyze(x)
    noise = torch.randn(
        (points * n, *x.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=x.dtype
    )
    noisy = x.repeat(points, 1, 1, 1) + 0.5 * noise
    grads = _inner_at("gradient", model, noisy, _selected(model, x).repeat(points))
    grads = grads.reshape(points, n, *x.shape[1:])
    mean_square = (grads * grads).mean(dim=0)
    expected = mean_square if nt_type == "smoothgrad_sq" else mean_square - grads.mean(0) ** 2
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    if nt_type == "vargrad":
        assert bool((ours >= -1e-12).all())  # a variance


def test_averaged_options_are_checked() -> None:
    model = _cnn()
    with pytest.raises(OptionError, match="not a method computed by a reverse walk"):
        innspect.create_analyzer("smoothgrad", model, inner="occlusion")
    with pytest.raises(OptionError, match="not a method computed by a reverse walk"):
        innspect.create_analyzer("integrated_gradients", model, inner="no_such_method")
    with pytest.raises(OptionError, match="nt_type"):
        innspect.create_analyzer("smoothgrad", model, nt_type="var")
    with pytest.raises(OptionError, match="method must be one of"):
        innspect.create_analyzer("integrated_gradients", model, method="simpson")
    with pytest.raises(OptionError, match="steps >= 2"):
        innspect.create_analyzer("integrated_gradients", model, steps=1, method="riemann_trapezoid")
    # Inner options go to the inner analyzer; a misspelt one is named with both methods.
    with pytest.raises(OptionError, match="'epsilonn' is not an option of smoothgrad nor"):
        innspect.create_analyzer("smoothgrad", model, inner="lrp.epsilon", epsilonn=0.1)


def test_inner_options_and_the_inner_method_survive_save_and_load(tmp_path) -> None:
    model, x = _cnn(), _x()
    analyzer = innspect.create_analyzer(
        "smoothgrad", model, inner="lrp.epsilon", epsilon=0.5, augment_by_n=3, seed=2
    )
    analyzer.save_npz(tmp_path / "a.npz")
    loaded = innspect.Analyzer.load_npz(tmp_path / "a.npz", model)
    assert loaded.inner.name == "lrp.epsilon"
    torch.testing.assert_close(loaded.analyze(x), analyzer.analyze(x))


def test_the_inner_methods_options_are_shared_out_by_the_command_line() -> None:
    """`innspect analyze --method smoothgrad --option inner=lrp.epsilon --option epsilon=0.5`
    (and explain_dataset): the inner method's options go to the wrapper that passes them on."""
    from innspect.analyzers.parameters import options_for_methods

    per_method = options_for_methods(
        ["smoothgrad", "gradient"], {"inner": "lrp.epsilon", "epsilon": 0.5}, 0, None
    )
    assert per_method["smoothgrad"] == {"inner": "lrp.epsilon", "epsilon": 0.5, "seed": 0}
    assert per_method["gradient"] == {}
    with pytest.raises(OptionError, match="'epsilon' is not an option of smoothgrad"):
        options_for_methods(["smoothgrad"], {"epsilon": 0.5}, 0, None)  # the gradient has none
