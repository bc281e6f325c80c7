"""innspect.text.explain_generation on tiny random encoder-decoder models (T5, BART; float64):
row k explains decoder step k against the encoder's tokens and the decoder's tokens before it.
Each row equals the separate explanation of its step (autograd by hand for the gradient
methods, an analyzer on the cut decoder for the LRP rules, Captum's token ablation by hand),
CP-LRP conserves each step's logit on bias-free models, the user's model is not changed."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from torch import nn

import innspect
from innspect.errors import InputError
from innspect.text import METHODS, GenerationExplainer, explain_generation
from tests.test_text_generation import VOCAB, tokenizer

SOURCE = torch.tensor([[5, 17, 9, 30, 12]])
STEPS = 3
_RELEVANCE = ("lrp.epsilon", "lrp.attn", "lrp.cp")


def t5(**extra: object) -> hf.T5ForConditionalGeneration:
    """T5: no biases, RMSNorm, relative position bias added to the attention scores."""
    torch.manual_seed(0)
    config = hf.T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=3,
        **extra,
    )
    return hf.T5ForConditionalGeneration(config).eval().double()


def bart(**extra: object) -> hf.BartForConditionalGeneration:
    """BART: learned positions, LayerNorm, biases, scaled embeddings (scale_embedding)."""
    torch.manual_seed(0)
    config = hf.BartConfig(
        vocab_size=VOCAB,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=16,
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=3,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
        **extra,
    )
    return hf.BartForConditionalGeneration(config).eval().double()


MODELS = {"t5": t5, "bart": bart}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    return MODELS[request.param]()


def _leaves(model: nn.Module, decoder_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's and the decoder's token embeddings, as the model's own modules give them
    (BART's ``embed_scale`` included), as separate leaves."""
    with torch.no_grad():
        encoder = model.get_encoder().embed_tokens(SOURCE)
        decoder = model.get_decoder().embed_tokens(decoder_ids)
    return encoder, decoder


def _logit(model: nn.Module, encoder: torch.Tensor, decoder: torch.Tensor, token: int):
    """The logit of ``token`` at the decoder's last position."""
    out = model(inputs_embeds=encoder, decoder_inputs_embeds=decoder, use_cache=False)
    return out.logits[0, -1, token]


def _by_hand(model: nn.Module, decoder_ids: torch.Tensor, token: int, method: str):
    """Step alone by autograd: the gradient of the last decoder logit at both embeddings
    (two leaves), times the embedding, or integrated from the pad token's embeddings
    (riemann_left, 8 points j / 8: Sundararajan et al. 2017); encoder columns first."""
    encoder, decoder = _leaves(model, decoder_ids)
    if method == "integrated_gradients":
        pad = model.config.pad_token_id
        with torch.no_grad():  # every token, the decoder's start too, starts at the pad
            base_e = model.get_encoder().embed_tokens(torch.full_like(SOURCE, pad))
            base_d = model.get_decoder().embed_tokens(torch.full_like(decoder_ids, pad))
        total_e, total_d = torch.zeros_like(encoder), torch.zeros_like(decoder)
        for j in range(8):
            e = (base_e + j / 8 * (encoder - base_e)).requires_grad_(True)
            d = (base_d + j / 8 * (decoder - base_d)).requires_grad_(True)
            grad_e, grad_d = torch.autograd.grad(_logit(model, e, d, token), (e, d))
            total_e += grad_e
            total_d += grad_d
        values = (total_e / 8 * (encoder - base_e), total_d / 8 * (decoder - base_d))
    else:
        e, d = encoder.clone().requires_grad_(True), decoder.clone().requires_grad_(True)
        grad_e, grad_d = torch.autograd.grad(_logit(model, e, d, token), (e, d))
        if method == "input_t_gradient":
            values = (grad_e * encoder, grad_d * decoder)
        else:
            values = (grad_e, grad_d)
    return torch.cat([values[0].sum(-1)[0], values[1].sum(-1)[0]])


def _occlusion_by_hand(model: nn.Module, decoder_ids: torch.Tensor, token: int, baseline: int):
    """Captum's FeatureAblation by hand: the logit minus the same with one token replaced
    (encoder tokens, then the decoder's)."""
    ids = torch.cat([SOURCE, decoder_ids], dim=1)
    source = SOURCE.shape[1]

    def score(x: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=x[:, :source], decoder_input_ids=x[:, source:], use_cache=False)
        return out.logits[0, -1, token]

    values = []
    with torch.no_grad():
        for i in range(ids.shape[1]):
            ablated = ids.clone()
            ablated[0, i] = baseline
            values.append(score(ids) - score(ablated))
    return torch.stack(values)


