"""innspect.conformance.oracle: hand-computed examples, and the oracle against innspect on random nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import innspect
from innspect.conformance import oracle

X = np.array([[1.0, 2.0]])
W = np.array([[1.0, -1.0], [2.0, 1.0]])  # (in, out): z = x W + b = [5.5, 0.5]
B = np.array([0.5, -0.5])
R = np.array([[1.0, 0.0]])  # all relevance on output 0

HAND = {
    # R_i = x_i w_i0 / z_0 with z_0 = 1 + 4 + 0.5
    "z": [1 / 5.5, 4 / 5.5],
    "z_ib": [1 / 5, 4 / 5],
    ("epsilon", 0.5): [1 / 6, 4 / 6],
    # activator x+ w+ + b = 5.5, inhibitor x+ w- + b = 0.5 with nothing to share
    ("alphabeta", 2.0): [2 / 5.5, 8 / 5.5],
    "zplus": [1 / 5, 4 / 5],
    "wsquare": [1 / 5, 4 / 5],  # w^2 = [1, 4]
    "flat": [0.5, 0.5],
    # x w - l w+ - h w- with l = -1, h = 1 and w = [1, 2] >= 0: [2, 6] / 8
    "zb": [0.25, 0.75],
}


@pytest.mark.parametrize("spec", list(HAND), ids=str)
def test_rules_on_a_hand_computed_2x2_layer(spec) -> None:
    layer = oracle.Linear(W, B)
    np.testing.assert_allclose(layer.forward(X), [[5.5, 0.5]])
    np.testing.assert_allclose(layer.relprop(R, oracle.rule(spec)), [HAND[spec]], rtol=1e-12)


def test_pooling_on_a_hand_computed_2x2_window() -> None:
    x = np.array([[[[1.0, 3.0], [2.0, 4.0]]]])
    r = np.ones((1, 1, 1, 1))
    avg, top = oracle.AvgPool(2), oracle.MaxPool(2)
    assert avg.forward(x).item() == 2.5 and top.forward(x).item() == 4.0
    np.testing.assert_allclose(avg.relprop(r), x / 10)  # each input's share of the sum
    np.testing.assert_allclose(top.relprop(r), [[[[0, 0], [0, 1]]]])
    np.testing.assert_allclose(avg.gradprop(r), np.full_like(x, 0.25))
    half_sum = oracle.SumPool(2, scale=0.5)  # the tutorial's Pooling
    assert half_sum.forward(x).item() == 5.0


def test_conv_forward_and_gradprop_agree_with_torch() -> None:
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    layer = oracle.from_torch(nn.Sequential(conv)).layers[0]
    y = conv(x)
    np.testing.assert_allclose(layer.forward(x.detach().numpy()), y.detach().numpy(), atol=1e-12)
    dy = rng.standard_normal(y.shape)
    (dx,) = torch.autograd.grad(y, x, torch.from_numpy(dy))
    np.testing.assert_allclose(layer.gradprop(dy), dx.numpy(), atol=1e-12)


def test_layerwise_lrp_conserves_and_checks() -> None:
    net = oracle.Network([oracle.Linear(W), oracle.ReLU(), oracle.Linear(np.eye(2))])
    result = net.layerwise_lrp(X, class_filter=0, rules="z")
    assert len(result.relevances) == 4 and len(result.conservation) == 3
    assert all(c.max() < 1e-12 for c in result.conservation)
    start = result.relevances[-1]
    np.testing.assert_allclose(start, [[5.0, 0.0]])
    assert oracle.conservation_check(result.relevances[0], start).max() < 1e-12
    with_bias = oracle.Network([oracle.Linear(W, B)]).layerwise_lrp(X, [[1.0, 0.0]], "z")
    np.testing.assert_allclose(with_bias.conservation[0], [0.5 / 5.5])  # the bias's share


def test_unknown_layers_and_rules_are_refused_by_name() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(oracle.OracleError, match=r"layer '1.1' \(BatchNorm1d"):
        oracle.from_torch(model)
    with pytest.raises(oracle.OracleError, match="Sequential"):
        oracle.from_torch(nn.Linear(2, 2))
    with pytest.raises(oracle.OracleError, match="stride = kernel"):
        oracle.from_torch(nn.Sequential(nn.MaxPool2d(3, stride=1)))
    with pytest.raises(oracle.OracleError, match="alpha >= 1"):
        oracle.rule(("alphabeta", 0.5))
    with pytest.raises(oracle.OracleError, match="unknown rule 'gamma'"):
        oracle.rule("gamma")
    with pytest.raises(oracle.OracleError, match="one entry per layer"):
        oracle.Network([oracle.Linear(W)]).relprop(R, ["z", "z"])


def test_check_forward_names_the_layer_that_differs() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten()).double()
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6))
    assert max(oracle.check_forward(model, x)) < 1e-12
    with pytest.raises(oracle.OracleError, match=r"layer '0' \(Conv2d\)"):
        oracle.check_forward(model, x, atol=-1.0)


# -- the oracle against innspect ------------------------------------------------------------
# oracle rule (or code) -> (innspect analyzer, options)
AGAINST = {
    "z": ("lrp.z", {}),
    "z_ib": ("lrp.z_IB", {}),
    ("epsilon", 0.01): ("lrp.epsilon", {"epsilon": 0.01}),
    "epsilon_ib": ("lrp.epsilon_IB", {}),
    ("alphabeta", 2.0): ("lrp.alpha_2_beta_1", {}),
    ("alphabeta_ib", 3.0): ("lrp.alpha_beta", {"alpha": 3.0, "bias": False}),
    "zplus": ("lrp.z_plus", {}),
    "zb": ("lrp", {"rule": "Bounded"}),
    "wsquare": ("lrp.w_square", {}),
    "flat": ("lrp.flat", {}),
    "zbab": ("lrp", {"rule": "zbab"}),
    "wwab": ("lrp", {"rule": "wwab"}),
    "deeptaylor": ("deep_taylor.bounded", {"low": -1.0, "high": 1.0}),
}
SPECS = list(AGAINST)
N_NETWORKS = 52


def random_network(seed: int) -> tuple[nn.Sequential, np.ndarray, bool]:
    """A small random ReLU or tanh network (dense or convolutional, with or without bias)
    in float64, a signed input, and whether it has average pooling."""
    rng = np.random.default_rng(seed)
    bias = bool(rng.integers(2))
    activation = nn.ReLU if seed % 3 else nn.Tanh
    layers: list[nn.Module] = []
    avg = False
    if seed % 2:  # convolutional
        channels, size = 2, 8
        shape = (channels, size, size)
        for _ in range(int(rng.integers(1, 3))):
            out = int(rng.integers(2, 4))
            kernel, stride, padding = (
                int(rng.integers(1, 4)),
                int(rng.integers(1, 3)),
                int(rng.integers(0, 2)),
            )
            layers += [nn.Conv2d(channels, out, kernel, stride, padding, bias=bias), activation()]
            size = (size + 2 * padding - kernel) // stride + 1
            channels = out
            if size >= 4 and rng.integers(2):
                pool = nn.AvgPool2d(2) if rng.integers(2) else nn.MaxPool2d(2)
                avg = avg or isinstance(pool, nn.AvgPool2d)
                layers.append(pool)
                size //= 2
        layers.append(nn.Flatten())
        features = channels * size * size
    else:
        features = int(rng.integers(3, 7))
        shape = (features,)
    for _ in range(int(rng.integers(1, 3))):
        out = int(rng.integers(3, 7))
        layers += [nn.Linear(features, out, bias=bias), activation()]
        features = out
    layers.append(nn.Linear(features, 3, bias=bias))
    torch.manual_seed(seed)
    model = nn.Sequential(*layers).double().eval()
    for parameter in model.parameters():  # biases of both signs and a fair size
        nn.init.uniform_(parameter, -1.0, 1.0)
    x = rng.standard_normal((3, *shape))
    return model, x, avg


@pytest.mark.parametrize("seed", range(N_NETWORKS))
def test_oracle_equals_innspect_on_random_networks(seed: int) -> None:
    model, x, has_avg = random_network(seed)
    network = oracle.from_torch(model)
    assert max(oracle.check_forward(model, x)) < 1e-12
    classes = np.array([0, 1, 2])
    relu_net = all(not isinstance(m, nn.Tanh) for m in model)
    # Each network checks a rotating quarter of the rules: every rule on >= 13 networks.
    for spec in SPECS[seed % 4 :: 4]:
        if spec == "deeptaylor" and (has_avg or not relu_net):
            spec = "zbab"  # Deep Taylor: ReLU nets; pooling by gradient in innspect (A4)
        name, options = AGAINST[spec]
        result = network.layerwise_lrp(x, classes, spec)
        explanation = innspect.create_analyzer(
            name, model, neuron_selection_mode="index", reverse_keep_tensors=True, **options
        ).explain(x, neuron_selection=classes)
        scale = max(1.0, np.abs(result.relevances[-1]).max())
        np.testing.assert_allclose(
            explanation.attribution.numpy(),
            result.relevances[0],
            rtol=1e-10,
            atol=1e-10 * scale,
            err_msg=f"{spec} on {network}",
        )
        for index in range(len(model)):  # R at the output of layer i = input of layer i + 1
            ours = explanation.relevances[str(index)].detach().numpy()
            np.testing.assert_allclose(
                ours.reshape(-1),
                result.relevances[index + 1].reshape(-1),
                rtol=1e-10,
                atol=1e-10 * scale,
                err_msg=f"{spec}, layer {index} of {network}",
            )


@pytest.mark.parametrize("seed", [1, 2, 3, 5])
def test_network_gradprop_is_the_gradient(seed: int) -> None:
    model, x, _ = random_network(seed)
    network = oracle.from_torch(model)
    y = network.forward(x)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    leaf = torch.from_numpy(x).requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf), leaf, torch.from_numpy(dy))
    np.testing.assert_allclose(network.gradprop(dy), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_format_bounds_feed_the_deep_taylor_code() -> None:
    """The tutorial's Format maps [0, 1] to [low, high]; z^B then uses those bounds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    raw = np.random.default_rng(0).uniform(size=(4, 6))
    network = oracle.Network([oracle.Format(-2.0, 3.0), *oracle.from_torch(model).layers])
    result = network.layerwise_lrp(raw, np.array([0, 1, 2, 0]), "deeptaylor")
    formatted = raw * 5.0 - 2.0
    np.testing.assert_allclose(network.layers[0].forward(raw), formatted)
    expected = innspect.create_analyzer(
        "deep_taylor.bounded", model, low=-2.0, high=3.0, neuron_selection_mode="index"
    ).analyze(formatted, neuron_selection=[0, 1, 2, 0])
    np.testing.assert_allclose(result.relevances[0], expected, rtol=1e-10, atol=1e-12)
    assert (result.relevances[-1] >= 0).all()  # Deep Taylor starts from max(0, y)
