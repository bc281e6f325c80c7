"""Dtype casts carry one signal, and activations written out in primitives get the
activation's rule (issue 25 items 2 and 3).

A cast (``type_as(y)``, ``to(y)``, ``.float()``) reads ``y`` for its dtype only: with ``y``
as a second signal input, T5's ``softmax(scores.float()).type_as(scores)`` hid the softmax
from the product with the values, and CP-LRP (Ali et al. 2022) lost half the relevance.
GPT-2's ``gelu_new`` written out as ``0.5 x (1 + tanh(...))`` got the product rule, whose
``+ 1`` absorbed relevance, instead of AttnLRP's rule for GELU (Achtibat et al. 2024).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers as hf  # the test extra installs it: missing, the suite fails loudly
from torch import nn

import innspect
from innspect.evaluation.conservation import conservation_report
from innspect.graph.activation_patterns import quick_gelu
from innspect.graph.graph import ModelGraph

EPS = 1e-12
D = 8


class _Attention(nn.Module):
    """A bias-free attention block; ``cast`` spells the softmax's dtype round trip."""

    def __init__(self, cast: str | None) -> None:
        super().__init__()
        self.cast = cast
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.head = nn.Linear(D, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2)
        if self.cast == "float_type_as":  # T5
            weights = F.softmax(scores.float(), dim=-1).type_as(scores)
        elif self.cast == "double_type_as":
            weights = F.softmax(scores.double(), dim=-1).type_as(scores)
        elif self.cast == "to_tensor":
            weights = F.softmax(scores.to(torch.float64), dim=-1).to(scores)
        else:
            weights = F.softmax(scores, dim=-1)
        return self.head(self.o(weights @ self.v(x)).mean(1))


def _attention_pair(cast: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    plain = _Attention(None).double().eval()
    cast_model = _Attention(cast).double().eval()
    cast_model.load_state_dict(plain.state_dict())
    return plain, cast_model, torch.randn(2, 5, D, dtype=torch.float64)


# .float() computes the softmax in float32: agreement to float32's precision only.
CASTS = [("double_type_as", 1e-10), ("to_tensor", 1e-10), ("float_type_as", 1e-6)]


@pytest.mark.parametrize("cast", [cast for cast, _ in CASTS])
def test_a_cast_has_one_signal_input(cast: str) -> None:
    _, model, x = _attention_pair(cast)
    graph = ModelGraph(model)
    casts = [i for i in graph.nodes if i.operation in ("Tensor.type_as", "Tensor.to")]
    assert casts
    for info in casts:
        assert info.signal_inputs == [info.node.args[0]], info.describe()


@pytest.mark.parametrize(("cast", "tolerance"), CASTS)
def test_cp_lrp_conserves_through_a_cast_softmax(cast: str, tolerance: float) -> None:
    plain, model, x = _attention_pair(cast)
    report = conservation_report(innspect.create_analyzer("lrp.cp", model, epsilon=EPS), x)
    torch.testing.assert_close(report.input_total, report.output_total, rtol=tolerance, atol=0)
    for method in ("lrp.cp", "lrp.attn"):
        cast_relevance = innspect.create_analyzer(method, model, epsilon=EPS).analyze(x)
        plain_relevance = innspect.create_analyzer(method, plain, epsilon=EPS).analyze(x)
        scale = float(plain_relevance.abs().max())
        torch.testing.assert_close(cast_relevance, plain_relevance, rtol=0, atol=tolerance * scale)


@pytest.mark.slow
def test_cp_lrp_conserves_on_a_tiny_t5_encoder() -> None:
    """T5's attention casts its softmax (``.float().type_as``); its linear layers have no
    bias, its norm is an RMS norm: CP-LRP conserves to the embeddings."""
    torch.manual_seed(0)
    config = hf.T5Config(
        vocab_size=50,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="relu",
        dropout_rate=0.0,
        attn_implementation="eager",
    )
    model = hf.T5EncoderModel(config).eval().double()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    analyzer = innspect.create_analyzer(
        "lrp.cp",
        model,
        attribute_to="embedding",
        output=lambda out: out.last_hidden_state[:, -1],
        epsilon=EPS,
    )
    relevance = analyzer.analyze({"input_ids": ids}, target=0)
    with torch.no_grad():
        logit = model(input_ids=ids).last_hidden_state[:, -1, 0]
    torch.testing.assert_close(relevance.sum(dim=(1, 2)), logit, rtol=1e-6, atol=0)


# -- activations written out in primitives (item 3) ---------------------------------------


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _QuickGELUReordered(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x * 1.702).mul(x)


class _SiLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class _Softplus(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(1 + torch.exp(x))


class _GELUTanhByHand(nn.Module):
    """GPT-2's gelu_new written another way round."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return x * (torch.tanh(inner) + 1.0) * 0.5


class _QuickGELUFunction(nn.Module):
    """The canonical spelling the pattern becomes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quick_gelu(x)


def _mlp(activation: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 12, bias=False), activation, nn.Linear(12, 3, bias=False)]
    return nn.Sequential(*layers).double().eval()


PATTERNS = [
    ("gelu_new", hf.activations.NewGELUActivation(), nn.GELU(approximate="tanh"), "gelu"),
    ("gelu_tanh_by_hand", _GELUTanhByHand(), nn.GELU(approximate="tanh"), "gelu"),
    ("quick_gelu", _QuickGELU(), _QuickGELUFunction(), "quick_gelu"),
    ("quick_gelu_reordered", _QuickGELUReordered(), _QuickGELUFunction(), "quick_gelu"),
    ("hf_quick_gelu", hf.activations.QuickGELUActivation(), _QuickGELUFunction(), "quick_gelu"),
    ("silu", _SiLU(), nn.SiLU(), "silu"),
    ("softplus", _Softplus(), nn.Softplus(threshold=1e9), "softplus"),
]


@pytest.mark.parametrize(("name", "written", "activation", "operation"), PATTERNS)
def test_written_out_activation_gets_the_activation_rule(
    name: str, written: nn.Module, activation: nn.Module, operation: str
) -> None:
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model, reference = _mlp(written), _mlp(activation)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    graph = ModelGraph(model)
    operations = [i.operation for i in graph.nodes]
    assert operations == ["placeholder", "Linear", operation, "Linear"], operations
    torch.testing.assert_close(graph.module(x), model(x), rtol=1e-12, atol=1e-12)
    relevance = innspect.create_analyzer("lrp.attn", model, epsilon=EPS).analyze(x)
    expected = innspect.create_analyzer("lrp.attn", reference, epsilon=EPS).analyze(x)
    torch.testing.assert_close(relevance, expected, rtol=1e-10, atol=1e-10)
    # AttnLRP's identity rule on the activation, bias-free linear layers: conserved.
    logit = model(x).gather(1, model(x).argmax(1, keepdim=True)).squeeze(1)
    torch.testing.assert_close(relevance.sum(1), logit.detach(), rtol=1e-8, atol=0)


class _SigmoidOfOther(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x.flip(-1))  # x * sigmoid(y), y != x


class _OtherSlope(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.5 * x)


class _OtherConstant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.8 * (x + 0.044715 * x**3)))


