"""Each LRP rule against an independent float64 formula on an explicit weight matrix.

The layer's matrix is built from unit inputs (column i = layer(e_i) - layer(0)), so the
reference formulas below see plain matrices and never touch LinearOp, convolutions or
their transposes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from innspect.graph.linear_ops import linear_op_from_module
from innspect.rules import lrp as rules

LAYERS: dict[str, tuple[Callable[[bool], nn.Module], tuple[int, ...]]] = {
    "Linear": (lambda bias: nn.Linear(5, 4, bias=bias), (5,)),
    "Linear_rank3": (lambda bias: nn.Linear(4, 3, bias=bias), (3, 4)),
    "Conv1d": (lambda bias: nn.Conv1d(2, 3, 3, stride=2, padding=1, bias=bias), (2, 7)),
    "Conv2d": (lambda bias: nn.Conv2d(2, 3, 3, padding=1, bias=bias), (2, 4, 5)),
    "Conv3d": (lambda bias: nn.Conv3d(2, 2, 2, bias=bias), (2, 3, 3, 4)),
    "ConvTranspose2d": (
        lambda bias: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, bias=bias),
        (2, 3, 3),
    ),
    "Conv2d_grouped_dilated": (
        lambda bias: nn.Conv2d(4, 2, 2, dilation=2, groups=2, bias=bias),
        (4, 5, 5),
    ),
}


def _batchnorm(bias: bool) -> nn.Module:
    bn = nn.BatchNorm2d(3, affine=True)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_() if bias else bn.bias.zero_()
        if not bias:
            # shift = beta - mean * scale must vanish too for a bias-free affine map
            bn.running_mean.zero_()
    return bn.eval()


LAYERS["BatchNorm2d"] = (_batchnorm, (3, 2, 2))


def make_layer(name: str, bias: bool) -> tuple[nn.Module, tuple[int, ...]]:
    factory, shape = LAYERS[name]
    torch.manual_seed(1)
    layer = factory(bias).double().eval()
    if bias and getattr(layer, "bias", None) is not None and name != "BatchNorm2d":
        with torch.no_grad():
            layer.bias.normal_()  # default init is small; make the bias matter
    return layer, shape


def explicit_matrix(layer: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, b) with layer(x).flatten() = M @ x.flatten() + b, from unit inputs."""
    size = 1
    for s in shape:
        size *= s
    with torch.no_grad():
        b = layer(torch.zeros((1,) + shape, dtype=torch.float64)).flatten()
        units = torch.eye(size, dtype=torch.float64).reshape((size,) + shape)
        columns = layer(units).reshape(size, -1) - b
    return columns.T.contiguous(), b


def safe(den: torch.Tensor, stabilizer: float | None) -> torch.Tensor:
    if stabilizer is None:
        return torch.where(den == 0, torch.full_like(den, 1e-7), den)
    sign = torch.where(den >= 0, torch.ones_like(den), -torch.ones_like(den))
    return den + stabilizer * sign


