"""PatternComputer, pattern.net and pattern.attribution (Kindermans et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.analyzers.api import Analyzer
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph
from innspect.patterns.computer import PatternComputer
from innspect.patterns.statistics import _autograd_weight_gradient
from tests.models import FunctionalNet


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _signal_distractor(n: int, dim: int = 4, seed: int = 0):
    """``x = a_s s + a_d d`` with s and d exactly uncorrelated; ``w`` extracts s."""
    rng = np.random.default_rng(seed)
    a_s, a_d = rng.standard_normal(dim), rng.standard_normal(dim)
    s = rng.standard_normal(n)
    d = rng.standard_normal(n)
    d -= d.mean()
    sc = s - s.mean()
    d -= sc * (sc @ d) / (sc @ sc)  # exactly uncorrelated with the signal
    x = np.outer(s, a_s) + np.outer(d, a_d)
    w = a_s - a_d * (a_s @ a_d) / (a_d @ a_d)  # orthogonal to the distractor
    w /= w @ a_s  # w^T x = s
    return x, s, a_s, a_d, w


def test_signal_distractor_linear_model() -> None:
    x, s, a_s, a_d, w = _signal_distractor(500)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(w)[None])
    X = torch.as_tensor(x)
    np.testing.assert_allclose(model(X)[:, 0].detach().numpy(), s, atol=1e-12)

    gradient = innspect.create_analyzer("gradient", model).analyze(x[:5])
    np.testing.assert_allclose(gradient, np.tile(w, (5, 1)), atol=1e-12)  # along w, not a_s
    assert abs(_cosine(w, a_s)) < 0.99

    patterns = PatternComputer(model, "linear").compute(x, batch_size=64)
    (pattern,) = patterns.values()
    assert _cosine(pattern[0], a_s) > 0.999999
    net = innspect.create_analyzer(
        "pattern.net", model, patterns=patterns, reverse_project_bottleneck_layers=False
    )
    # PatternNet's output is the signal component a_s * s of every sample.
    np.testing.assert_allclose(net.analyze(x[:20]), np.outer(s[:20], a_s), atol=1e-9)


def test_signal_distractor_two_layer_relu_model() -> None:
    x, s, a_s, a_d, w = _signal_distractor(20000, dim=4, seed=1)
    rng = np.random.default_rng(2)
    null = np.linalg.svd(np.stack([a_s, a_d]))[2][2:]  # directions the data never varies in
    scales = rng.uniform(0.5, 2.0, 3)
    w1 = scales[:, None] * w + rng.standard_normal((3, 2)) @ null  # each unit: relu(c_j s)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(w1))
        model[2].weight.copy_(torch.tensor([[1.0, 0.5, 2.0]]))
        model[2].bias.zero_()
    patterns = PatternComputer(model, "relu").compute(x, batch_size=1000)
    for row in patterns["0"]:
        assert _cosine(row, a_s) > 0.999
    active = s > 0.5
    xs = x[active][:10]
    explained = innspect.create_analyzer(
        "pattern.net", model, patterns=patterns, reverse_project_bottleneck_layers=False
    ).analyze(xs)
    gradient = innspect.create_analyzer("gradient", model).analyze(xs)
    for e, g in zip(explained, gradient, strict=True):
        assert _cosine(e, a_s) > 0.999  # the signal direction
        assert abs(_cosine(g, a_s)) < 0.99  # the gradient is not


def _unfold_statistics(x, weight, stride, padding, dilation, groups, mask, y):
    """Explicit receptive-field patches (any dimension) -> (sum_x, sum_xy) per weight entry."""
    dims = weight.dim() - 2
    xp = F.pad(x, [p for p in reversed(padding) for _ in range(2)])
    for d in range(dims):
        span = dilation[d] * (weight.shape[2 + d] - 1) + 1
        xp = xp.unfold(2 + d, span, stride[d])
    index = (slice(None),) * (2 + dims) + tuple(slice(None, None, dl) for dl in dilation)
    patches = xp[index]  # (N, C_in, *out positions, *kernel)
    per_group_in, per_group_out = weight.shape[1], weight.shape[0] // groups
    sum_x, sum_xy = torch.zeros_like(weight), torch.zeros_like(weight)
    letters = "xyz"[:dims]
    kernel = "ijk"[:dims]
    for g in range(groups):
        p = patches[:, g * per_group_in : (g + 1) * per_group_in]
        out = slice(g * per_group_out, (g + 1) * per_group_out)
        spec = f"nc{letters}{kernel},no{letters}->oc{kernel}"
        sum_x[out] = torch.einsum(spec, p, mask[:, out])
        sum_xy[out] = torch.einsum(spec, p, (y * mask)[:, out])
    return sum_x, sum_xy


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2),
        nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2),
        nn.Conv3d(2, 3, 2, stride=1, padding=1, dilation=1),
    ],
    ids=["conv1d", "conv2d", "conv3d"],
)
def test_weight_gradient_statistics_equal_an_explicit_unfold(conv: nn.Module) -> None:
    model = nn.Sequential(conv, nn.ReLU()).double()
    shape = {1: (5, 4, 11), 2: (5, 4, 7, 6), 3: (3, 2, 4, 5, 3)}[conv.weight.dim() - 2]
    X = torch.randn(*shape, dtype=torch.float64)
    computer = PatternComputer(model, "relu")
    computer.compute(X, batch_size=2)
    state = computer.statistics["0"]["pattern"].state()
    z = conv(X).detach()
    y = z - conv.bias.detach().reshape(1, -1, *([1] * (z.dim() - 2)))
    mask = (z > 0).double()
    sum_x, sum_xy = _unfold_statistics(
        X, conv.weight.detach(), conv.stride, conv.padding, conv.dilation, conv.groups, mask, y
    )
    np.testing.assert_allclose(state["sum_x"], sum_x.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(state["sum_xy"], sum_xy.numpy(), rtol=1e-10, atol=1e-10)
    others = (0, *range(2, z.dim()))
    np.testing.assert_allclose(state["count"], mask.sum(others).numpy())
    np.testing.assert_allclose(state["sum_y"], y.sum(others).numpy(), rtol=1e-10)
    np.testing.assert_allclose(state["count_all"], z.numel() / z.shape[1])


def test_transposed_convolution_weight_gradient_equals_autograd() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)).double()
    graph = ModelGraph(model)
    op = graph.linear_op(graph.by_name["0"])
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    signal = torch.randn_like(op(x))
    fast = op.weight_gradient(x, signal)
    slow = _autograd_weight_gradient(op)(x, signal)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    pattern = PatternComputer(model, "linear").compute(x)["0"]
    assert pattern.shape == tuple(model[0].weight.shape)
    # Each output channel's pattern is normalised: sum over the weights feeding it of W * A
    # is 1. Which weights feed channel o is found independently, from a one-hot signal.
    weight = model[0].weight.detach().numpy()
    for o in range(6):
        one_hot = torch.zeros_like(signal)
        one_hot[:, o] = 1
        feeds = op.weight_gradient(torch.ones_like(x), one_hot).numpy() != 0
        assert feeds.sum() == weight.size // 6
        np.testing.assert_allclose((weight * pattern)[feeds].sum(), 1.0, rtol=1e-10)


def _innvestigate_compute_pattern(W, mean_x, mean_y, mean_xy):
    """iNNvestigate 1.0.9 LinearPattern.compute_pattern, transcribed (Keras layouts)."""

    def safe_divide(a, b):
        return a / (b + (b == 0))

    W2D = W.reshape((-1, W.shape[-1]))
    ExEy = mean_x * mean_y
    cov_xy = mean_xy - ExEy
    w_cov_xy = np.diag(np.dot(W2D.T, cov_xy))
    A = safe_divide(cov_xy, w_cov_xy[None, :])
    return A.reshape(W.shape)


def test_pattern_formula_equals_innvestigate_transcription() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU()
    ).double()
    X = torch.randn(30, 3, 6, 6, dtype=torch.float64)
    computer = PatternComputer(model, "relu")
    patterns = computer.compute(X, batch_size=8)
    for name, to_keras, from_keras in (
        ("3", lambda a: a.T, lambda a: a.T),
        ("0", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    ):
        s = computer.statistics[name]["pattern"].state()
        weight = to_keras(dict(model.named_children())[name].weight.detach().numpy())
        flat = weight.reshape(-1, weight.shape[-1]).shape
        count = s["count"]
        mean_x = (to_keras(s["sum_x"]).reshape(flat) / np.maximum(count, 1)).reshape(flat)
        mean_xy = to_keras(s["sum_xy"]).reshape(flat) / np.maximum(count, 1)
        mean_y = s["sum_y"] / s["count_all"]
        expected = from_keras(_innvestigate_compute_pattern(weight, mean_x, mean_y, mean_xy))
        np.testing.assert_allclose(patterns[name], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("block", [7, 1 << 20])
def test_dense_statistics_added_block_by_block_equal_the_explicit_sums(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large sums are added a block at a time (rows of a dense kernel, slices of any sum):
    with blocks that divide nothing, the sums are the explicit ones."""
    from innspect.patterns import statistics as patterns_module

    monkeypatch.setattr(patterns_module, "_BLOCK_ELEMENTS", block)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(13, 9), nn.ReLU(), nn.Linear(9, 4)).double()
    X = torch.randn(20, 13, dtype=torch.float64)
    computer = PatternComputer(model, "relu")
    computer.compute(X, batch_size=6)
    s = computer.statistics["0"]["pattern"].state()
    y = (X @ model[0].weight.T).detach().numpy()
    mask = (y + model[0].bias.detach().numpy() > 0).astype(np.float64)
    x = X.numpy()
    np.testing.assert_allclose(s["count"], mask.sum(0), rtol=0)
    np.testing.assert_allclose(s["sum_y"], y.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s["sum_x"], mask.T @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s["sum_xy"], (y * mask).T @ x, rtol=1e-12, atol=1e-12)


