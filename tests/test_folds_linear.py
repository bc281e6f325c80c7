"""A BatchNorm1d after a linear layer written any way folds (issue 25, after item 1).

``nn.Linear``, a ``Linear`` subclass traced through to ``F.linear``, a functional
``F.linear`` on the module's own tensors, followed by an ``nn.BatchNorm1d`` or an
``F.batch_norm`` on buffers: the same function, so every relevance method must give what it
gives on the plain model whose Linear holds the folded weights (the batch norm gone), and
``lrp.z`` is input x gradient there (Bach et al. 2015; Ancona et al. 2018). The fold is the
same map only on 2-D data (BatchNorm1d normalises axis 1, a linear layer acts on the last):
inputs of another rank are refused.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.analyzers.registry import analyzer_class, list_analyzers
from innspect.errors import InputError

_OPTIONS = {
    "lrp.epsilon_gamma_box": {"low": -4.0, "high": 4.0},
    "deep_taylor.bounded": {"low": -4.0, "high": 4.0},
    "lrp.sequential_preset_b_flat_until_idx": {"until_layer_idx": 1},
}
METHODS = [
    name
    for name in list_analyzers()
    if getattr(analyzer_class(name), "family", "") in ("lrp_rule", "lrp_composite", "deep_taylor")
    and name not in {"lrp", "lrp.alpha_beta", "lrp.cp", "lrp.attn"}
]


class _TracedLinear(nn.Linear):
    """A Linear defined outside torch.nn: fx traces through it to ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Functional(nn.Module):
    """``F.linear`` on its own tensors, then an ``nn.BatchNorm1d`` or ``F.batch_norm``."""

    def __init__(self, functional_norm: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(5, 4))
        self.bias = nn.Parameter(torch.empty(5))
        self.norm = nn.BatchNorm1d(5)
        self.functional_norm = functional_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.linear(x, self.weight, self.bias)
        if not self.functional_norm:
            return self.norm(z)
        n = self.norm
        return F.batch_norm(z, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)


def _statistics(norm: nn.BatchNorm1d) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        norm.running_mean.copy_(torch.rand(5, generator=generator) - 0.5)
        norm.running_var.copy_(torch.rand(5, generator=generator) + 0.5)
        norm.weight.copy_(torch.rand(5, generator=generator) + 0.5)
        norm.bias.copy_(torch.rand(5, generator=generator) - 0.5)


def _model(spelling: str) -> nn.Sequential:
    torch.manual_seed(0)
    plain = nn.Linear(4, 5)
    if spelling == "module":
        first, norm = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)), None
        first[0].load_state_dict(plain.state_dict())
        norm = first[1]
    elif spelling == "traced":
        first = nn.Sequential(_TracedLinear(4, 5), nn.BatchNorm1d(5))
        first[0].load_state_dict(plain.state_dict())
        norm = first[1]
    else:
        first = _Functional(functional_norm=spelling == "functional_batch_norm")
        with torch.no_grad():
            first.weight.copy_(plain.weight)
            first.bias.copy_(plain.bias)
        norm = first.norm
    _statistics(norm)
    torch.manual_seed(2)
    return nn.Sequential(first, nn.ReLU(), nn.Linear(5, 3)).double().eval()


def _baked(model: nn.Sequential) -> nn.Sequential:
    """The plain model: one Linear holding ``W * s`` and ``(b - mean) * s + beta``."""
    first = model[0]
    linear = first[0] if isinstance(first, nn.Sequential) else first
    norm = first[1] if isinstance(first, nn.Sequential) else first.norm
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    baked = nn.Linear(4, 5).double()
    with torch.no_grad():
        baked.weight.copy_(linear.weight * scale[:, None])
        baked.bias.copy_((linear.bias - norm.running_mean) * scale + norm.bias)
    torch.manual_seed(2)
    head = nn.Linear(5, 3).double()
    head.load_state_dict(model[2].state_dict())
    return nn.Sequential(baked, nn.ReLU(), head).eval()


def _explain(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    analyzer = innspect.create_analyzer(name, model, **_OPTIONS.get(name, {}))
    return torch.as_tensor(analyzer.analyze(x))


@pytest.mark.parametrize("spelling", ["module", "traced", "functional", "functional_batch_norm"])
def test_a_linear_batch_norm_pair_folds_however_written(spelling: str) -> None:
    model = _model(spelling)
    baked = _baked(model)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model(x), baked(x), rtol=1e-12, atol=1e-12)
    methods = METHODS
    if spelling.startswith("functional"):
        # The Zennit-style composites give a functional F.linear the gradient (Zennit hooks
        # modules only), the plain model's nn.Linear its dense rule: not the same answer.
        methods = [n for n in METHODS if analyzer_class(n).family != "lrp_composite"]
    for name in methods:
        ours, expected = _explain(name, model, x), _explain(name, baked, x)
        torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-10, msg=name)
    gradient = _explain("gradient", model, x)
    torch.testing.assert_close(_explain("lrp.z", model, x), x * gradient, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("spelling", ["module", "functional", "functional_batch_norm"])
def test_a_folded_linear_refuses_inputs_of_another_rank(spelling: str) -> None:
    model = _model(spelling)
    analyzer = innspect.create_analyzer("lrp.epsilon_plus", model)
    analyzer.analyze(torch.randn(2, 4, dtype=torch.float64))
    # (2, 5, 4): the linear layer's output (2, 5, 5) has 5 channels on axis 1 as well, so
    # the model runs on it, but its batch norm then normalises another axis.
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    model[0](x)
    with pytest.raises(InputError, match="exact on 2-D inputs only"):
        analyzer.analyze(x)
