"""innspect.text.explain_classification on a tiny random BERT-style classifier saved with
``save_pretrained``: each class's row equals a separate single-logit explanation (autograd by
hand, innspect's own analyzer for the LRP rules, Captum 0.9's LayerIntegratedGradients and
FeatureAblation), CP-LRP conserves each class's logit on a bias-free model, ``text.load``
reads the folder as a classifier, ``innspect text`` explains it, bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as hf  # the test extra installs it: missing, the suite fails loudly

import innspect
from innspect.cli.main import main
from innspect.errors import InputError
from innspect.text import METHODS, explain_classification, explain_generation, load
from tests.test_text_generation import PROMPT, VOCAB, llama, tokenizer

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
EMBEDDING = "bert.embeddings.word_embeddings"


def bert(**extra: object) -> hf.BertForSequenceClassification:
    torch.manual_seed(0)
    config = hf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=24,
        num_labels=3,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
        pad_token_id=0,
        **extra,
    )
    return hf.BertForSequenceClassification(config).eval().double()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-bert-classifier")
    bert().save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(folder: Path) -> tuple:
    model, tok = load(folder, dtype=torch.float64)
    return model, tok, tok(PROMPT, return_tensors="pt")["input_ids"]


def test_load_reads_a_classifier_folder(loaded: tuple) -> None:
    model, tok, _ = loaded
    assert isinstance(model, hf.BertForSequenceClassification) and not model.training
    assert tok is not None and len(tok) <= VOCAB


def _by_hand(model: torch.nn.Module, ids: torch.Tensor, k: int, method: str) -> torch.Tensor:
    """The gradient of class k's logit at the word embeddings (summed over the embedding
    axis), times the embedding for gradient x input; or token k's ablation by hand."""
    if method == "occlusion":
        with torch.no_grad():
            clean = model(ids).logits[0, k]
            rows = []
            for i in range(ids.shape[1]):
                ablated = ids.clone()
                ablated[0, i] = 0
                rows.append(clean - model(ablated).logits[0, k])
        return torch.stack(rows)
    embedded = model.get_input_embeddings()(ids).detach()
    leaf = embedded.clone().requires_grad_(True)
    model(inputs_embeds=leaf).logits[0, k].backward()
    return (leaf.grad * (embedded if method == "input_t_gradient" else 1)).sum(-1)[0]


@pytest.mark.parametrize("method", METHODS)
def test_each_row_is_the_separate_explanation_of_its_class(loaded: tuple, method: str) -> None:
    """Rows of the batched walk (three classes, two per walk) equal each class explained
    alone: by hand (gradients, ablation) or through innspect's analyzer on one row."""
    model, tok, ids = loaded
    options = {"steps": 8} if method == "integrated_gradients" else {}
    result = explain_classification(
        model, ids, method=method, target=[0, 1, 2], batch_size=2, tokenizer=tok, **options
    )
    assert result.matrix.shape == (3, ids.shape[1]) and result.tokens is not None
    with torch.no_grad():
        logits = model(ids).logits[0]
    torch.testing.assert_close(result.scores, logits)
    for k in range(3):
        if method in ("gradient", "input_t_gradient", "occlusion"):
            expected = _by_hand(model, ids, k, method)
        else:
            if method == "integrated_gradients":
                embedding = model.get_input_embeddings()
                options["reference_inputs"] = embedding(torch.zeros_like(ids)).detach()
            analyzer = innspect.create_analyzer(
                method, model, attribute_to=EMBEDDING, attribute_sum_axis=-1, **options
            )
            expected = analyzer.analyze({"input_ids": ids}, target=k)[0]
        torch.testing.assert_close(result.matrix[k], expected.double(), rtol=1e-6, atol=1e-9)
        assert result.matrix[k].abs().sum() > 0


def test_predicted_class_contrast_and_names(loaded: tuple) -> None:
    """By default the predicted class is explained; a contrast explains the difference of
    two logits, which for a method linear in the explained value (gradient) is the
    difference of the two rows."""
    model, tok, ids = loaded
    with torch.no_grad():
        predicted = int(model(ids).logits.argmax())
    alone = explain_classification(model, ids, method="gradient")
    assert alone.classes.tolist() == [predicted]
    assert alone.row_names() == [LABELS[predicted]]
    both = explain_classification(model, ids, method="gradient", target=[0, 2])
    contrast = explain_classification(model, ids, method="gradient", target=0, contrast=2)
    torch.testing.assert_close(contrast.matrix[0], both.matrix[0] - both.matrix[1])
    assert contrast.row_names() == ["negative - positive"]
    page = contrast.to_html()
    assert "negative - positive" in page and "<span style=" in page
    text = contrast.to_terminal(colour=False)
    assert text.splitlines()[0] == "".join(alone.labels())


