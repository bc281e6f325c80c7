"""innspect.text.explain_generation on tiny random Hugging Face causal language models saved with
``save_pretrained`` (and a tokenizer trained with the ``tokenizers`` package): each row of the
matrix is a separate single-logit explanation of its step, CP-LRP conserves each step's logit,
bad input gets an InputError. Peers (Captum, LXT) are compared in tests/test_text_peers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers as hf  # the test extra installs it: missing, the suite fails loudly
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import innspect
import innspect.text
from innspect.errors import InputError, LoadingError, OptionError
from innspect.text import METHODS, explain_generation, load

SENTENCES = [
    "the cat sat on the mat and the dog sat on the log",
    "a language model writes one token after another",
    "why did the model write what it wrote",
    "every generated token is explained against its context",
]
VOCAB = 80
PROMPT = "the cat sat on"


def tokenizer(vocab: int = VOCAB) -> hf.PreTrainedTokenizerFast:
    """A BPE tokenizer of at most ``vocab`` tokens trained on SENTENCES (spaces kept as ▁)."""
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "<unk>", "<s>", "</s>"], show_progress=False
    )
    raw.train_from_iterator(SENTENCES * 5, trainer)
    return hf.PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def llama(attention: str = "sdpa", **extra: object) -> hf.LlamaForCausalLM:
    """LLaMA architecture: RMSNorm, rotary positions, SwiGLU, grouped-query attention."""
    torch.manual_seed(0)
    settings = {
        "vocab_size": VOCAB,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 24,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 3,
        **extra,
    }
    config = hf.LlamaConfig(**settings, attn_implementation=attention)
    return hf.LlamaForCausalLM(config).eval().double()


def gpt2() -> hf.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = hf.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=24, eos_token_id=3
    )
    return hf.GPT2LMHeadModel(config).eval().double()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved LLaMA-architecture model with its tokenizer (users load such folders)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    llama().save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


def prompt_ids(tok: hf.PreTrainedTokenizerFast) -> torch.Tensor:
    return tok(PROMPT, return_tensors="pt")["input_ids"]


@pytest.fixture(scope="module")
def loaded(folder: Path) -> tuple[torch.nn.Module, hf.PreTrainedTokenizerFast]:
    model, tok = load(folder, dtype=torch.float64)
    return model, tok


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_row_is_the_separate_explanation_of_its_step(loaded: tuple, method: str) -> None:
    """Row k of the batched matrix equals the explanation of step k alone: one logit (the
    last position) of the sequence cut after the token it is predicted from, through
    innspect's own analyzer (or, for occlusion, each token replaced by hand)."""
    model, tok = loaded
    ids = prompt_ids(tok)
    options = {"steps": 8} if method == "integrated_gradients" else {}
    result = explain_generation(
        model,
        ids,
        max_new_tokens=3,
        method=method,
        batch_size=2,  # two walks: one of two steps, one padded
        tokenizer=tok,
        stop_at_eos=False,
        **options,
    )
    length = ids.shape[1]
    sequence = result.sequence_ids
    assert result.matrix.shape == (3, length + 3)
    assert result.tokens is not None and len(result.tokens) == length + 3
    assert torch.equal(sequence[0, :length], ids[0])
    for k in range(3):
        assert (result.matrix[k, length + k :] == 0).all()  # exactly: never read by step k
        assert result.matrix[k, : length + k].abs().sum() > 0
    # The greedy continuation: each generated token is the argmax at its position.
    with torch.no_grad():
        logits = model(sequence).logits[0]
    chosen = logits[length - 1 : -1].argmax(-1)
    assert torch.equal(chosen, result.generated_ids)
    torch.testing.assert_close(
        result.scores, logits[length - 1 + torch.arange(3), result.generated_ids]
    )
    # Each step alone: the sequence cut after the token it is predicted from, its last logit
    # (by hand with autograd, or through a separate analyzer for the LRP rules: a capture
    # each, so the first and the last step).
    for k in range(3) if method not in _RELEVANCE else (0, 2):
        prefix = sequence[:, : length + k]
        token = int(result.generated_ids[k])
        if method == "occlusion":
            expected = _occlusion_by_hand(model, prefix, token, baseline=0)
        elif method in _RELEVANCE:
            analyzer = innspect.create_analyzer(
                method,
                model,
                attribute_to="model.embed_tokens",
                attribute_sum_axis=-1,
                output=lambda out: out.logits[:, -1],
            )
            expected = analyzer.analyze({"input_ids": prefix}, target=token)[0]
        else:
            expected = _gradient_by_hand(model, prefix, token, method, steps=8)
        torch.testing.assert_close(
            result.matrix[k, : length + k], expected.double(), rtol=1e-6, atol=1e-9
        )


