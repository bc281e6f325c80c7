"""Modern-architecture node rules against their formulas written out by hand (float64, 1e-10).

SPEC "Modern architectures": element-wise products (gate / uniform), matrix products
(AttnLRP's epsilon-uniform), softmax inside the network (AttnLRP, CP-LRP), LayerNorm /
GroupNorm (std held constant), RMSNorm (identity), identity nodes (stochastic depth).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.engine.forward import run_forward
from innspect.engine.reverse import NodeContext
from innspect.errors import UnsupportedNodeError
from innspect.graph.graph import ModelGraph
from innspect.graph.ops import family
from innspect.rules.modern import (
    MatmulRule,
    NormRule,
    ProductRule,
    SoftmaxConstant,
    SoftmaxRule,
)

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}


def apply(rule, model: nn.Module, x: torch.Tensor, fam: str, signal=None, index: int = 0):
    """Run ``rule`` on the ``index``-th node of family ``fam``; returns (inputs, output,
    signal, {input node name: relevance})."""
    graph = ModelGraph(model)
    info = [i for i in graph.nodes if family(i.node, i.module) == fam][index]
    record = run_forward(graph, x, autograd_nodes={info.node})
    output = record.values[info.node]
    if signal is None:
        signal = torch.randn(output.shape, dtype=DT, generator=torch.Generator().manual_seed(3))
    inputs = [record.values[n] for n in info.signal_inputs]
    mapped = rule(NodeContext(graph, info, record, signal))
    named = {n.name: r for n, r in zip(info.signal_inputs, mapped, strict=True)}
    return inputs, output, signal, named, info


def signed(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(1))


class TwoLinear(nn.Module):
    def __init__(self, op, d: int = 4) -> None:
        super().__init__()
        self.a, self.b, self.op = nn.Linear(d, d), nn.Linear(d, d), op

    def forward(self, x):
        return self.op(self.a(x), self.b(x))


def test_product_of_two_signals_uniform_rule_halves() -> None:
    model = TwoLinear(lambda a, b: a * b).double()
    (a, b), z, r, named, _ = apply(ProductRule(gate=True), model, _x(3, 4), "product")
    torch.testing.assert_close(named["a"], r / 2, **TOL)
    torch.testing.assert_close(named["b"], r / 2, **TOL)


class SE(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc(mean(x))), the gate broadcast over space."""

    def __init__(self, c: int = 3, gate=torch.sigmoid) -> None:
        super().__init__()
        self.conv, self.fc, self.gate = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1), gate

    def forward(self, x):
        y = self.conv(x)
        return y * self.gate(self.fc(y.mean((2, 3), keepdim=True)))


@pytest.mark.parametrize("gate", [torch.sigmoid, F.hardsigmoid, nn.Hardsigmoid()])
def test_gate_rule_gives_everything_to_the_gated_signal(gate) -> None:
    model = SE(gate=gate).double()
    _, _, r, named, info = apply(ProductRule(gate=True), model, _x(2, 3, 4, 4), "product")
    torch.testing.assert_close(named["conv"], r, **TOL)
    assert [v for k, v in named.items() if k != "conv"] == [None]
    # the uniform rule instead halves, summing over the gate's broadcast axes
    _, _, r, named, _ = apply(ProductRule(gate=False), model, _x(2, 3, 4, 4), "product")
    torch.testing.assert_close(named["conv"], r / 2, **TOL)
    gate_relevance = [v for k, v in named.items() if k != "conv"][0]
    torch.testing.assert_close(gate_relevance, (r / 2).sum((2, 3), keepdim=True), **TOL)


def test_hand_written_rmsnorm_holds_the_reciprocal_norm_constant() -> None:
    class RMS(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)

    _, _, r, named, _ = apply(ProductRule(), RMS().double(), _x(3, 4), "product")
    torch.testing.assert_close(named["fc"], r, **TOL)