def test_one_pass_equals_merged_halves_and_resumed_files(tmp_path) -> None:
    model = FunctionalNet().double()
    X = torch.randn(24, 3, 8, 8, dtype=torch.float64)
    whole = PatternComputer(model, "relu.negative").compute(X, batch_size=5)
    first, second = PatternComputer(model, "relu.negative"), PatternComputer(model, "relu.negative")
    first.compute(X[:11], batch_size=4)
    second.compute(X[11:], batch_size=13)
    first.save_npz(tmp_path / "half.npz")
    loaded = PatternComputer.load_npz(tmp_path / "half.npz", model)
    merged = loaded.merge(second).patterns()
    assert set(merged) == set(whole) == {"conv1", "conv2", "conv3", "head"}
    for name in whole:
        np.testing.assert_allclose(merged[name], whole[name], rtol=1e-10, atol=1e-12)
    # a loaded computer continues with more data: the same as one pass
    resumed = PatternComputer.load_npz(tmp_path / "half.npz", model)
    for name, value in resumed.compute(X[11:]).items():
        np.testing.assert_allclose(value, whole[name], rtol=1e-10, atol=1e-12)


def test_pattern_attribution_of_a_linear_layer_is_pattern_times_weight() -> None:
    model = nn.Linear(6, 3).double()
    X = torch.randn(40, 6, dtype=torch.float64)
    patterns = PatternComputer(model, "linear").compute(X)
    (name,) = patterns
    analyzer = innspect.create_analyzer(
        "pattern.attribution",
        model,
        patterns=patterns,
        neuron_selection_mode="index",
        reverse_project_bottleneck_layers=False,
    )
    result = analyzer.analyze(X[:4], neuron_selection=1)
    y = model(X[:4])[:, 1].detach().numpy()
    expected = y[:, None] * (patterns[name] * model.weight.detach().numpy())[1][None]
    np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_dummy_patterns_give_the_gradient_times_the_output() -> None:
    model = FunctionalNet().double()
    X = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    net = innspect.create_analyzer("pattern.net", model, reverse_project_bottleneck_layers=False)
    net.fit(X, pattern_type="dummy")
    expl = innspect.create_analyzer("gradient", model).explain(X)
    torch.testing.assert_close(
        net.analyze(X), expl.attribution * expl.scores[:, None, None, None], rtol=1e-10, atol=1e-12
    )


