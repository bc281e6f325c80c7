"""EfficientViT (issue 25 item 7), float64: MIT EfficientViT's ``LiteMLA`` linear attention
(ReLU kernels, ``v`` padded with ones, a division by the kernels' sum) and MSRA
EfficientViT's cascaded group attention (softmax).

CP-LRP (Ali et al. 2022) holds the normalised kernel weights
``A_ij = relu(q_i) . relu(k_j) / sum_j' relu(q_i) . relu(k_j')`` constant, as it holds softmax
attention (linear attention: Katharopoulos et al. 2020), so ``v`` gets all the relevance,
``R_v[j, c] = sum_i A_ij v[j, c] R[i, c] / out[i, c]``, and the normaliser path (the ones
column of ``v``, the divisor) gets none. Checked against that formula computed here and for
conservation on bias-free models.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect

timm = pytest.importorskip("timm")
from timm.models.efficientvit_mit import LiteMLA  # noqa: E402

EPS = 1e-12
D, N = 4, 5  # width and tokens of the hand-sized block


class _LinearAttention(nn.Module):
    """``LiteMLA._attn`` written out, bias-free, one head over ``N`` tokens (without timm's
    float32 casts, so that the formula holds to float64 precision)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.head = nn.Linear(D, 3, bias=False)
        self.eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = F.relu(self.q(x)), F.relu(self.k(x))
        v = F.pad(self.v(x), (0, 1), mode="constant", value=1.0)
        kv = k.transpose(-1, -2) @ v
        out = q @ kv
        out = out[..., :-1] / (out[..., -1:] + self.eps)
        return self.head(out.mean(1))


def _block() -> tuple[_LinearAttention, torch.Tensor]:
    torch.manual_seed(0)
    return _LinearAttention().double().eval(), torch.randn(1, N, D, dtype=torch.float64)


def test_cp_lrp_on_linear_attention_is_the_formula_with_kernel_weights_held() -> None:
    model, x = _block()
    target = 1
    explanation = innspect.create_analyzer("lrp.cp", model, epsilon=EPS).explain(x, target=target)
    with torch.no_grad():
        q, k, v = F.relu(model.q(x))[0], F.relu(model.k(x))[0], model.v(x)[0]
        weights = q @ k.T  # relu(q_i) . relu(k_j)
        attention = weights / (weights.sum(1, keepdim=True) + model.eps)
        out = attention @ v
        relevance_out = out * model.head.weight[target] / N  # a mean, then a bias-free linear
        relevance_v = v * (attention.T @ (relevance_out / out))
        expected = x[0] * ((relevance_v / v) @ model.v.weight)  # the epsilon rule of x Wv^T
        score = model(x)[0, target]
    torch.testing.assert_close(explanation.attribution[0], expected, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(explanation.attribution.sum(), score, rtol=1e-6, atol=0)


def test_attn_lrp_splits_the_kernel_products_uniformly_and_holds_the_divisor() -> None:
    """AttnLRP: ``q @ (k^T v)`` and ``k^T @ v`` by the epsilon-uniform matmul rule, the
    division passes ``R`` to the numerator; bias-free, relevance is conserved."""
    model, x = _block()
    explanation = innspect.create_analyzer("lrp.attn", model, epsilon=EPS).explain(x, target=0)
    torch.testing.assert_close(
        explanation.attribution.sum(), model(x)[0, 0].detach(), rtol=1e-6, atol=0
    )
    # q and k get relevance here (they get none under CP-LRP)
    cp = innspect.create_analyzer("lrp.cp", model, epsilon=EPS).explain(x, target=0)
    assert not torch.allclose(explanation.attribution, cp.attribution)


def test_gradient_on_linear_attention_equals_autograd() -> None:
    model, x = _block()
    explanation = innspect.create_analyzer("gradient", model).explain(x, target=2)
    inputs = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(inputs)[0, 2], inputs)
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-10, atol=1e-12)


def _bias_free(model: nn.Module) -> nn.Module:
    """Biases and BatchNorm shifts zeroed; weights of unit-scale activations (timm's init
    leaves activations near 1e-15 deep in the network, where an epsilon of 1e-12 absorbs
    them)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, fan_in**-0.5)
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return model.double().eval()


class _TimmLiteMLA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = LiteMLA(8, 8, dim=4, norm_layer=(None, None))
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x).mean((2, 3)))


def _conserves(model: nn.Module, x: torch.Tensor, rtol: float, epsilon: float = EPS) -> None:
    target = int(model(x).argmax())
    analyzer = innspect.create_analyzer("lrp.cp", model, epsilon=epsilon)
    explanation = analyzer.explain(x, target=target)
    score = model(x)[0, target].detach()
    torch.testing.assert_close(explanation.attribution.sum(), score, rtol=rtol, atol=0)


def test_timm_lite_mla_conserves_under_cp_lrp() -> None:
    """timm's own module: its ``_attn`` casts to float32 (by design, against overflow in
    half precision), which sets the precision of the balance."""
    model = _bias_free(_TimmLiteMLA())
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    _conserves(model, x, 1e-6)
    plan = str(innspect.create_analyzer("lrp.cp", model).explain(x).plan)
    assert "CP: gates held" in plan


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientvit_b0", "efficientvit_m0"])
def test_efficientvit_end_to_end(name: str) -> None:
    model = _bias_free(timm.create_model(name, pretrained=False, num_classes=5))
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    # LiteMLA: where relu(q_i) is near 0 the numerator q_i @ kv is ~1e-8 while the output,
    # divided by (q_i . sum k + 1e-5), is not; an absolute epsilon of 1e-12 at that matmul
    # then absorbs ~1e-5 of the relevance (measured), hence a smaller one for the balance.
    _conserves(model, x, 1e-6, epsilon=1e-20)
    explanation = innspect.create_analyzer("gradient", model).explain(x, target=0)
    inputs = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(inputs)[0, 0], inputs)
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-7, atol=1e-10)