_RELEVANCE = ("lrp.epsilon", "lrp.attn", "lrp.cp")


def _gradient_by_hand(
    model: torch.nn.Module, prefix: torch.Tensor, token: int, method: str, steps: int
) -> torch.Tensor:
    """The gradient of the last logit at the token embeddings (summed over the embedding
    axis), times the embedding, or integrated from the pad token's embedding (riemann_left:
    points j / steps, Sundararajan et al. 2017)."""
    embedded = model.get_input_embeddings()(prefix).detach()
    if method != "integrated_gradients":
        leaf = embedded.clone().requires_grad_(True)
        model(inputs_embeds=leaf).logits[0, -1, token].backward()
        factor = embedded if method == "input_t_gradient" else torch.ones_like(embedded)
        return (leaf.grad * factor).sum(-1)[0]
    reference = model.get_input_embeddings()(torch.zeros_like(prefix)).detach()
    total = torch.zeros_like(embedded)
    for j in range(steps):
        leaf = (reference + j / steps * (embedded - reference)).requires_grad_(True)
        model(inputs_embeds=leaf).logits[0, -1, token].backward()
        total += leaf.grad
    return (total / steps * (embedded - reference)).sum(-1)[0]


def _occlusion_by_hand(
    model: torch.nn.Module, prefix: torch.Tensor, token: int, baseline: int
) -> torch.Tensor:
    """Captum's FeatureAblation by hand: the last logit minus the same with token i replaced."""
    with torch.no_grad():
        clean = model(prefix).logits[0, -1, token]
        values = []
        for i in range(prefix.shape[1]):
            ablated = prefix.clone()
            ablated[0, i] = baseline
            values.append(clean - model(ablated).logits[0, -1, token])
    return torch.stack(values)