def test_quotient_holds_the_divisor_constant() -> None:
    model = TwoLinear(lambda a, b: a / (b.abs() + 1)).double()
    _, _, r, named, _ = apply(ProductRule(), model, _x(3, 4), "product")
    torch.testing.assert_close(named["a"], r, **TOL)


def _matmul_reference(a, b, r, eps, n=2):
    z = a @ b
    s = r / signed(n * z, eps)
    return a * (s @ b.transpose(-2, -1)), b * (a.transpose(-2, -1) @ s)


@pytest.mark.parametrize(
    "op",
    [
        lambda a, b: torch.matmul(a, b.transpose(-2, -1)),
        lambda a, b: a @ b.transpose(-2, -1),
        lambda a, b: torch.bmm(a, b.transpose(1, 2)),
        lambda a, b: torch.einsum("nld,nmd->nlm", a, b),
    ],
    ids=["matmul", "operator", "bmm", "einsum"],
)
def test_matmul_of_two_signals_epsilon_uniform(op) -> None:
    model = TwoLinear(op).double()
    eps = 0.3  # large, so a wrong stabiliser shows
    x = _x(2, 5, 4)
    (a, second), _, r, named, _ = apply(MatmulRule(eps), model, x, "matmul")
    einsum = second.shape == a.shape  # einsum takes b itself, the others its transpose
    ra, rb = _matmul_reference(a, second.transpose(1, 2) if einsum else second, r, eps)
    relevance = list(named.values())
    torch.testing.assert_close(relevance[0], ra, **TOL)
    torch.testing.assert_close(relevance[1], rb.transpose(1, 2) if einsum else rb, **TOL)


class Attention(nn.Module):
    """Single-head attention written out: softmax(q k^T / sqrt(d) masked) v."""

    def __init__(self, d: int = 4, length: int = 5) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        mask = torch.zeros(length, length, dtype=torch.bool)
        mask[0, 1:] = True
        mask[2, 3] = True
        self.register_buffer("mask", mask)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-2, -1) / 2.0
        p = torch.softmax(scores.masked_fill(self.mask, float("-inf")), dim=-1)
        return p @ self.v(x)


def test_cp_matmul_holds_attention_probabilities_constant() -> None:
    eps = 0.3
    (p, v), _, r, named, info = apply(
        MatmulRule(eps, True), Attention().double(), _x(2, 5, 4), "matmul", index=1
    )
    z = p @ v
    expected_v = v * (p.transpose(-2, -1) @ (r / signed(z, eps)))
    torch.testing.assert_close(named["v"], expected_v, **TOL)
    assert named["softmax"] is None
    # AttnLRP (no CP): uniform, the probabilities get half
    (p, v), _, r, named, _ = apply(
        MatmulRule(eps), Attention().double(), _x(2, 5, 4), "matmul", index=1
    )
    rp, rv = _matmul_reference(p, v, r, eps)
    torch.testing.assert_close(named["softmax"], rp, **TOL)
    torch.testing.assert_close(named["v"], rv, **TOL)


def test_softmax_rule_with_masked_inputs() -> None:
    (x,), s, r, named, _ = apply(SoftmaxRule(), Attention().double(), _x(2, 5, 4), "softmax")
    assert bool(torch.isinf(x).any())
    x0 = torch.where(torch.isinf(x), torch.zeros_like(x), x)
    expected = torch.empty_like(x)
    for index in np.ndindex(*x.shape[:-1]):  # row by row, as written in the paper
        row_r, row_s, row_x = r[index], s[index], x0[index]
        expected[index] = row_x * (row_r - row_s * row_r.sum())
    result = named["masked_fill"]
    assert bool(torch.isfinite(result).all())
    torch.testing.assert_close(result, expected, **TOL)
    _, _, _, named, _ = apply(SoftmaxConstant(), Attention().double(), _x(2, 5, 4), "softmax")
    assert named["masked_fill"] is None


