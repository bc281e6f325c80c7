"""Encoder-decoder models (T5, BART): the decoder's steps against encoder and decoder tokens.

The model reads the source (``S`` encoder tokens) and the decoder's input, the decoder start
token followed by the continuation but its last token (``G`` tokens); decoder position ``k``
predicts generated token ``k``. Both embeddings come from one shared table (T5's ``shared``,
BART's ``model.shared``), called twice. Rather than naming both calls in the captured graph,
``EncoderDecoderEmbeds`` takes the two embeddings as one leaf, encoder tokens first then
decoder tokens, ``(batch, S + G, D)``, and runs the model on ``inputs_embeds`` and
``decoder_inputs_embeds``: attributing to that input is attributing to the output of both
embedding calls, in the column layout of the result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from innspect.errors import InputError


class EncoderDecoderEmbeds(nn.Module):
    """``logits = model(inputs_embeds=x[:, :S], decoder_inputs_embeds=x[:, S:])``.

    ``x`` is ``(batch, S + G, D)``: the encoder's token embeddings, then the decoder's (as the
    model's own embedding modules give them, BART's scale included). Returns the decoder's
    logits ``(batch, G, V)``. The model is held, not changed.
    """

    def __init__(
        self, model: nn.Module, source_length: int, attention_mask: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.model = model
        self.source_length = source_length
        self.attention_mask = attention_mask

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {
            "inputs_embeds": embeds[:, : self.source_length],
            "decoder_inputs_embeds": embeds[:, self.source_length :],
            "use_cache": False,
        }
        if self.attention_mask is not None:
            kwargs["attention_mask"] = self.attention_mask.expand(embeds.shape[0], -1)
        return _checked(self.model(**kwargs))


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def start_token(model: nn.Module, vocab: int) -> int:
    """The decoder's first input token (``config.decoder_start_token_id``)."""
    config = getattr(model, "config", None)
    token = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
    if not isinstance(token, int):
        token = getattr(config, "decoder_start_token_id", None)
    if not isinstance(token, int) or not 0 <= token < vocab:
        raise InputError(
            f"{type(model).__name__} has no decoder_start_token_id in its config (got "
            f"{token!r}): set model.config.decoder_start_token_id to the decoder's first token"
        )
    return token


def embed(model: nn.Module, source: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
    """The leaf of ``EncoderDecoderEmbeds``: encoder then decoder token embeddings, as the
    encoder's and the decoder's ``embed_tokens`` give them (detached), ``(R, S + G, D)``."""
    with torch.no_grad():
        encoder = _embed_tokens(model, "get_encoder")(source)
        decoder_embedded = _embed_tokens(model, "get_decoder")(decoder)
    return torch.cat([encoder, decoder_embedded], dim=1).detach()


def logits(
    model: nn.Module, source: torch.Tensor, decoder: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """The decoder's logits ``(R, G, V)`` for source ids ``(R, S)`` and decoder ids ``(R, G)``."""
    kwargs: dict[str, Any] = {"input_ids": source, "decoder_input_ids": decoder, "use_cache": False}
    if mask is not None:
        kwargs["attention_mask"] = mask.expand(source.shape[0], -1)
    return _checked(model(**kwargs))


def greedy(
    model: nn.Module,
    source: torch.Tensor,
    start: int,
    count: int,
    mask: torch.Tensor | None,
    eos: set[int],
) -> torch.Tensor:
    """``count`` decoder tokens chosen greedily from the start token, shape ``(G,)``.

    Each step runs the whole decoder input (no cache), so the explained token is the argmax
    of the forward the explanation records. No forced tokens (BART's ``forced_bos_token_id``)
    or other ``generate`` settings: give ``generated_ids`` for those.
    """
    decoder = source.new_tensor([[start]])
    chosen: list[int] = []
    with torch.no_grad():
        for _ in range(count):
            token = int(logits(model, source, decoder, mask)[0, -1].argmax())
            chosen.append(token)
            decoder = torch.cat([decoder, decoder.new_tensor([[token]])], dim=1)
            if token in eos:
                break
    return source.new_tensor(chosen)


def _embed_tokens(model: nn.Module, getter: str) -> nn.Module:
    part = getattr(model, getter, None)
    part = part() if callable(part) else None
    embedding = getattr(part, "embed_tokens", None)
    if not isinstance(embedding, nn.Module):
        raise InputError(
            f"{type(model).__name__}: no {getter.removeprefix('get_')} with embed_tokens; "
            "explain_generation takes Hugging Face encoder-decoder models such as T5 and BART"
        )
    return embedding


def _checked(output: Any) -> torch.Tensor:
    result = output.logits if hasattr(output, "logits") else output
    if not isinstance(result, torch.Tensor) or result.dim() != 3:
        raise InputError(
            "the model must return decoder logits of shape (batch, tokens, vocabulary), as a "
            "Hugging Face ...ForConditionalGeneration does"
        )
    return result