def test_contrast_and_per_step_targets(loaded: tuple) -> None:
    """A contrast explains logit(a) - logit(b): for a method linear in the explained value
    (token ablation: a difference of scores) it is the difference of the two matrices."""
    model, tok = loaded
    ids = prompt_ids(tok)
    generated = torch.tensor([5, 9, 7])
    common = {"generated_ids": generated, "method": "occlusion"}
    a = explain_generation(model, ids, **common)
    b = explain_generation(model, ids, target=11, **common)
    both = explain_generation(model, ids, contrast=11, **common)
    torch.testing.assert_close(both.matrix, a.matrix - b.matrix, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(both.scores, a.scores - b.scores)
    per_step = explain_generation(model, ids, target=[11, 11, 11], **common)
    torch.testing.assert_close(per_step.matrix, b.matrix)
    assert torch.equal(both.contrasts, torch.tensor([11, 11, 11]))


def test_cp_lrp_conserves_each_steps_logit() -> None:
    """CP-LRP (Ali et al. 2022) with epsilon 1e-12 on a model without biases (LLaMA has
    none): each row sums to its step's logit."""
    model = llama()
    ids = torch.tensor([[2, 14, 30, 7, 21]])
    result = explain_generation(
        model, ids, max_new_tokens=4, method="lrp.cp", epsilon=1e-12, stop_at_eos=False
    )
    torch.testing.assert_close(result.matrix.sum(1), result.scores, rtol=1e-6, atol=1e-9)
    assert result.scores.abs().min() > 1e-3  # the property is not met by zeros


def test_gpt2_rows_and_displays(tmp_path: Path) -> None:
    """GPT-2 (learned positions, Conv1D layers): the matrix of gradient x input equals
    autograd's at the token embeddings (wte), per step; the displays render."""
    model = gpt2()
    ids = torch.tensor([[4, 17, 22, 9]])
    result = explain_generation(
        model, ids, max_new_tokens=3, method="input_t_gradient", stop_at_eos=False
    )
    sequence = result.sequence_ids
    for k in range(3):
        embedded = model.transformer.wte(sequence).detach().requires_grad_(True)
        logits = model(inputs_embeds=embedded).logits
        logits[0, 3 + k, result.generated_ids[k]].backward()
        expected = (embedded * embedded.grad).sum(-1)[0]
        expected[4 + k :] = 0
        torch.testing.assert_close(result.matrix[k], expected, rtol=1e-7, atol=1e-12)
    page = result.to_html()
    assert "<script" in page and '"prompt": 4' in page
    figure = result.plot()
    figure.savefig(tmp_path / "matrix.png")
    assert (tmp_path / "matrix.png").stat().st_size > 1000
    text = result.to_terminal(colour=False)
    assert text.count("\n") == 1 + 3
    assert "\x1b[" in result.to_terminal(colour=True)


def test_skip_tokens_hide_columns_not_inputs(loaded: tuple) -> None:
    model, tok = loaded
    ids = torch.cat([torch.tensor([[2]]), prompt_ids(tok)], dim=1)  # <s> first
    common = {"generated_ids": [5, 9], "method": "occlusion", "tokenizer": tok}
    plain = explain_generation(model, ids, **common)
    skipped = explain_generation(model, ids, skip_tokens=["<s>"], **common)
    torch.testing.assert_close(plain.matrix, skipped.matrix)  # the model still reads it
    assert skipped.hidden.tolist() == [True] + [False] * (ids.shape[1] + 1)
    shown = skipped.to_terminal(colour=False).splitlines()
    assert "<s>" not in shown[0] and "<s>" not in shown[2]
    assert "<s>" in plain.to_terminal(colour=False).splitlines()[0]


def test_bad_input_is_refused_clearly(loaded: tuple) -> None:
    model, tok = loaded
    ids = prompt_ids(tok)
    long = torch.randint(4, VOCAB, (1, 30))
    with pytest.raises(InputError, match="exceed the model's context of 24 tokens"):
        explain_generation(model, long, max_new_tokens=1)
    with pytest.raises(InputError, match="exceed the model's context"):
        explain_generation(model, ids, max_new_tokens=40)
    with pytest.raises(InputError, match="input_ids is empty"):
        explain_generation(model, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    for count in (0, -3, 1.5, True):
        with pytest.raises(InputError, match="max_new_tokens must be a positive integer"):
            explain_generation(model, ids, max_new_tokens=count)
    with pytest.raises(InputError, match="give max_new_tokens"):
        explain_generation(model, ids)
    with pytest.raises(InputError, match="not both"):
        explain_generation(model, ids, max_new_tokens=2, generated_ids=[4])
    with pytest.raises(InputError, match="does not belong to this model"):
        explain_generation(model, ids, max_new_tokens=2, tokenizer=tokenizer(200))
    with pytest.raises(InputError, match="outside the model's vocabulary of 80"):
        explain_generation(model, torch.tensor([[3, 500]]), max_new_tokens=2)
    with pytest.raises(InputError, match="integer token ids"):
        explain_generation(model, torch.rand(1, 4), max_new_tokens=2)
    with pytest.raises(InputError, match="one sequence"):
        explain_generation(model, torch.ones(2, 4, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(OptionError, match="method must be one of"):
        explain_generation(model, ids, max_new_tokens=2, method="softmax")
    with pytest.raises(OptionError, match="log-probability"):
        explain_generation(model, ids, max_new_tokens=2, method="lrp.attn", score="log_prob")
    with pytest.raises(InputError, match="target has 2 token ids for 3"):
        explain_generation(model, ids, generated_ids=[4, 5, 6], target=[1, 2])
    # Encoder-decoder models are explained: tests/test_text_seq2seq.py.


def test_the_users_model_is_not_changed(loaded: tuple) -> None:
    model, tok = loaded
    model.train()
    try:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        explain_generation(model, prompt_ids(tok), max_new_tokens=2, method="occlusion")
        assert model.training and all(m.training for m in model.modules())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    finally:
        model.eval()


def test_load_reads_a_saved_folder(folder: Path, tmp_path: Path) -> None:
    model, tok = load(folder)
    assert isinstance(model, hf.LlamaForCausalLM) and not model.training
    assert isinstance(tok, hf.PreTrainedTokenizerBase) and len(tok) <= VOCAB
    reference = llama()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name].double(), value)
    with pytest.raises(LoadingError, match="not a Hugging Face model folder"):
        load(tmp_path)
    with pytest.raises(LoadingError, match="no such folder"):
        load(tmp_path / "missing")


def test_load_without_transformers_names_the_extra(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'innspect\[hf\]'"):
        load(folder)


def test_an_explainer_reuses_its_capture(loaded: tuple) -> None:
    """GenerationExplainer keeps the analyzer of a sequence length: a second target of the
    same continuation is explained by the same analyzer, with explain_generation's values."""
    model, tok = loaded
    ids = prompt_ids(tok)
    explainer = innspect.text.GenerationExplainer(model)
    common = {"generated_ids": [5, 9], "method": "gradient", "batching": "rows"}
    first = explainer.explain(ids, **common)
    (analyzer,) = explainer._analyzers.values()
    second = explainer.explain(ids, target=11, **common)
    assert list(explainer._analyzers.values()) == [analyzer]
    alone = explain_generation(model, ids, target=11, **common)
    torch.testing.assert_close(second.matrix, alone.matrix, rtol=0, atol=0)
    assert not torch.equal(first.matrix, second.matrix)


@pytest.mark.parametrize("method", ["gradient", "input_t_gradient"])
def test_batched_signals_equal_the_rows_of_the_analyzer(loaded: tuple, method: str) -> None:
    """batching='signals' (one forward, the steps' signals in one batched backward) gives the
    rows innspect's analyzer gives on the sequence repeated per step, steps in two batches."""
    model, tok = loaded
    common = {"generated_ids": [5, 9, 7], "method": method, "batch_size": 2, "contrast": 11}
    rows = explain_generation(model, prompt_ids(tok), batching="rows", **common)
    signals = explain_generation(model, prompt_ids(tok), **common)  # auto: signals
    torch.testing.assert_close(signals.matrix, rows.matrix, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(signals.scores, rows.scores)
    with pytest.raises(OptionError, match="batching='signals' runs gradient"):
        explain_generation(model, prompt_ids(tok), generated_ids=[5], batching="signals")


@pytest.mark.parametrize(
    "method",
    # lrp.epsilon: the padding token's own query has every key masked; the written-out
    # attention gives that row 0, as torch's SDPA does (graph/attention.py, safe_softmax).
    ["input_t_gradient", "lrp.epsilon"],
)
def test_the_attention_mask_reaches_the_model(loaded: tuple, method: str) -> None:
    """A prompt whose first token is padding (mask 0): no step reads it, so its column is
    zero, and the other columns are those of the prompt without it (rotary positions are
    relative, so the shift leaves LLaMA's scores unchanged up to rounding)."""
    model, tok = loaded
    ids = prompt_ids(tok)
    padded = torch.cat([torch.zeros(1, 1, dtype=torch.long), ids], dim=1)
    mask = torch.ones_like(padded)
    mask[0, 0] = 0
    common = {"generated_ids": [5, 9], "method": method}
    masked = explain_generation(model, padded, attention_mask=mask, **common)
    plain = explain_generation(model, ids, **common)
    assert (masked.matrix[:, 0] == 0).all()
    torch.testing.assert_close(masked.matrix[:, 1:], plain.matrix, rtol=1e-5, atol=1e-7)