def _norm_reference(x, y, r, weight, std, eps):
    """R_in = x * J^T (R / (y + eps)) with J the explicit Jacobian of (x - mean) / std * w."""
    n = x.shape[-1]
    centering = torch.eye(n, dtype=DT) - torch.full((n, n), 1.0 / n, dtype=DT)
    out = torch.empty_like(x)
    for index in np.ndindex(*x.shape[:-1]):
        jac = torch.diag(weight / std[index]) @ centering  # dy_j / dx_i at fixed std
        out[index] = x[index] * (jac.T @ (r[index] / signed(y[index], eps)))
    return out


@pytest.mark.parametrize("functional", [False, True])
def test_layer_norm_rule_against_its_jacobian(functional: bool) -> None:
    class LN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.ln = nn.Linear(6, 6), nn.LayerNorm(6, eps=1e-3)
            nn.init.normal_(self.ln.weight)
            nn.init.normal_(self.ln.bias)

        def forward(self, x):
            h = self.fc(x)
            if functional:
                return F.layer_norm(h, (6,), self.ln.weight, self.ln.bias, 1e-3)
            return self.ln(h)

    eps = 0.2
    model = LN().double()
    (x,), y, r, named, _ = apply(NormRule(eps), model, _x(2, 3, 6), "layer_norm")
    std = torch.sqrt(x.var(-1, unbiased=False) + 1e-3)
    expected = _norm_reference(x, y, r, model.ln.weight.detach(), std, eps)
    torch.testing.assert_close(named["fc"], expected, **TOL)


def test_group_norm_rule_is_layer_norm_per_group() -> None:
    class GN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.gn = nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4)
            nn.init.normal_(self.gn.weight)

        def forward(self, x):
            return self.gn(self.conv(x))

    eps = 0.2
    model = GN().double()
    (x,), y, r, named, _ = apply(NormRule(eps), model, _x(2, 4, 3, 3), "group_norm")
    # per group: the channels of a group and all positions form one normalised vector
    w = model.gn.weight.detach()[:, None, None].expand(4, 3, 3)
    xg, yg, rg = (t.reshape(2, 2, -1) for t in (x, y, r))
    wg = w.reshape(2, -1)
    expected = torch.empty_like(xg)
    for n in range(2):
        for g in range(2):
            std = torch.sqrt(xg[n, g].var(unbiased=False) + model.gn.eps)
            expected[n, g] = _norm_reference(
                xg[n, g][None], yg[n, g][None], rg[n, g][None], wg[g], std[None], eps
            )[0]
    torch.testing.assert_close(named["conv"], expected.reshape(x.shape), **TOL)


def test_rmsnorm_and_stochastic_depth_are_the_identity_in_lrp_attn() -> None:
    import torchvision  # the test extra installs it: missing, the test fails

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.norm = nn.Linear(4, 4, bias=False), nn.RMSNorm(4)
            self.drop = torchvision.ops.StochasticDepth(0.5, "row")
            self.scale = nn.Parameter(torch.full((4,), 0.5))

        def forward(self, x):
            return self.drop(self.scale * self.norm(self.fc(x)))

    model = Block().double()
    analyzer = innspect.create_analyzer("lrp.attn", model, reverse_keep_tensors=True)
    x = _x(3, 4)
    explanation = analyzer.explain(x)
    signals = explanation.relevances
    # stochastic depth (eval), the layer scale and RMSNorm pass relevance on unchanged
    for name in ("stochastic_depth", "mul", "norm"):
        assert name in signals, sorted(signals)
    torch.testing.assert_close(signals["norm"], signals["stochastic_depth"], **TOL)
    torch.testing.assert_close(signals["fc"], signals["stochastic_depth"], **TOL)
    assert "stochastic_depth" in str(explanation.plan)


def test_deep_taylor_refuses_non_rectifier_activations() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)).double()
    with pytest.raises(UnsupportedNodeError, match="GELU|ReLU"):
        innspect.create_analyzer("deep_taylor", model).analyze(_x(2, 4))