def z_like(contrib: torch.Tensor, den: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """R_i = sum_j contrib_ji R_j / den_j."""
    return contrib.T @ (r / den)


# Reference formulas: (M, b, x, R) for ONE sample -> R_in; x and R are flat vectors.
def ref_z(bias: bool, stabilizer: float | None):
    def f(m, b, x, r):
        c = m * x
        return z_like(c, safe(c.sum(1) + (b if bias else 0), stabilizer), r)

    return f


def ref_epsilon(epsilon: float, bias: bool):
    def f(m, b, x, r):
        c = m * x
        den = c.sum(1) + (b if bias else 0)
        return z_like(c, den + epsilon * torch.where(den >= 0, 1.0, -1.0).double(), r)

    return f


def ref_wsquare(m, b, x, r):
    c = m**2
    return z_like(c, safe(c.sum(1), None), r)


def ref_flat(m, b, x, r):
    c = (m != 0).double()
    return z_like(c, safe(c.sum(1), None), r)


def ref_alpha_beta(alpha: float, beta: float, bias: bool, split: bool, stabilizer):
    def f(m, b, x, r):
        c = m * x
        act, inh = c.clamp(min=0), c.clamp(max=0)  # x+W+ and x-W-  /  x+W- and x-W+
        b_act = (b.clamp(min=0) if split else b) if bias else 0
        b_inh = (b.clamp(max=0) if split else b) if bias else 0
        out = alpha * z_like(act, safe(act.sum(1) + b_act, stabilizer), r)
        if beta:
            out = out - beta * z_like(inh, safe(inh.sum(1) + b_inh, stabilizer), r)
        return out

    return f


def ref_zplus_fast(m, b, x, r):
    c = m.clamp(min=0) * x
    return z_like(c, safe(c.sum(1), None), r)


def ref_bounded(low: float, high: float):
    def f(m, b, x, r):
        lo, hi = torch.full_like(x, low), torch.full_like(x, high)
        c = m * x - m.clamp(min=0) * lo - m.clamp(max=0) * hi
        return z_like(c, safe(c.sum(1), None), r)

    return f


def ref_gamma(gamma: float, stabilizer):
    def f(m, b, x, r):
        mg = m + gamma * m.clamp(min=0)
        bg = b + gamma * b.clamp(min=0)
        c = mg * x
        return z_like(c, safe(c.sum(1) + bg, stabilizer), r)

    return f


def ref_gamma_generalized(gamma: float, stabilizer):
    def f(m, b, x, r):
        z = m @ x + b
        up, down = m + gamma * m.clamp(min=0), m + gamma * m.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        pos = up * xp + down * xn
        neg = down * xp + up * xn
        den_pos = pos.sum(1) + b + gamma * b.clamp(min=0)
        den_neg = neg.sum(1) + b + gamma * b.clamp(max=0)
        r_pos = r * (z > 0).double()
        r_neg = r * (z < 0).double()
        return z_like(pos, safe(den_pos, stabilizer), r_pos) + z_like(
            neg, safe(den_neg, stabilizer), r_neg
        )

    return f


RULE_CASES = {
    "Z": (rules.Z(), ref_z(True, None)),
    "Z_IB": (rules.Z(bias=False), ref_z(False, None)),
    "Z_zennit_stabilizer": (rules.Z(stabilizer=1e-3), ref_z(True, 1e-3)),
    "Epsilon": (rules.Epsilon(0.25), ref_epsilon(0.25, True)),
    "Epsilon_IB": (rules.Epsilon(0.25, bias=False), ref_epsilon(0.25, False)),
    "WSquare": (rules.WSquare(), ref_wsquare),
    "Flat": (rules.Flat(), ref_flat),
    "Alpha2Beta1": (rules.AlphaBeta(2, 1), ref_alpha_beta(2, 1, True, False, None)),
    "Alpha2Beta1_IB": (rules.AlphaBeta(2, 1, bias=False), ref_alpha_beta(2, 1, False, False, None)),
    "Alpha3Beta2": (rules.AlphaBeta(alpha=3), ref_alpha_beta(3, 2, True, False, None)),
    "Alpha1Beta0": (rules.AlphaBeta(beta=0), ref_alpha_beta(1, 0, True, False, None)),
    "Alpha2Beta1_zennit": (
        rules.AlphaBeta(2, 1, stabilizer=1e-3, split_bias=True),
        ref_alpha_beta(2, 1, True, True, 1e-3),
    ),
    "ZPlus": (rules.ZPlus(), ref_alpha_beta(1, 0, False, False, None)),
    "ZPlus_zennit": (
        rules.AlphaBeta(1, 0, stabilizer=1e-3, split_bias=True),
        ref_alpha_beta(1, 0, True, True, 1e-3),
    ),
    "ZPlusFast": (rules.ZPlusFast(), ref_zplus_fast),
    "Bounded": (rules.Bounded(-1.5, 2.0), ref_bounded(-1.5, 2.0)),
    "Gamma": (rules.Gamma(0.25), ref_gamma(0.25, None)),
    "Gamma_generalized": (
        rules.Gamma(0.5, stabilizer=1e-3, generalized=True),
        ref_gamma_generalized(0.5, 1e-3),
    ),
}

_MATRICES: dict[tuple[str, bool], tuple] = {}


def layer_case(name: str, bias: bool):
    key = (name, bias)
    if key not in _MATRICES:
        layer, shape = make_layer(name, bias)
        _MATRICES[key] = (layer, shape, *explicit_matrix(layer, shape))
    return _MATRICES[key]


@pytest.mark.parametrize("sign", ["mixed", "nonnegative"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layer_name", sorted(LAYERS))
@pytest.mark.parametrize("rule_name", sorted(RULE_CASES))
def test_rule_matches_explicit_matrix_formula(
    rule_name: str, layer_name: str, bias: bool, sign: str
) -> None:
    rule, reference = RULE_CASES[rule_name]
    layer, shape, m, b = layer_case(layer_name, bias)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn((3,) + shape, generator=generator, dtype=torch.float64)
    if sign == "nonnegative":
        x = x.clamp(min=0)  # exercises the x >= 0 shortcuts (one forward)
    x[0].view(-1)[0] = 0.0  # an exact zero input
    with torch.no_grad():
        z = layer(x)
    r = torch.randn(z.shape, generator=generator, dtype=torch.float64)
    op = linear_op_from_module(layer)
    with torch.no_grad():
        result = rule.relevance(op, x, z, r)
    assert result.shape == x.shape
    expected = torch.stack(
        [reference(m, b, x[i].flatten(), r[i].flatten()).reshape(shape) for i in range(x.shape[0])]
    )
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(result / scale, expected / scale, rtol=0, atol=1e-10)


def test_bounded_accepts_per_element_bounds() -> None:
    layer, shape, m, b = layer_case("Conv2d", True)
    low = -torch.rand(shape, dtype=torch.float64)  # per channel and pixel
    high = torch.rand((shape[0], 1, 1), dtype=torch.float64) + 0.5  # per channel
    x = torch.randn((2,) + shape, dtype=torch.float64)
    with torch.no_grad():
        z = layer(x)
    r = torch.randn(z.shape, dtype=torch.float64)
    result = rules.Bounded(low, high).relevance(linear_op_from_module(layer), x, z, r)
    lo, hi = low.flatten(), high.expand(shape).flatten()
    for i in range(2):
        xi = x[i].flatten()
        c = m * xi - m.clamp(min=0) * lo - m.clamp(max=0) * hi
        expected = c.T @ (r[i].flatten() / safe(c.sum(1), None))
        torch.testing.assert_close(result[i].flatten(), expected, rtol=1e-10, atol=1e-10)


def test_bounded_rejects_bounds_that_do_not_broadcast() -> None:
    layer, shape, _, _ = layer_case("Conv2d", True)
    x = torch.randn((2,) + shape, dtype=torch.float64)
    rule = rules.Bounded(torch.zeros(7), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        rule.relevance(linear_op_from_module(layer), x, layer(x).detach(), layer(x).detach())


def test_z_stabilises_only_exact_zeros() -> None:
    """Z adds 1e-7 where z == 0 and nothing elsewhere; Epsilon shifts 0 upwards."""
    layer = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.0]]))
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # z = [0, 2]
    op = linear_op_from_module(layer)
    z = layer(x).detach()
    r = torch.tensor([[1e-7, 2.0]], dtype=torch.float64)
    result = rules.Z().relevance(op, x, z, r)
    # neuron 0: R/1e-7 = 1 -> x_i w_i0 = [1, -1]; neuron 1: R/z = 1 -> [2, 0]
    torch.testing.assert_close(result, torch.tensor([[3.0, -1.0]], dtype=torch.float64))
    eps = rules.Epsilon(0.5).relevance(op, x, z, torch.tensor([[0.5, 2.5]], dtype=torch.float64))
    torch.testing.assert_close(eps, torch.tensor([[3.0, -1.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: rules.Epsilon(0), "epsilon must be > 0"),
        (lambda: rules.Epsilon(-1e-3), "epsilon must be > 0"),
        (lambda: rules.AlphaBeta(), "needs alpha or beta"),
        (lambda: rules.AlphaBeta(2, 2), "alpha - beta = 1"),
        (lambda: rules.AlphaBeta(alpha=0.5), "alpha >= 1"),
        (lambda: rules.Bounded(2.0, 1.0), "low <= high"),
        (lambda: rules.Gamma(-0.1), "gamma must be >= 0"),
        (lambda: rules.Z(stabilizer=0.0), "stabilizer must be > 0"),
        (lambda: rules.rule_from_name("Zz"), "unknown LRP rule"),
    ],
)
def test_invalid_rule_arguments_are_refused(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


def test_alpha_beta_infers_the_missing_parameter() -> None:
    assert (rules.AlphaBeta(alpha=2).alpha, rules.AlphaBeta(alpha=2).beta) == (2.0, 1.0)
    assert (rules.AlphaBeta(beta=0).alpha, rules.AlphaBeta(beta=0).beta) == (1.0, 0.0)


@pytest.mark.parametrize("rule_name", sorted(RULE_CASES))
def test_rule_config_round_trip(rule_name: str) -> None:
    rule, _ = RULE_CASES[rule_name]
    rebuilt = rules.rule_from_config(rule.get_config())
    assert type(rebuilt) is type(rule)
    assert rebuilt.get_config() == rule.get_config()


def test_rule_names_follow_innvestigate() -> None:
    assert rules.rule_from_name("Alpha2Beta1IgnoreBias").get_config() == (
        rules.AlphaBeta(2, 1, bias=False).get_config()
    )
    assert rules.rule_from_name("EpsilonIgnoreBias") == rules.Epsilon(bias=False)
    assert rules.rule_from_name("z_plus") == rules.ZPlus()


# Rules as the layer-splitting tests meet them: each test takes those its mechanism applies to.
SPLITTABLE_RULES = [
    rules.Z(),
    rules.Epsilon(0.1),
    rules.AlphaBeta(2, 1),
    rules.AlphaBeta(1, 0, stabilizer=1e-3, split_bias=True),
    rules.ZPlus(),
    rules.ZPlusFast(),
    rules.WSquare(),
    rules.Flat(),
    rules.Bounded(-1.0, 2.0),
    rules.Gamma(0.5, stabilizer=1e-3, generalized=True),
]


@pytest.mark.parametrize("rule", [r for r in SPLITTABLE_RULES if r.copies_weight], ids=repr)
def test_large_dense_layers_split_by_output_units_give_the_same_relevance(
    rule: rules.LinearRule, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rule that copies the weight works on large dense layers a block of output units at
    # a time; with a tiny block size this small layer is split into 7 pieces.
    from innspect.analyzers.lrp import LRP

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 13), nn.ReLU(), nn.Linear(13, 4)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    analyzer = LRP(model, rule=rule, neuron_selection_mode="all")
    whole = analyzer.analyze(x)
    pieces: list[int] = []
    original = type(linear_op_from_module(model[0])).output_blocks

    def counting(op, max_bytes):
        blocks = original(op, max_bytes)
        pieces.append(0 if blocks is None else len(blocks))
        return blocks

    monkeypatch.setattr(rules.LinearRule, "block_bytes", 2 * 6 * 8)  # two rows of 6 doubles
    monkeypatch.setattr(type(linear_op_from_module(model[0])), "output_blocks", counting)
    split = LRP(model, rule=rule, neuron_selection_mode="all").analyze(x)
    assert max(pieces) == 7
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", [r for r in SPLITTABLE_RULES if r.splits_batch], ids=repr)
def test_rules_on_large_outputs_run_a_few_samples_at_a_time_with_the_same_result(
    rule: rules.LinearRule, monkeypatch: pytest.MonkeyPatch
) -> None:
    from innspect.analyzers.lrp import LRP

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4)
    ).double()
    x = torch.randn(5, 2, 5, 5, dtype=torch.float64)
    whole = LRP(model, rule=rule, neuron_selection_mode="all").analyze(x)
    calls: list[int] = []
    original = type(rule).relevance

    def counting(self, op, x, z, relevance, **hints):
        calls.append(x.shape[0])
        return original(self, op, x, z, relevance, **hints)

    # Two samples of the convolution's output (3 x 5 x 5 doubles) per chunk: 2 + 2 + 1.
    monkeypatch.setattr(rules.LinearRule, "sample_bytes", 2 * 3 * 5 * 5 * 8)
    monkeypatch.setattr(type(rule), "relevance", counting)
    split = LRP(model, rule=rule, neuron_selection_mode="all").analyze(x)
    assert sorted(calls) == [1, 2, 2, 5]  # the dense layer (75 x 4 outputs) runs whole
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-12)