def _small_resnet() -> nn.Module:
    import torchvision  # the test extra installs it: missing, the test fails

    model = torchvision.models.resnet18(num_classes=4)
    model.eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", ["pattern.net", "pattern.attribution"])
def test_analyzers_run_on_cnns_and_a_residual_net(name: str, tmp_path) -> None:
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).eval()
    for model, shape in ((cnn, (12, 3, 8, 8)), (_small_resnet(), (6, 3, 32, 32))):
        X = torch.randn(*shape)
        analyzer = innspect.create_analyzer(name, model)
        with pytest.raises(InputError, match="no patterns yet: call analyzer.fit"):
            analyzer.analyze(X[:2])
        analyzer.fit(X, batch_size=4)
        first = analyzer.analyze(X[:2])
        assert first.shape == X[:2].shape and torch.isfinite(first).all()
        torch.testing.assert_close(analyzer.analyze(X[:2]), first, rtol=0, atol=0)
        path = tmp_path / "analyzer.npz"
        analyzer.save_npz(path)
        loaded = Analyzer.load_npz(path, model)
        torch.testing.assert_close(loaded.analyze(X[:2]), first, rtol=0, atol=0)


def test_clear_errors(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    other = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2), nn.ReLU(), nn.Linear(2, 2))
    X = torch.randn(10, 4)
    computer = PatternComputer(model, "relu")
    computer.compute(X)
    computer.save_npz(tmp_path / "patterns.npz")
    analyzer = innspect.create_analyzer("pattern.net", other, patterns=tmp_path / "patterns.npz")
    with pytest.raises(InputError, match=r"another architecture.*\['4'\].*0 \(3, 4\) vs weight"):
        analyzer.analyze(X)
    with pytest.raises(InputError, match="empty"):
        PatternComputer(model).compute(iter([]))
    bad = X.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        PatternComputer(model).compute(bad, batch_size=4)
    with pytest.raises(InputError, match="pattern_type must be one of"):
        PatternComputer(model, "sigmoid")
    with pytest.raises(InputError, match="does not exist"):
        innspect.create_analyzer("pattern.net", model, patterns=tmp_path / "missing.npz")


