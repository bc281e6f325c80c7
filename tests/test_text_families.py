"""explain_generation across Hugging Face decoder families (tiny random float64 configurations):
gradient x input equals autograd's at the token embeddings for every step; CP-LRP conserves
each step's logit on bias-free families (and on bias-free copies of Falcon, with its indexed
key and value heads, and BLOOM, with its ALiBi ``baddbmm``). LLaMA and GPT-2 are tested in
tests/test_text_generation.py."""

from __future__ import annotations

import pytest
import torch
import transformers as hf

from innspect.text import explain_generation

V = 80
_SMALL = {"vocab_size": V, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4}
_GQA = {**_SMALL, "intermediate_size": 32, "num_key_value_heads": 2, "max_position_embeddings": 32}
FAMILIES = {
    # Grouped-query attention, rotary positions, RMSNorm, SwiGLU; query/key/value biases.
    "qwen2": (hf.Qwen2Config, hf.Qwen2ForCausalLM, _GQA),
    # Per-head query/key RMSNorm.
    "qwen3": (hf.Qwen3Config, hf.Qwen3ForCausalLM, {**_GQA, "head_dim": 4}),
    # A sliding window shorter than the sequence.
    "mistral": (hf.MistralConfig, hf.MistralForCausalLM, {**_GQA, "sliding_window": 4}),
    # Scaled embeddings, (1 + w) RMSNorm, GeGLU.
    "gemma": (hf.GemmaConfig, hf.GemmaForCausalLM, {**_GQA, "head_dim": 4}),
    # Fused query/key/value and gate/up projections.
    "phi3": (hf.Phi3Config, hf.Phi3ForCausalLM, {**_GQA, "pad_token_id": 0}),
    # Partial rotary, parallel residual, LayerNorm with biases.
    "gpt_neox": (
        hf.GPTNeoXConfig,
        hf.GPTNeoXForCausalLM,
        {**_SMALL, "intermediate_size": 32, "max_position_embeddings": 32},
    ),
    # Learned positions (offset 2), ReLU MLP.
    "opt": (
        hf.OPTConfig,
        hf.OPTForCausalLM,
        {**_SMALL, "ffn_dim": 32, "max_position_embeddings": 32, "word_embed_proj_dim": 16},
    ),
    # Rotary, multi-query attention, parallel attention and MLP.
    "falcon": (hf.FalconConfig, hf.FalconForCausalLM, {**_SMALL, "max_position_embeddings": 32}),
    # ALiBi positions, embedding LayerNorm.
    "bloom": (hf.BloomConfig, hf.BloomForCausalLM, {"vocab_size": V, "hidden_size": 16,
                                                    "n_layer": 2, "n_head": 4}),
}  # fmt: skip
IDS = torch.tensor([[4, 17, 22, 9, 30]])


def build(family: str) -> torch.nn.Module:
    config_class, model_class, settings = FAMILIES[family]
    torch.manual_seed(0)
    return model_class(config_class(**settings)).eval().double()


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradient_x_input_rows_equal_autograd(family: str) -> None:
    model = build(family)
    result = explain_generation(
        model, IDS, max_new_tokens=3, method="input_t_gradient", stop_at_eos=False
    )
    sequence, embedding = result.sequence_ids, model.get_input_embeddings()
    for k in range(3):
        leaf = embedding(sequence).detach().requires_grad_(True)
        logits = model(inputs_embeds=leaf).logits
        logits[0, 4 + k, result.generated_ids[k]].backward()
        expected = (leaf * leaf.grad).sum(-1)[0].detach()
        expected[5 + k :] = 0
        torch.testing.assert_close(result.matrix[k], expected, rtol=1e-7, atol=1e-12)
    assert result.matrix.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mistral", "gemma", "falcon", "bloom"])
def test_cp_lrp_conserves_on_bias_free_families(family: str) -> None:
    """No biases and epsilon 1e-12: each row sums to its logit (Gemma scales its embeddings
    by sqrt(width) after the embedding module: a product with a constant, conservative).
    Falcon and BLOOM have biases (LayerNorm, and BLOOM's projections): set to zero here.
    Falcon picks its shared key and value heads with ``qkv[:, :, [-2]]`` (an ``index``, a
    copy); BLOOM adds ALiBi in ``alibi.baddbmm(q, k)`` (held constant with the softmax)."""
    model = build(family)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    result = explain_generation(
        model, IDS, max_new_tokens=3, method="lrp.cp", epsilon=1e-12, stop_at_eos=False
    )
    torch.testing.assert_close(result.matrix.sum(1), result.scores, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("family", ["falcon", "bloom"])
def test_falcon_and_bloom_get_attn_lrp(family: str) -> None:
    """They were refused ('index', 'baddbmm' had no rule): AttnLRP now runs, finite, and its
    rows differ from CP-LRP's (relevance flows through the softmax too)."""
    model = build(family)
    attn = explain_generation(model, IDS, generated_ids=[5, 6], method="lrp.attn")
    cp = explain_generation(model, IDS, generated_ids=[5, 6], method="lrp.cp")
    assert torch.isfinite(attn.matrix).all() and attn.matrix.abs().sum() > 0
    assert not torch.allclose(attn.matrix, cp.matrix)
