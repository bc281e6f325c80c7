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

import itertools
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from innspect.errors import NotAnalyzableModelError

# node.meta key of the nodes innspect wrote out (attention decomposed while tracing or after
# torch.export): operations the user's code does not contain, which every composite maps
# with relevance rules (``analyzers.plan.written_out``).
WRITTEN_OUT = "innspect_written_out"


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
    ``dropout_p`` is ignored). Boolean ``attn_mask``: True means *attend*, as in torch; a
    query with every key masked gets 0, as in torch (``safe_softmax``)."""
    if enable_gqa:
        # Grouped-query attention: each key/value head serves query.shape[-3] // key.shape[-3]
        # consecutive query heads (torch's semantics), a rearrangement of key and value.
        groups = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    scores = torch.matmul(query, key.transpose(-2, -1))
    scores = scores * (scale if scale is not None else query.shape[-1] ** -0.5)
    if is_causal:
        if attn_mask is not None:
            raise NotAnalyzableModelError(
                "scaled_dot_product_attention: give attn_mask or is_causal=True, not both"
            )
        scores = causal_mask(scores)
    scores = _apply_mask(scores, attn_mask, masked_when=False)
    return torch.matmul(safe_softmax(scores), value)


def safe_softmax(scores: Any) -> Any:
    """Softmax over the last axis, 0 on a row whose scores are all ``-inf`` (a query with
    every key masked: a left-padded prompt's padding token) where the plain softmax gives
    NaN, which ``0 * NaN`` then spreads to every position. Torch's own
    ``scaled_dot_product_attention`` (math kernel and the fused ones) computes the same,
    ``aten._safe_softmax``, since torch 2.5; its gradient on such a row is 0 too. One
    softmax node once traced (``graph/ops.py``), with the softmax's rules. Before torch 2.5
    torch's SDPA gave NaN there too, and so does this, with the plain softmax."""
    if _SAFE_SOFTMAX is None:
        return torch.softmax(scores, dim=-1)
    return _SAFE_SOFTMAX(scores, -1)


_SAFE_SOFTMAX = getattr(getattr(torch.ops.aten, "_safe_softmax", None), "default", None)


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


@torch.fx.wrap
def _v2_bias(qkv_bias: torch.Tensor) -> torch.Tensor:
    bias = qkv_bias.clone()
    length = bias.numel() // 3
    bias[length : 2 * length] = 0
    return bias


@torch.fx.wrap
def _swin_geometry(
    shape: torch.Size, window_size: list[int], shift_size: list[int]
) -> tuple[int, int, int, int, int, int]:
    # torchvision's padding and shift rule, run on the shape (a metadata node once traced).
    _, height, width, _ = shape
    pad_r = (window_size[1] - width % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - height % window_size[0]) % window_size[0]
    pad_h, pad_w = height + pad_b, width + pad_r
    shift_h = 0 if window_size[0] >= pad_h else shift_size[0]
    shift_w = 0 if window_size[1] >= pad_w else shift_size[1]
    return pad_r, pad_b, pad_h, pad_w, shift_h, shift_w


def _shifted_window_mask(
    padded: tuple[int, ...],
    window: tuple[int, ...],
    shifts: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """torchvision's shifted-window attention mask in 2-D or 3-D (``shifted_window_attention``
    and ``_compute_attention_mask_3d``): (windows, size, size), 0 within a region and -100
    between regions of the cyclic shift; zeros without a shift."""
    counts = [p // w for p, w in zip(padded, window, strict=True)]
    windows, size = math.prod(counts), math.prod(window)
    if sum(shifts) == 0:
        return torch.zeros(windows, size, size, device=device, dtype=dtype)
    mask = torch.zeros(tuple(padded), device=device, dtype=dtype)
    slices = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shifts, strict=True)]
    for count, region in enumerate(itertools.product(*slices)):
        mask[tuple(slice(a, b) for a, b in region)] = count
    rank = len(window)
    mask = mask.view(*(v for c, w in zip(counts, window, strict=True) for v in (c, w)))
    mask = mask.permute(*range(0, 2 * rank, 2), *range(1, 2 * rank, 2)).reshape(windows, size)
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@torch.fx.wrap
def _swin_mask(
    geometry: tuple[int, ...], window_size: list[int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    _, _, pad_h, pad_w, shift_h, shift_w = geometry
    window = (window_size[0], window_size[1])
    return _shifted_window_mask((pad_h, pad_w), window, (shift_h, shift_w), device, dtype)


def swin_attention(
    input: Any,
    qkv_weight: Any,
    proj_weight: Any,
    relative_position_bias: Any,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: Any = None,
    proj_bias: Any = None,
    logit_scale: Any = None,
    training: bool = True,
) -> Any:
    """torchvision's ``shifted_window_attention`` (Swin V1 and V2) in plain operations, eval
    mode: padding, cyclic shift and window partition are rearrangements, the relative
    position bias and the shift mask constants added to the scores (both depend on the shape
    only). V2's cosine attention normalises q and k (``F.normalize``: identity rule) and
    scales by a constant."""
    geometry = _swin_geometry(input.shape, window_size, shift_size)
    pad_r, pad_b, pad_h, pad_w, shift_h, shift_w = (geometry[i] for i in range(6))
    batch, height, width, channels = (input.shape[i] for i in range(4))
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
    rows, cols = pad_h // window_size[0], pad_w // window_size[1]
    windows, size = rows * cols, window_size[0] * window_size[1]
    x = x.reshape(batch, rows, window_size[0], cols, window_size[1], channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch * windows, size, channels)
    if logit_scale is not None and qkv_bias is not None:
        # V2 zeroes the key bias in forward: a computed bias, added after the projection.
        qkv = F.linear(x, qkv_weight) + _v2_bias(qkv_bias)
    else:
        qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(batch * windows, size, 3, num_heads, channels // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:
        scores = torch.matmul(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(-2, -1))
        scores = scores * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        scores = torch.matmul(q, k.transpose(-2, -1)) * (channels // num_heads) ** -0.5
    scores = scores + relative_position_bias
    scores = scores.view(batch, windows, num_heads, size, size)
    mask = _swin_mask(geometry, window_size, input.device, input.dtype)
    scores = (scores + mask.unsqueeze(1).unsqueeze(0)).view(-1, num_heads, size, size)
    x = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
    x = F.linear(x.reshape(batch * windows, size, channels), proj_weight, proj_bias)
    x = x.view(batch, rows, cols, window_size[0], window_size[1], channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, channels)
    x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


@torch.fx.wrap
def _swin3d_geometry(
    shape: torch.Size, window_size: list[int], shift_size: list[int]
) -> tuple[int, ...]:
    # torchvision's 3-D padding and shift rule, run on the shape (a metadata node once
    # traced): pads, padded sizes, windows per axis, shifts (0 without a shift), window.
    sizes = (shape[1], shape[2], shape[3])
    pads = tuple((window_size[i] - sizes[i] % window_size[i]) % window_size[i] for i in range(3))
    padded = tuple(sizes[i] + pads[i] for i in range(3))
    counts = tuple(padded[i] // window_size[i] for i in range(3))
    shifts = tuple(shift_size) if sum(shift_size) > 0 else (0, 0, 0)
    return (*pads, *padded, *counts, *shifts, *window_size)


@torch.fx.wrap
def _swin3d_mask(geometry: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Any:
    padded, shifts, window = geometry[3:6], geometry[9:12], geometry[12:]
    return _shifted_window_mask(tuple(padded), tuple(window), tuple(shifts), device, dtype)


def swin3d_attention(
    input: Any,
    qkv_weight: Any,
    proj_weight: Any,
    relative_position_bias: Any,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: Any = None,
    proj_bias: Any = None,
    training: bool = True,
) -> Any:
    """torchvision's ``shifted_window_attention_3d`` (Video Swin, ``swin3d_t``) in plain
    operations, eval mode, as ``swin_attention`` does in 2-D: padding, cyclic shift and
    window partition are rearrangements; the relative position bias and the shift mask
    are constants added to the scores."""
    geometry = _swin3d_geometry(input.shape, window_size, shift_size)
    g = [geometry[i] for i in range(15)]
    (pad_t, pad_h, pad_w), (tp, hp, wp), (nt, nh, nw) = g[0:3], g[3:6], g[6:9]
    (s0, s1, s2), (w0, w1, w2) = g[9:12], g[12:15]
    batch, time, height, width, channels = (input.shape[i] for i in range(5))
    x = F.pad(input, (0, 0, 0, pad_w, 0, pad_h, 0, pad_t))
    x = torch.roll(x, shifts=(-s0, -s1, -s2), dims=(1, 2, 3))
    windows, size = nt * nh * nw, w0 * w1 * w2
    x = x.view(batch, nt, w0, nh, w1, nw, w2, channels)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch * windows, size, channels)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(batch * windows, size, 3, num_heads, channels // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (channels // num_heads) ** -0.5
    scores = scores + relative_position_bias
    scores = scores.view(batch, windows, num_heads, size, size)
    mask = _swin3d_mask(geometry, input.device, input.dtype)
    scores = (scores + mask.unsqueeze(1).unsqueeze(0)).view(-1, num_heads, size, size)
    x = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
    x = F.linear(x.reshape(batch * windows, size, channels), proj_weight, proj_bias)
    x = x.view(batch, nt, nh, nw, w0, w1, w2, channels)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, tp, hp, wp, channels)
    x = torch.roll(x, shifts=(s0, s1, s2), dims=(1, 2, 3))
    return x[:, :time, :height, :width, :].contiguous()


# Fused attention functions of other libraries, by qualified name, and their decomposition.
DECOMPOSED = {
    "torchvision.models.swin_transformer.shifted_window_attention": swin_attention,
    "torchvision.models.video.swin_transformer.shifted_window_attention_3d": swin3d_attention,
}


def encoder_layer(
    module: nn.TransformerEncoderLayer,
    src: Any,
    src_mask: Any = None,
    src_key_padding_mask: Any = None,
    is_causal: bool = False,
) -> Any:
    """``nn.TransformerEncoderLayer.forward`` without its fused fast path (eval mode): the
    attention goes through ``multihead_attention``, the rest are its own submodules."""
    x = src
    if module.norm_first:
        x = x + module._sa_block(module.norm1(x), src_mask, src_key_padding_mask, is_causal)
        return x + module._ff_block(module.norm2(x))
    x = module.norm1(x + module._sa_block(x, src_mask, src_key_padding_mask, is_causal))
    return module.norm2(x + module._ff_block(x))


def encoder(
    module: nn.TransformerEncoder,
    src: Any,
    mask: Any = None,
    src_key_padding_mask: Any = None,
    is_causal: bool | None = None,
) -> Any:
    """``nn.TransformerEncoder.forward`` layer by layer (no nested-tensor fast path)."""
    x = src
    for layer in module.layers:
        x = layer(
            x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal)
        )
    return module.norm(x) if module.norm is not None else x


class _SdpaCall(nn.Module):
    """``sdpa`` on query, key and value, the other arguments fixed: what a traced
    ``aten.scaled_dot_product_attention`` node is written out as."""

    def __init__(self, fixed: dict[str, Any]) -> None:
        super().__init__()
        self.fixed = fixed

    def forward(self, query: Any, key: Any, value: Any) -> Any:
        return sdpa(query, key, value, **self.fixed)


class _MaskedSdpaCall(_SdpaCall):
    def forward(self, query: Any, key: Any, value: Any, attn_mask: Any) -> Any:  # type: ignore[override]
        return sdpa(query, key, value, attn_mask, **self.fixed)


_SDPA_PARAMETERS = (
    "query",
    "key",
    "value",
    "attn_mask",
    "dropout_p",
    "is_causal",
    "scale",
    "enable_gqa",
)


def _in_layout_of(graph: torch.fx.Graph, result: Any, fused: Any) -> Any:
    """``result`` laid out in memory as the fused call's output ``fused`` (its example
    value) was: torch's attention kernels return (N, H, L, E) stored as (N, L, H, E), and
    torch.export drops a later ``.transpose(1, 2).contiguous()`` as a no-op on it, so the
    ``view`` after it (DistilBERT) needs that layout from the written-out matmul too."""
    if not isinstance(fused, torch.Tensor) or fused.dim() < 2 or fused.is_contiguous():
        return result
    strides = fused.stride()
    order = sorted(range(fused.dim()), key=lambda d: (-strides[d], d))  # outermost first
    if order == sorted(order):
        return result
    inverse = sorted(range(len(order)), key=order.__getitem__)
    stored = graph.call_method("contiguous", (graph.call_method("permute", (result, *order)),))
    laid_out = graph.call_method("permute", (stored, *inverse))
    for node in (stored.args[0], stored, laid_out):
        node.meta[WRITTEN_OUT] = True
    return laid_out


def inline_exported_attention(gm: torch.fx.GraphModule) -> None:
    """Write every ``aten.scaled_dot_product_attention`` node of a torch.export graph out as
    ``sdpa``'s plain operations, in place (Hugging Face models call the fused function, and
    torch.export keeps it as one node, which no relevance rule maps)."""
    target = torch.ops.aten.scaled_dot_product_attention.default
    found = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not target:
            continue
        arguments = dict(zip(_SDPA_PARAMETERS, node.args, strict=False)) | dict(node.kwargs)
        tensors = [arguments.pop(name) for name in ("query", "key", "value")]
        mask = arguments.pop("attn_mask", None)
        call = _SdpaCall(arguments) if mask is None else _MaskedSdpaCall(arguments)
        if mask is not None:
            tensors.append(mask)
        body = torch.fx.Tracer().trace(call)
        placeholders = [n for n in body.nodes if n.op == "placeholder"]
        for written in body.nodes:
            written.meta[WRITTEN_OUT] = True  # graph_copy copies meta with each node
        with gm.graph.inserting_before(node):
            result = gm.graph.graph_copy(body, dict(zip(placeholders, tensors, strict=True)))
            result = _in_layout_of(gm.graph, result, node.meta.get("val"))
        node.replace_all_uses_with(result)
        gm.graph.erase_node(node)
        found = True
    if found:
        gm.graph.lint()
        gm.recompile()


def _autocast_is_inert(node: torch.fx.Node) -> bool:
    """Whether an exported ``wrap_with_autocast`` region computes what its body computes
    without autocast: autocast disabled (Hugging Face's rotary embeddings), or no input it
    could cast (autocast casts float32 and lower; float64 tensors pass untouched)."""
    enabled = node.args[2] if len(node.args) > 2 else True
    if enabled is False:
        return True
    for arg in node.args[5:]:
        value = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
        if not isinstance(value, torch.Tensor):
            return False  # unknown: keep the region as it is
        if value.is_floating_point() and value.dtype != torch.float64:
            return False
    return True


def inline_autocast(gm: torch.fx.GraphModule) -> None:
    """Put the body of each exported ``torch.autocast`` region (torch.export keeps it as one
    ``wrap_with_autocast`` call of a submodule, which no rule maps) in the graph, in place,
    where autocast changes nothing there (``_autocast_is_inert``). A region that autocast
    would cast stays as it is (the gradient methods run it; the relevance rules refuse it
    by name), as does one whose body reads its own attributes."""
    wrap = getattr(torch.ops.higher_order, "wrap_with_autocast", None)
    found = False
    for node in list(gm.graph.nodes):
        if wrap is None or node.op != "call_function" or node.target is not wrap:
            continue
        body_node = node.args[4] if len(node.args) > 4 else None
        if not isinstance(body_node, torch.fx.Node) or body_node.op != "get_attr":
            continue
        body = getattr(gm, str(body_node.target), None)
        if not isinstance(body, torch.fx.GraphModule) or not _autocast_is_inert(node):
            continue
        if any(n.op in ("get_attr", "call_module") for n in body.graph.nodes):
            continue
        if not all(u.op == "call_function" and u.target is operator.getitem for u in node.users):
            continue
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        with gm.graph.inserting_before(node):
            outputs = gm.graph.graph_copy(
                body.graph, dict(zip(placeholders, node.args[5:], strict=True))
            )
        outputs = outputs if isinstance(outputs, list | tuple) else (outputs,)
        for user in list(node.users):
            user.replace_all_uses_with(outputs[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        found = True
    if found:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
