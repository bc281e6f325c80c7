"""Explaining a text classifier (BERT-style ``...ForSequenceClassification``): each class's
logit against every token of the input, at the token embeddings.

The single-output case of ``explain_generation``: one forward gives every class's logit, so
the classes explained (the predicted one, chosen ones, or a contrast "class A rather than
class B") are rows of one batch, each row's reverse walk starting at its class. Token
ablation replaces one token at a time by a baseline token (Captum's ``FeatureAblation``),
one forward per batch of replaced tokens.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from innspect.errors import InputError, OptionError
from innspect.graph.views import eval_view
from innspect.text.generation import (
    METHODS,
    _analyzer,
    _baseline_token,
    _check_tokenizer,
    _context_length,
    _embedding,
    _hidden,
    _positive_int,
    _prompt_mask,
    _token_ids,
    token_texts,
    walk_options,
)
from innspect.text.result import ClassAttribution


def explain_classification(
    model: nn.Module,
    input_ids: Any,
    *,
    method: str = "lrp.attn",
    target: Any = None,
    contrast: Any = None,
    attention_mask: Any = None,
    skip_tokens: Sequence[int | str] = (),
    tokenizer: Any = None,
    baseline_token: int | None = None,
    batch_size: int = 16,
    **options: Any,
) -> ClassAttribution:
    """Explain a text classifier's class logits at its token embeddings.

    Parameters
    ----------
    model
        A Hugging Face sequence classifier (``...ForSequenceClassification``: BERT, RoBERTa,
        DistilBERT, ...) or any module taking ``input_ids=`` and returning logits
        ``(1, classes)`` (or an object with ``.logits``).
    input_ids
        The text's token ids, shape ``(L,)`` or ``(1, L)``.
    method
        One of ``innspect.text.METHODS``: the gradient, gradient x input, integrated
        gradients (at the embeddings), LRP-epsilon, AttnLRP (Achtibat et al. 2024), CP-LRP
        (Ali et al. 2022) or ``occlusion`` (each token replaced by ``baseline_token``).
    target
        The classes explained, one row each: None (the predicted class), a class index, or
        a sequence of them.
    contrast
        Explain "target rather than this class": one class index, or one per target; the
        score becomes the difference of the two logits.
    attention_mask
        The text's mask, shape of ``input_ids``.
    skip_tokens
        Token ids (or strings, with a tokenizer) hidden from the displays ([CLS], [SEP]);
        the model still reads them and the matrix keeps their columns.
    tokenizer
        A Hugging Face tokenizer: gives ``tokens`` and is checked against the model.
    baseline_token
        The token that replaces a token (occlusion) or whose embedding starts the path
        (integrated gradients); default the model's pad token, else 0.
    batch_size
        Classes per reverse walk, or token replacements per forward (occlusion).
    **options
        The method's options (``epsilon=``, ``steps=``; ``integration=`` is integrated
        gradients' ``method``).

    Returns
    -------
    ClassAttribution
        ``matrix[k, i]``: the contribution of token ``i`` to the score of class
        ``classes[k]`` (minus ``contrasts[k]``'s).
    """
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    batch_size = _positive_int("batch_size", batch_size)
    embedding, embedding_name = _embedding(model)
    vocab = embedding.num_embeddings
    ids = _token_ids("input_ids", input_ids, vocab, embedding.weight.device)
    if tokenizer is not None:
        _check_tokenizer(tokenizer, vocab)
    context = _context_length(model)
    if context is not None and ids.shape[1] > context:
        raise InputError(
            f"the text ({ids.shape[1]} tokens) exceeds the model's context of {context} "
            "tokens: shorten it"
        )
    mask = _prompt_mask(attention_mask, ids)
    baseline = _baseline_token(model, baseline_token, vocab)
    view = eval_view(model)
    with torch.no_grad():
        logits = _class_logits(view, ids, mask)
    count = logits.shape[1]
    classes = (
        logits.argmax(dim=1).cpu() if target is None else _classes("target", target, None, count)
    )
    contrasts = None if contrast is None else _classes("contrast", contrast, len(classes), count)

    def scores_of(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        picked = torch.arange(logits.shape[0], device=logits.device)
        value = logits[picked, classes[rows].to(logits.device)]
        if contrasts is not None:
            value = value - logits[picked, contrasts[rows].to(logits.device)]
        return value

    if method == "occlusion":
        if options:
            raise OptionError(f"occlusion takes no options, got {', '.join(options)}")
        matrix, scores = _occlusion(
            view, ids, mask, logits, baseline, batch_size, scores_of, len(classes)
        )
    else:
        matrix, scores = _walks(
            model, method, embedding, embedding_name, ids, mask, baseline, batch_size, options,
            scores_of, len(classes),
        )  # fmt: skip
    hidden = _hidden(ids[0], skip_tokens, tokenizer)
    tokens = None if tokenizer is None else token_texts(tokenizer, ids[0].tolist())
    return ClassAttribution(
        input_ids=ids.cpu(),
        classes=classes,
        contrasts=contrasts,
        class_names=class_names(model, count),
        matrix=matrix.cpu(),
        scores=scores.cpu(),
        method=method,
        tokens=tokens,
        hidden=hidden.cpu(),
    )


def _walks(
    model: nn.Module,
    method: str,
    embedding: nn.Embedding,
    embedding_name: str,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    baseline: int,
    batch_size: int,
    options: dict[str, Any],
    scores_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reverse-walk methods: the text repeated as a batch, one class per row."""

    def reference() -> torch.Tensor:
        with torch.no_grad():
            return embedding(torch.full_like(ids, baseline)).detach()

    options = walk_options(method, options, reference, "of a classifier takes baseline_token=")
    analyzer = _analyzer(model, method, embedding_name, options, ids.shape[1], "classifier", None)
    rows = min(batch_size, count)
    matrix = torch.zeros(count, ids.shape[1], dtype=embedding.weight.dtype)
    scores = torch.zeros(count, dtype=embedding.weight.dtype)
    inputs = {"input_ids": ids.expand(rows, -1)}
    if mask is not None:
        inputs["attention_mask"] = mask.expand(rows, -1)
    for start in range(0, count, rows):
        chosen = torch.arange(start, min(start + rows, count))
        # The last walk repeats its last class up to the walk's size: one input shape for
        # every walk, so the graph captured for the first serves them all.
        padded = torch.cat([chosen, chosen[-1:].repeat(rows - chosen.numel())])
        explanation = analyzer.explain(
            inputs, target=lambda logits, padded=padded: scores_of(logits, padded)
        )
        values = torch.as_tensor(explanation.attribution).detach()[: chosen.numel()]
        matrix[chosen] = values.to(matrix.dtype).cpu()
        scores[chosen] = explanation.scores.detach()[: chosen.numel()].to(scores.dtype).cpu()
    return matrix, scores


def _occlusion(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    logits: torch.Tensor,
    baseline: int,
    batch_size: int,
    scores_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ablation: ``score_k(text) - score_k(token i replaced by the baseline)``, every
    class's score from the same forward (Captum's ``FeatureAblation``); ``logits``: the
    text's own, already computed."""
    every = torch.arange(count)
    length = ids.shape[1]
    with torch.no_grad():
        scores = scores_of(logits.expand(count, -1), every)
        matrix = torch.zeros(count, length, dtype=scores.dtype, device=scores.device)
        for chunk in torch.arange(length, device=ids.device).split(batch_size):
            ablated = ids.repeat(chunk.numel(), 1)
            ablated[torch.arange(chunk.numel(), device=chunk.device), chunk] = baseline
            chunk_mask = None if mask is None else mask.expand(chunk.numel(), -1)
            changed = _class_logits(model, ablated, chunk_mask)
            # (rows, classes): each explained score with token chunk[r] ablated.
            per_class = torch.stack(
                [scores_of(changed, torch.full((chunk.numel(),), k)) for k in range(count)], 1
            )
            matrix[:, chunk] = (scores[None, :] - per_class).T.to(matrix.dtype)
    return matrix.cpu(), scores


def _class_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    kwargs: dict[str, Any] = {"input_ids": ids}
    if mask is not None:
        kwargs["attention_mask"] = mask
    output = model(**kwargs)
    logits = output.logits if hasattr(output, "logits") else output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(
            f"the model must return class logits of shape (batch, classes), as a Hugging Face "
            f"...ForSequenceClassification does; got {got} (a language model: use "
            "explain_generation)"
        )
    return logits


def _classes(name: str, value: Any, rows: int | None, count: int) -> torch.Tensor:
    """Class indices: one, or a sequence (one per row when ``rows`` is given)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [int(value)] * (rows or 1)
    tensor = torch.as_tensor(value)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.dim() != 1:
        raise InputError(f"{name} must be a class index or a sequence of them, got {value!r}")
    if tensor.numel() == 0:
        raise InputError(f"{name} is empty: give at least one class index")
    if rows is not None and tensor.numel() != rows:
        raise InputError(f"{name} has {tensor.numel()} classes for {rows} explained classes")
    if int(tensor.min()) < 0 or int(tensor.max()) >= count:
        raise InputError(f"{name} holds a class outside the model's {count} classes: {value!r}")
    return tensor.long().cpu()


def class_names(model: nn.Module, count: int) -> list[str]:
    """The classes' names (``config.id2label``), else ``class k``."""
    labels = getattr(getattr(model, "config", None), "id2label", None) or {}
    return [str(labels.get(k, labels.get(str(k), f"class {k}"))) for k in range(count)]
