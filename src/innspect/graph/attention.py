"""Attention written out in plain operations, so the relevance rules reach its parts.

``nn.MultiheadAttention`` is one leaf module under torch.fx and
``F.scaled_dot_product_attention`` one fused function; neither has a relevance rule of its
own. The capture tracer (``graph/capture.py``) replaces them by the functions below while
tracing: projections (``F.linear`` on the module's own parameters, or its ``out_proj``
module), ``Q K^T`` and ``P V`` as matmuls, the scaling, masks as ``masked_fill`` / an added
constant, and a softmax, each a node with its own rule (``rules/modern.py``). Dropout is
left out: the graph always runs in eval mode.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from innspect.errors import NotAnalyzableModelError


@torch.fx.wrap
def attention_mask(scores: torch.Tensor, mask: torch.Tensor, masked_when: bool) -> torch.Tensor:
    """Masked attention scores: a boolean mask sets ``-inf`` where ``mask == masked_when``
    (True means *attend* in ``scaled_dot_product_attention``, *ignore* in
    ``nn.MultiheadAttention``); a float mask is added. One node once traced (the mask's
    dtype is only known when it runs); its gradient passes the signal where kept."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask if masked_when else ~mask, float("-inf"))
    return scores + mask


def _apply_mask(scores: Any, mask: Any, masked_when: bool) -> Any:
    if mask is None:
        return scores
    return attention_mask(scores, mask, masked_when)


def sdpa(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Any:
    """``F.scaled_dot_product_attention`` as matmul, scaling, mask and softmax (eval mode:
    ``dropout_p`` is ignored). Boolean ``attn_mask``: True means *attend*, as in torch."""
    if enable_gqa:
        raise NotAnalyzableModelError(
            "scaled_dot_product_attention with enable_gqa=True is not decomposed; repeat the "
            "key and value heads explicitly"
        )
    scores = torch.matmul(query, key.transpose(-2, -1))
    scores = scores * (scale if scale is not None else query.shape[-1] ** -0.5)
    if is_causal:
        if attn_mask is not None:
            raise NotAnalyzableModelError(
                "scaled_dot_product_attention: give attn_mask or is_causal=True, not both"
            )
        scores = causal_mask(scores)
    scores = _apply_mask(scores, attn_mask, masked_when=False)
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def causal_mask(scores: Any) -> Any:
    """``scores`` with the positions above the diagonal set to ``-inf`` (a ``masked_fill``
    node once traced: the signal passes where the mask keeps)."""
    return scores.masked_fill(_upper(scores), float("-inf"))


@torch.fx.wrap
def _upper(scores: torch.Tensor) -> torch.Tensor:
    # Depends only on the shape: a mask, not a signal (no float output to carry one).
    length, source = scores.shape[-2], scores.shape[-1]
    return torch.ones(length, source, dtype=torch.bool, device=scores.device).triu(1)


def multihead_attention(
    module: nn.MultiheadAttention,
    out_proj: Any,
    query: Any,
    key: Any,
    value: Any,
    key_padding_mask: Any = None,
    need_weights: bool = True,
    attn_mask: Any = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Any, Any]:
    """``nn.MultiheadAttention.forward`` in plain operations (eval mode).

    ``out_proj`` calls the module's output projection (traced as its own Linear node).
    Returns ``(output, weights)`` like the module (weights averaged over heads unless
    ``average_attn_weights=False``; None when ``need_weights=False``).
    """
    if module.bias_k is not None or module.add_zero_attn:
        raise NotAnalyzableModelError(
            "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not decomposed for the "
            "relevance rules"
        )
    heads, embed = module.num_heads, module.embed_dim
    head_dim = embed // heads
    if not module.batch_first:  # (L, N, E) -> (N, L, E)
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    if module._qkv_same_embed_dim:
        weight, bias = module.in_proj_weight, module.in_proj_bias
        # The packed projection once per distinct input, then its slice: the rules see one
        # Linear over the parameter itself (a sliced weight would be computed in forward).
        if query is key and key is value:
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            q = F.linear(query, weight, bias)[..., :embed]
            k = F.linear(key, weight, bias)[..., embed : 2 * embed]
            v = F.linear(value, weight, bias)[..., 2 * embed :]
    else:
        # Separate weights; a bias slice is computed in forward, so it is added after the
        # projection (a shift: the projection's rule sees no bias).
        b = module.in_proj_bias
        q = F.linear(query, module.q_proj_weight)
        k = F.linear(key, module.k_proj_weight)
        v = F.linear(value, module.v_proj_weight)
        if b is not None:
            q, k, v = q + b[:embed], k + b[embed : 2 * embed], v + b[2 * embed :]
    # (N, L, E) -> (N, H, L, D)
    q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (q, k, v))
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))
    if attn_mask is not None:
        if attn_mask.dim() == 3:  # (N * H, L, S)
            attn_mask = attn_mask.reshape(-1, heads, *attn_mask.shape[-2:])
        # In nn.MultiheadAttention a True entry is *not* attended.
        scores = _apply_mask(scores, attn_mask, masked_when=True)
    elif is_causal:
        scores = causal_mask(scores)
    if key_padding_mask is not None:
        scores = _apply_mask(scores, key_padding_mask[:, None, None, :], masked_when=True)
    probabilities = torch.softmax(scores, dim=-1)
    output = torch.matmul(probabilities, v).transpose(1, 2).flatten(-2)
    output = out_proj(output)
    if not module.batch_first:
        output = output.transpose(0, 1)
    weights = None
    if need_weights:
        weights = probabilities.mean(dim=1) if average_attn_weights else probabilities
    return output, weights
