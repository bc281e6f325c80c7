"""Hugging Face models captured through torch.export: fused attention written out, GPT-2's
Conv1D as a dense layer, modules named by their path (``attribute_to``)."""

from __future__ import annotations

import pytest
import torch
import transformers as hf  # the test extra installs it: missing, the suite fails loudly
from torch import nn

import innspect
from innspect.errors import InnspectError

# Tiny random configurations shared by the BERT and LLaMA tests.
_TINY = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32}


def _tiny(config_class: type, model_class: type, attention: str, **extra: int) -> nn.Module:
    torch.manual_seed(0)
    config = config_class(**_TINY, attn_implementation=attention, **extra)
    return model_class(config).eval().double()


def _bert(attention: str) -> nn.Module:
    return _tiny(hf.BertConfig, hf.BertForSequenceClassification, attention, num_attention_heads=2)


def _ids() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (2, 6), generator=generator)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0  # padding: the mask must reach the written-out attention
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("method", ["lrp.attn", "lrp.cp", "lrp.epsilon", "gradient"])
def test_fused_attention_gives_the_relevance_of_the_eager_attention(method: str) -> None:
    """SDPA (one aten node under torch.export) is written out as the eager attention's ops:
    the same weights give the same relevance either way, at the token embeddings."""
    results = []
    for attention in ("sdpa", "eager"):
        analyzer = innspect.create_analyzer(
            method, _bert(attention), attribute_to="bert.embeddings.word_embeddings"
        )
        results.append(analyzer.analyze(_ids()))
    sdpa, eager = results
    assert sdpa.shape == (2, 6, 16)
    assert sdpa.abs().sum() > 0
    # Float64; the two paths reach the same operations in a different order.
    torch.testing.assert_close(sdpa, eager, rtol=1e-6, atol=1e-10)


def test_a_module_path_names_its_output_on_the_export_path() -> None:
    model = _bert("sdpa")
    analyzer = innspect.create_analyzer(
        "input_t_gradient",
        model,
        attribute_to="bert.embeddings.word_embeddings",
        attribute_sum_axis=-1,
    )
    per_token = analyzer.analyze(_ids())
    # By hand: the embedding output as a leaf, gradient x input summed per token.
    inputs = _ids()
    embedded = model.bert.embeddings.word_embeddings(inputs["input_ids"]).detach()
    embedded.requires_grad_(True)
    original = model.bert.embeddings.word_embeddings.forward
    model.bert.embeddings.word_embeddings.forward = lambda ids: embedded
    try:
        logits = model(**inputs).logits
    finally:
        model.bert.embeddings.word_embeddings.forward = original
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    torch.testing.assert_close(per_token, (embedded.grad * embedded).sum(-1).detach())


class _Conv1DBlock(nn.Module):
    """GPT-2's Conv1D (``addmm`` with an (in, out) weight) and its tanh GELU written out."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = hf.pytorch_utils.Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs
        self.act = hf.activations.NewGELUActivation()
        self.out = hf.pytorch_utils.Conv1D(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.proj(x)))


class _LinearBlock(nn.Module):
    def __init__(self, conv: _Conv1DBlock) -> None:
        super().__init__()
        self.proj, self.out = nn.Linear(4, 6), nn.Linear(6, 3)
        self.act = hf.activations.NewGELUActivation()
        for linear, conv1d in ((self.proj, conv.proj), (self.out, conv.out)):
            linear.weight.data = conv1d.weight.data.t().clone()
            linear.bias.data = conv1d.bias.data.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.proj(x)))


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.z", "lrp.alpha_2_beta_1", "lrp.attn"])
def test_conv1d_is_a_dense_layer_to_the_rules(method: str) -> None:
    torch.manual_seed(0)
    conv = _Conv1DBlock().double().eval()
    linear = _LinearBlock(conv).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    ours = innspect.create_analyzer(method, conv).analyze(x)
    reference = innspect.create_analyzer(method, linear).analyze(x)
    torch.testing.assert_close(ours, reference, rtol=1e-7, atol=1e-10)


def test_a_power_of_two_signals_is_refused_by_lrp() -> None:
    class Power(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.sigmoid(self.fc(x))
            return y**y

    with pytest.raises(InnspectError, match="'pow_1' \\(pow\\) has no mapping for method"):
        innspect.create_analyzer("lrp.epsilon", Power().eval()).analyze(torch.randn(2, 3))


def _llama(attention: str) -> nn.Module:
    # Grouped-query attention: two query heads per key/value head.
    return _tiny(
        hf.LlamaConfig,
        hf.LlamaForCausalLM,
        attention,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )


def test_grouped_query_attention_is_written_out() -> None:
    from innspect.graph.attention import sdpa

    generator = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 5, 3, generator=generator, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 5, 3, generator=generator, dtype=torch.float64) for _ in "kv")
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(sdpa(q, k, v, enable_gqa=True), expected)

    results = []
    for attention in ("sdpa", "eager"):
        analyzer = innspect.create_analyzer(
            "lrp.attn",
            _llama(attention),
            attribute_to="model.embed_tokens",
            output=lambda out: out.logits[:, -1],
        )
        results.append(analyzer.analyze({"input_ids": _ids()["input_ids"]}))
    assert results[0].abs().sum() > 0
    # LLaMA's eager attention takes its softmax in float32 even in a float64 model: the two
    # agree to float32's precision (a wrong head grouping differs in the first digit).
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)


class _GroupedQueryAttention(nn.Module):
    """Four query heads sharing two key/value heads through SDPA's ``enable_gqa``."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q = self.q(x).view(n, t, 4, 2).transpose(1, 2)
        k, v = self.kv(x).view(n, t, 2, 4).transpose(1, 2).chunk(2, dim=-1)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.out(y.transpose(1, 2).reshape(n, t, 8).mean(1))


def test_sdpa_with_enable_gqa_is_captured_and_explained() -> None:
    torch.manual_seed(0)
    model = _GroupedQueryAttention().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    gradient = innspect.create_analyzer("gradient", model).analyze(x.detach())
    y = model(x)
    y.gather(1, y.argmax(1, keepdim=True)).sum().backward()
    torch.testing.assert_close(gradient, x.grad)
    relevance = innspect.create_analyzer("lrp.attn", model).analyze(x.detach())
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
