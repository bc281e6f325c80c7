"""Layers whose weight is computed in forward (issue 25 items 4 and 6).

A Linear or convolution whose weight or bias is computed from parameters alone
(``weight_norm`` / ``parametrize``, timm's weight-standardised ``StdConv2d``, BEiT's qkv
bias built by ``torch.cat``) is linear in its input: every relevance method must treat it
as the same layer with the computed weight stored. So each model is compared with its twin
whose computed weights are baked into plain modules: every LRP preset, Zennit-style
composite and Deep Taylor gives the same relevance (float64), and ``lrp.z`` is input x
gradient on these piecewise-linear models (Bach et al. 2015; Ancona et al. 2018).
"""

from __future__ import annotations

import copy

import pytest
import timm  # the test extra installs it: missing, the suite fails loudly
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import innspect
from innspect.analyzers.registry import analyzer_class, list_analyzers

# Options a method needs (the others run with their defaults).
_OPTIONS = {
    "lrp.epsilon_gamma_box": {"low": -4.0, "high": 4.0},
    "deep_taylor.bounded": {"low": -4.0, "high": 4.0},
    "lrp.sequential_preset_b_flat_until_idx": {"until_layer_idx": 1},
}
_NEEDS_ARGUMENTS = {"lrp", "lrp.alpha_beta"}  # a rule or alpha/beta to choose
# Methods for attention (they map products of two signals); these models have none.
_ATTENTION = {"lrp.cp", "lrp.attn"}

METHODS = [
    name
    for name in list_analyzers()
    if getattr(analyzer_class(name), "family", "") in ("lrp_rule", "lrp_composite", "deep_taylor")
    and name not in _NEEDS_ARGUMENTS | _ATTENTION
]