class _FunctionalCNN(nn.Module):
    """The same network as ``_module_cnn``, written with F.conv2d / F.linear calls."""

    def __init__(self, modules: nn.Sequential) -> None:
        super().__init__()
        self.w1, self.b1 = modules[0].weight, modules[0].bias
        self.w2, self.b2 = modules[3].weight, modules[3].bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(F.conv2d(x, self.w1, self.b1, stride=2, padding=1))
        return F.linear(hidden.flatten(1), self.w2, self.b2)


def test_functional_layers_get_the_patterns_of_their_module_twins() -> None:
    modules = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4)
    ).double()
    functional = _FunctionalCNN(modules)
    X = torch.randn(20, 2, 6, 6, dtype=torch.float64)
    expected = PatternComputer(modules, "relu").compute(X, batch_size=6)
    found = PatternComputer(functional, "relu").compute(X, batch_size=6)
    assert len(found) == 2
    for (_, a), (_, b) in zip(sorted(expected.items()), sorted(found.items()), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    for name in ("pattern.net", "pattern.attribution"):
        a = innspect.create_analyzer(name, modules, patterns=expected).analyze(X[:3])
        b = innspect.create_analyzer(name, functional, patterns=found).analyze(X[:3])
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_a_model_without_linear_layers_gets_no_patterns(tmp_path) -> None:
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten()).double()
    X = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    computer = PatternComputer(model, "relu")
    assert computer.compute(X) == {}
    computer.save_npz(tmp_path / "none.npz")
    net = innspect.create_analyzer(
        "pattern.net",
        model,
        patterns=tmp_path / "none.npz",
        neuron_selection_mode="all",
        reverse_project_bottleneck_layers=False,
    )
    expl = innspect.create_analyzer("gradient", model, neuron_selection_mode="all").explain(X)
    expected = expl.attribution * model(X).detach().reshape(4, 2, 2, 2).repeat_interleave(
        2, -1
    ).repeat_interleave(2, -2)  # the walk starts from y: y at each maximum, 0 elsewhere
    torch.testing.assert_close(net.analyze(X), expected)
    net.save_npz(tmp_path / "net.npz")
    loaded = Analyzer.load_npz(tmp_path / "net.npz", model)
    torch.testing.assert_close(loaded.analyze(X), expected)