class _LogTwoPlusExp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(2 + torch.exp(x))


class _SharedIntermediate(nn.Module):
    """The sigmoid is read elsewhere too: the product is no activation of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(x)
        return x * gate + gate


@pytest.mark.parametrize(
    "written",
    [_SigmoidOfOther(), _OtherSlope(), _OtherConstant(), _LogTwoPlusExp(), _SharedIntermediate()],
)
def test_look_alikes_are_not_replaced(written: nn.Module) -> None:
    x = torch.randn(4, 6, dtype=torch.float64)
    model = _mlp(written)
    graph = ModelGraph(model)
    operations = {i.operation for i in graph.nodes}
    assert not operations & {"gelu", "silu", "quick_gelu", "softplus"}, operations
    torch.testing.assert_close(graph.module(x), model(x), rtol=1e-12, atol=1e-12)


# -- the layout of a written-out fused attention (item 5) ----------------------------------


def _distilbert(attention: str) -> nn.Module:
    torch.manual_seed(0)
    config = hf.DistilBertConfig(
        vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, attn_implementation=attention
    )
    return hf.DistilBertForSequenceClassification(config).eval().double()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradient", "lrp.attn"])
def test_distilbert_sdpa_views_the_written_out_attention_as_torch_lays_it_out(method: str) -> None:
    """torch.export drops DistilBERT's ``.transpose(1, 2).contiguous()`` after SDPA (a no-op
    on the fused kernel's layout); the written-out attention must keep that layout or the
    ``view`` after it fails (it was reported as an input error)."""
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    results = [
        innspect.create_analyzer(
            method, _distilbert(attention), attribute_to="distilbert.embeddings.word_embeddings"
        ).analyze({"input_ids": ids})
        for attention in ("sdpa", "eager")
    ]
    assert results[0].abs().sum() > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-10)