class _Net(nn.Module):
    """conv -> ReLU -> dense -> ReLU -> dense, the layers given (any Linear/Conv2d spelling)."""

    def __init__(self, conv: nn.Module, hidden: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.conv, self.hidden, self.head = conv, hidden, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.head(torch.relu(self.hidden(x)))


def _plain() -> _Net:
    torch.manual_seed(0)
    return _Net(nn.Conv2d(2, 4, 3), nn.Linear(4 * 4 * 4, 6), nn.Linear(6, 3)).double().eval()


class _Scaled(nn.Module):
    """A parametrization: the weight times a learnt scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.7, dtype=torch.float64))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.scale


class _ConcatenatedBias(nn.Module):
    """BEiT's qkv projection: ``F.linear`` with a bias ``cat(q_bias, zeros, v_bias)``."""

    def __init__(self, features: int, out: int) -> None:
        super().__init__()
        third = out // 3
        self.qkv = nn.Linear(features, 3 * third, bias=False)
        self.q_bias = nn.Parameter(torch.randn(third))
        self.v_bias = nn.Parameter(torch.randn(third))
        self.register_buffer("k_bias", torch.zeros(third), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        return F.linear(input=x, weight=self.qkv.weight, bias=bias)


def _weight_norm() -> _Net:
    model = copy.deepcopy(_plain())
    for layer in (model.conv, model.hidden):
        parametrizations.weight_norm(layer)
    parametrize.register_parametrization(model.head, "weight", _Scaled())
    return model


def _functional() -> _Net:
    torch.manual_seed(1)
    conv = timm.layers.StdConv2d(2, 4, 3, padding=0, bias=True)
    return _Net(conv, _ConcatenatedBias(4 * 4 * 4, 6), nn.Linear(6, 3)).double().eval()


def _baked(model: _Net) -> _Net:
    """The same function with every computed weight stored in a plain module."""
    plain = _plain()
    with torch.no_grad():
        if isinstance(model.conv, timm.layers.StdConv2d):
            weight = F.batch_norm(
                model.conv.weight.reshape(1, 4, -1), None, None, training=True, eps=model.conv.eps
            ).reshape_as(model.conv.weight)
            plain.conv.weight.copy_(weight)
            plain.conv.bias.copy_(model.conv.bias)
            hidden = model.hidden
            plain.hidden.weight.copy_(hidden.qkv.weight)
            plain.hidden.bias.copy_(torch.cat((hidden.q_bias, hidden.k_bias, hidden.v_bias)))
        else:
            for name in ("conv", "hidden"):
                getattr(plain, name).weight.copy_(getattr(model, name).weight)
                getattr(plain, name).bias.copy_(getattr(model, name).bias)
        plain.head.weight.copy_(model.head.weight)
        plain.head.bias.copy_(model.head.bias)
    return plain


def _explain(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(
        innspect.create_analyzer(name, model, **_OPTIONS.get(name, {})).analyze(x)
    )


@pytest.mark.parametrize("build", [_weight_norm, _functional], ids=["parametrize", "functional"])
def test_every_relevance_method_equals_the_baked_model(build) -> None:  # noqa: ANN001
    model = build()
    baked = _baked(model)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(x), baked(x), rtol=1e-12, atol=1e-12)
    assert len(METHODS) >= 20
    for name in METHODS:
        ours, expected = _explain(name, model, x), _explain(name, baked, x)
        assert torch.isfinite(ours).all(), name
        torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-10, msg=name)
    # lrp.z is input x gradient on a piecewise-linear model.
    gradient = _explain("gradient", model, x)
    torch.testing.assert_close(_explain("lrp.z", model, x), x * gradient, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("build", [_weight_norm, _functional], ids=["parametrize", "functional"])
def test_an_analyzer_follows_a_change_of_the_computed_weights(build) -> None:  # noqa: ANN001
    model = build()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    analyzers = {n: innspect.create_analyzer(n, model) for n in ("lrp.z", "lrp.epsilon_plus")}
    for analyzer in analyzers.values():
        analyzer.analyze(x)
    with torch.no_grad():  # a step on the weights alone (the biases stay), in place
        for name, parameter in model.named_parameters():
            if not name.endswith("bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    baked = _baked(model)
    for name, analyzer in analyzers.items():
        expected = _explain(name, baked, x)
        torch.testing.assert_close(analyzer.analyze(x), expected, rtol=1e-8, atol=1e-10, msg=name)


def test_the_computed_layer_is_named_after_the_module_it_computes() -> None:
    from innspect.graph.graph import ModelGraph

    graph = ModelGraph(_functional())
    names = {info.name: info.operation for info in graph.linear_nodes()}
    assert names == {"conv": "ComputedConv2d", "hidden.qkv": "ComputedLinear", "head": "Linear"}
    # A weight computed from the input is no fixed layer: it stays a function.

    class _InputWeight(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, x.t() @ x)

    graph = ModelGraph(_InputWeight())
    assert not graph.linear_nodes() or all(i.module is None for i in graph.linear_nodes())


def test_a_batch_norm_after_a_standardised_convolution_folds() -> None:
    """timm's StdConv2d then BatchNorm2d: folded into the computed weight, as after a conv."""
    torch.manual_seed(4)
    conv = timm.layers.StdConv2d(2, 4, 3, padding=0, bias=True)
    model = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    model = model.double().eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    baked = copy.deepcopy(model)
    plain = nn.Conv2d(2, 4, 3).double()
    with torch.no_grad():
        weight = conv.weight.reshape(1, 4, -1)
        plain.weight.copy_(
            F.batch_norm(weight, None, None, training=True, eps=conv.eps).reshape_as(conv.weight)
        )
        plain.bias.copy_(conv.bias)
    baked[0] = plain
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model(x), baked(x), rtol=1e-12, atol=1e-12)
    for name in ("lrp.epsilon_plus", "lrp.alpha_2_beta_1", "lrp.epsilon", "deep_taylor"):
        torch.testing.assert_close(
            _explain(name, model, x), _explain(name, baked, x), rtol=1e-8, atol=1e-10, msg=name
        )
    gradient = _explain("gradient", model, x)
    torch.testing.assert_close(_explain("lrp.z", model, x), x * gradient, rtol=1e-8, atol=1e-12)


class _Upsampling(nn.Module):
    """Transposed convolution (optionally a batch norm after it) -> ReLU -> dense."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
        self.norm = nn.BatchNorm2d(3) if norm else nn.Identity()
        self.head = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.up(x))).flatten(1))


@pytest.mark.parametrize("norm", [False, True], ids=["alone", "batch-norm-after"])
def test_a_parametrized_transposed_convolution_is_its_computed_layer(norm: bool) -> None:
    """weight_norm on a ConvTranspose2d (issue 25 item 6): every relevance method gives what
    it gives the same layer with the computed weight stored (the fold too)."""
    baked = _Upsampling(norm).double().eval()
    if norm:
        with torch.no_grad():
            baked.norm.running_mean.uniform_(-0.5, 0.5)
            baked.norm.running_var.uniform_(0.5, 2.0)
    model = copy.deepcopy(baked)
    parametrizations.weight_norm(model.up)
    with torch.no_grad():  # the norm's magnitude moved off its initial value
        model.up.parametrizations.weight.original0.mul_(1.3)
        baked.up.weight.copy_(model.up.weight)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model(x), baked(x), rtol=1e-12, atol=1e-12)
    from innspect.graph.graph import ModelGraph

    operations = {info.operation for info in ModelGraph(model, x).linear_nodes()}
    assert "ComputedConvTranspose2d" in operations or norm, operations
    for name in METHODS:
        ours, expected = _explain(name, model, x), _explain(name, baked, x)
        torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-10, msg=name)
    gradient = _explain("gradient", model, x)
    torch.testing.assert_close(_explain("lrp.z", model, x), x * gradient, rtol=1e-8, atol=1e-10)