class _CutDecoder(nn.Module):
    """The test's own wrapper: encoder and decoder embeddings as two inputs of one leaf
    ``(1, S + k + 1, D)``, the decoder's last logits out (one step alone)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = SOURCE.shape[1]
        out = self.model(
            inputs_embeds=x[:, :source], decoder_inputs_embeds=x[:, source:], use_cache=False
        )
        return out.logits[:, -1]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_row_is_the_separate_explanation_of_its_step(model: nn.Module, method: str) -> None:
    options = {"steps": 8} if method == "integrated_gradients" else {}
    result = explain_generation(
        model,
        SOURCE,
        max_new_tokens=STEPS,
        method=method,
        batch_size=2,  # two walks: one of two steps, one padded
        stop_at_eos=False,
        **options,
    )
    source, start = SOURCE.shape[1], model.config.decoder_start_token_id
    # Layout: encoder tokens, the decoder's start token, the continuation.
    assert result.source_length == source and result.prompt_length == source + 1
    assert result.matrix.shape == (STEPS, source + 1 + STEPS)
    sequence = result.sequence_ids[0]
    assert torch.equal(sequence[:source], SOURCE[0]) and int(sequence[source]) == start
    decoder_ids = sequence[None, source:-1]  # start + continuation but its last token
    # Greedy from the start token: each token is the argmax of its decoder position.
    with torch.no_grad():
        logits = model(input_ids=SOURCE, decoder_input_ids=decoder_ids).logits[0]
    assert torch.equal(logits.argmax(-1), result.generated_ids)
    torch.testing.assert_close(result.scores, logits[torch.arange(STEPS), result.generated_ids])
    for k in range(STEPS):
        row = result.matrix[k]
        assert (row[source + 1 + k :] == 0).all()  # exactly: never read by step k
        decoder = torch.arange(source, source + 1 + k)
        # a token equal to the baseline (T5's start token is its pad token) has nothing:
        # exactly 0, or rounding noise that a share of 0 must not be asked to show
        if method in ("integrated_gradients", "occlusion"):
            decoder = decoder[sequence[decoder] != model.config.pad_token_id]
        assert row[:source].abs().sum() > 0 and (
            decoder.numel() == 0 or row[decoder].abs().sum() > 0
        )
    # Each step alone, the decoder cut after its position (the LRP rules need a capture per
    # cut: the middle step, whose cut drops a decoder token the batch reads).
    for k in range(STEPS) if method not in _RELEVANCE else (1,):
        cut = decoder_ids[:, : k + 1]
        token = int(result.generated_ids[k])
        if method == "occlusion":
            expected = _occlusion_by_hand(model, cut, token, baseline=model.config.pad_token_id)
        elif method in _RELEVANCE:
            leaf = torch.cat(_leaves(model, cut), dim=1)
            analyzer = innspect.create_analyzer(method, _CutDecoder(model), attribute_sum_axis=-1)
            expected = analyzer.analyze(leaf, target=token)[0]
        else:
            expected = _by_hand(model, cut, token, method)
        assert result.matrix.dtype == expected.dtype == torch.float64
        torch.testing.assert_close(
            result.matrix[k, : source + 1 + k], expected, rtol=1e-6, atol=1e-9
        )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradient", "input_t_gradient"])
def test_batched_signals_equal_the_rows_of_the_analyzer(model: nn.Module, method: str) -> None:
    common = {"generated_ids": [7, 11, 4], "method": method, "batch_size": 2}
    signals = explain_generation(model, SOURCE, batching="signals", **common)
    rows = explain_generation(model, SOURCE, batching="rows", **common)
    torch.testing.assert_close(signals.matrix, rows.matrix, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(signals.scores, rows.scores, rtol=1e-12, atol=1e-12)


def _without_biases(model: nn.Module) -> nn.Module:
    """Every bias, BART's learned positions and its logits bias set to zero (their relevance
    would stay in them, not reach the tokens)."""
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("bias") or "embed_positions" in name:
                tensor.zero_()
        for name, tensor in model.named_buffers():
            if name.endswith("final_logits_bias"):
                tensor.zero_()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_cp_lrp_conserves_each_steps_logit_without_biases(name: str) -> None:
    """CP-LRP (Ali et al. 2022) with epsilon 1e-12: each row sums to its logit (encoder and
    decoder columns together). T5 has no biases; its relative position bias is added to the
    attention scores, which CP-LRP holds constant (no relevance flows through the softmax)."""
    model = _without_biases(MODELS[name]())
    result = explain_generation(
        model, SOURCE, max_new_tokens=STEPS, method="lrp.cp", epsilon=1e-12, stop_at_eos=False
    )
    assert result.scores.abs().min() > 1e-3  # a logit far from zero: the check means something
    torch.testing.assert_close(result.matrix.sum(1), result.scores, rtol=1e-6, atol=1e-6)


def test_the_users_model_is_not_changed() -> None:
    model = bart()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    explainer = GenerationExplainer(model)
    result = explainer.explain(SOURCE, generated_ids=[7, 11], method="lrp.attn")
    again = explainer.explain(SOURCE, generated_ids=[7, 11], method="lrp.attn", target=5)
    assert len(explainer._analyzers) == 1  # the capture is reused for another target
    assert torch.equal(again.targets, torch.tensor([5, 5]))
    assert not torch.equal(again.matrix, result.matrix)
    explain_generation(model, SOURCE, generated_ids=[7, 11], method="occlusion")
    explain_generation(model, SOURCE, max_new_tokens=2, method="gradient")
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.to_dict() == config
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert result.matrix.shape == (2, SOURCE.shape[1] + 3)


def test_a_masked_source_token_has_no_share() -> None:
    """attention_mask masks the source: the masked token gets nothing, the others equal
    autograd by hand with the same mask (the signals' path) and token ablation by hand."""
    model = t5()
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    result = explain_generation(
        model, SOURCE, generated_ids=[7, 11], method="gradient", attention_mask=mask
    )
    ablated = explain_generation(
        model, SOURCE, generated_ids=[7, 11], method="occlusion", attention_mask=mask
    )
    encoder, decoder = _leaves(model, torch.tensor([[0, 7]]))
    e, d = encoder.requires_grad_(True), decoder.requires_grad_(True)
    out = model(inputs_embeds=e, decoder_inputs_embeds=d, attention_mask=mask, use_cache=False)
    grad_e, grad_d = torch.autograd.grad(out.logits[0, 1, 11], (e, d))
    expected = torch.cat([grad_e.sum(-1)[0], grad_d.sum(-1)[0]])
    torch.testing.assert_close(result.matrix[1, :7], expected, rtol=1e-6, atol=1e-12)
    assert result.matrix[:, 4].abs().max() < 1e-12 and ablated.matrix[:, 4].abs().max() < 1e-12
    assert result.matrix[:, :4].abs().min() > 0 and ablated.matrix[:, :4].abs().sum() > 0


def test_displays_show_source_and_decoder() -> None:
    tok = tokenizer()
    model = t5()
    ids = tok("the cat sat on", return_tensors="pt")["input_ids"]
    result = explain_generation(
        model, ids, generated_ids=[7, 11], method="occlusion", tokenizer=tok, skip_tokens=[0]
    )
    source = ids.shape[1]
    assert result.tokens is not None and len(result.tokens) == source + 3
    assert bool(result.hidden[source])  # the start token (pad, id 0) hidden from the displays
    assert result.to_dict()["source_length"] == source
    text = result.to_terminal(colour=False)
    assert "the cat sat on" in text.splitlines()[0].replace("▁", " ") and " => " in text
    page = result.to_html()
    assert "source-end" in page and f'"source": {source}' in page
    figure = result.plot()
    assert len(figure.axes[0].lines) == 2  # the end of the source and of the "prompt"


def test_bad_input_is_refused_clearly() -> None:
    model = bart()
    with pytest.raises(InputError, match="source .* exceed the model's context of 16"):
        explain_generation(model, torch.arange(4, 24)[None], max_new_tokens=2)
    with pytest.raises(InputError, match="decoder tokens exceed the model's context of 16"):
        explain_generation(model, SOURCE, max_new_tokens=17)
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        explain_generation(model, SOURCE, generated_ids=[VOCAB + 3])
    no_start = t5()
    no_start.config.decoder_start_token_id = None
    no_start.generation_config.decoder_start_token_id = None
    with pytest.raises(InputError, match="decoder_start_token_id"):
        explain_generation(no_start, SOURCE, max_new_tokens=2)