def test_integrated_gradients_and_ablation_equal_captum(loaded: tuple) -> None:
    """Captum 0.9 at the word embeddings: LayerIntegratedGradients (50 Gauss-Legendre points
    from the pad token's embedding) and FeatureAblation over token ids (pad token baseline),
    summed over the embedding axis."""
    from captum.attr import FeatureAblation, LayerIntegratedGradients

    model, _, ids = loaded

    def logits(input_ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids).logits

    for k in range(3):
        ours = explain_classification(
            model, ids, method="integrated_gradients", target=k, steps=50,
            integration="gausslegendre",
        )  # fmt: skip
        layer = LayerIntegratedGradients(logits, model.get_input_embeddings())
        theirs = layer.attribute(ids, torch.zeros_like(ids), target=k, n_steps=50).sum(-1)
        torch.testing.assert_close(ours.matrix[0], theirs[0].double(), rtol=1e-7, atol=1e-10)
        ours = explain_classification(model, ids, method="occlusion", target=k)
        theirs = FeatureAblation(logits).attribute(ids, baselines=0, target=k)
        torch.testing.assert_close(ours.matrix[0], theirs[0].double(), rtol=1e-9, atol=1e-12)


def test_cp_lrp_conserves_each_classs_logit() -> None:
    """Bias-free model, epsilon 1e-12: each CP-LRP row sums to its class's logit (Ali et al.
    2022); every layer's bias removed, and the position and token-type embeddings (added to
    the word embeddings: they would take their share), so nothing else absorbs relevance."""
    model = bert()
    embeddings = model.bert.embeddings
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        embeddings.position_embeddings.weight.zero_()
        embeddings.token_type_embeddings.weight.zero_()
    ids = tokenizer()(PROMPT, return_tensors="pt")["input_ids"]
    result = explain_classification(model, ids, method="lrp.cp", target=[0, 1, 2], epsilon=1e-12)
    torch.testing.assert_close(result.matrix.sum(1), result.scores, rtol=1e-6, atol=1e-8)


def test_attention_mask_reaches_the_model(loaded: tuple) -> None:
    """A masked-out token changes nothing in the explained logit: its column is zero for the
    gradient, and the scores are those of the masked call."""
    model, _, ids = loaded
    mask = torch.ones_like(ids)
    mask[0, 1] = 0
    result = explain_classification(
        model, ids, method="gradient", target=[0, 1, 2], attention_mask=mask
    )
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[0]
    torch.testing.assert_close(result.scores, logits)
    assert (result.matrix[:, 1] == 0).all() and result.matrix[:, 0].abs().sum() > 0


def test_bad_input_is_refused_clearly(loaded: tuple) -> None:
    model, _, ids = loaded
    with pytest.raises(InputError, match="outside the model's 3 classes"):
        explain_classification(model, ids, method="gradient", target=3)
    with pytest.raises(InputError, match="2 classes for 1 explained"):
        explain_classification(model, ids, method="gradient", target=0, contrast=[1, 2])
    with pytest.raises(InputError, match="exceeds the model's context of 24"):
        explain_classification(model, torch.ones(1, 30, dtype=torch.long), method="gradient")
    with pytest.raises(InputError, match="empty"):
        explain_classification(model, torch.ones(1, 0, dtype=torch.long), method="gradient")
    with pytest.raises(InputError, match="class logits of shape"):
        explain_classification(llama(), ids, method="gradient")
    # A classifier has no generation to explain: explain_generation says what it needs.
    with pytest.raises(InputError, match="is a text classifier: it writes no text"):
        explain_generation(model, ids, max_new_tokens=2, method="gradient")


def test_the_users_model_is_not_changed(loaded: tuple) -> None:
    model, _, ids = loaded
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    explain_classification(model, ids, method="lrp.attn", target=[0, 1])
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_text_command_explains_a_classifier_folder(folder: Path, tmp_path: Path, capsys) -> None:
    """``innspect text`` on a classifier's folder: the predicted class explained with each
    method, results.json equal to the library call, the figure and the page written."""
    status = main(
        ["text", "--model", str(folder), "--prompt", PROMPT, "--method", "lrp.attn",
         "occlusion", "--contrast", "neutral", "--out", str(tmp_path), "--report"]
    )  # fmt: skip
    assert status == 0
    results = json.loads((tmp_path / "results.json").read_text())
    model, tok = load(folder)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    expected = explain_classification(model, ids, method="lrp.attn", contrast=1)
    attn = results["methods"]["lrp.attn"]
    assert results["predicted_class"] == LABELS[int(expected.classes[0])]
    assert attn["contrasts"] == [1]
    torch.testing.assert_close(
        torch.tensor(attn["matrix"], dtype=torch.float64), expected.matrix.double()
    )
    for name in ("matrix_lrp.attn.png", "matrix_occlusion.png", "index.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert "== occlusion" in capsys.readouterr().out
    assert main(["text", "--model", str(folder), "--prompt", PROMPT, "--contrast", "joy",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
