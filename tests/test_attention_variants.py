"""Attention as the model families write it: fully masked queries, ALiBi with ``baddbmm``,
Falcon's indexing, ResMLP's ``addcmul``, autocast casts (issue 25 item 7).

Each checks the written-out graph against the model (float64), the gradient against
autograd, and CP-LRP's conservation on a bias-free block (Ali et al. 2022: the attention
probabilities held constant, so every other node conserves), in hand-sized cases.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.errors import UnsupportedNodeError
from innspect.graph.graph import ModelGraph
from innspect.graph.ops import family

DT = torch.float64
D, L = 8, 5
EPS = 1e-12  # CP-LRP conserves up to what epsilon absorbs: negligible in float64
RULES = ("lrp.epsilon", "lrp.attn", "lrp.cp")


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


def _logit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output innspect explains by default: each row's largest logit."""
    with torch.no_grad():
        return model(x).max(dim=-1).values


def _gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    output = model(leaf)
    output.gather(1, output.argmax(1, keepdim=True)).sum().backward()
    return leaf.grad


def _check(model: nn.Module, x: torch.Tensor, conserve: bool = True) -> dict[str, torch.Tensor]:
    """The graph computes the model, the gradient is autograd's, every rule is finite, and
    lrp.cp's input relevance sums to the explained logit (bias-free models)."""
    graph = ModelGraph(model, x)
    torch.testing.assert_close(graph.module(x), model(x), rtol=1e-12, atol=1e-12)
    gradient = innspect.create_analyzer("gradient", model).analyze(x)
    torch.testing.assert_close(gradient, _gradient(model, x), rtol=1e-10, atol=1e-12)
    results = {}
    for method in RULES:
        relevance = innspect.create_analyzer(method, model, epsilon=EPS).analyze(x)
        assert torch.isfinite(relevance).all(), f"{method}: {relevance}"
        assert relevance.abs().sum() > 0, method
        results[method] = relevance
    if conserve:
        totals = results["lrp.cp"].reshape(x.shape[0], -1).sum(1)
        torch.testing.assert_close(totals, _logit(model, x), rtol=1e-6, atol=1e-9)
    return results


# --- 1. A query whose keys are all masked ------------------------------------------------


class _MaskedSdpa(nn.Module):
    """Bias-free attention through ``F.scaled_dot_product_attention`` with a constant mask;
    ``kind`` spells it: boolean (True attends) or additive (-inf)."""

    def __init__(self, mask: torch.Tensor, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.head = nn.Linear(D, 3, bias=False)
        if kind == "float":
            mask = torch.zeros(mask.shape, dtype=DT).masked_fill(~mask, float("-inf"))
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            f(x).unflatten(-1, (2, D // 2)).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.head(self.o(attended.transpose(1, 2).flatten(-2)).sum(1))


def _padding_mask() -> torch.Tensor:
    """Left padding as Hugging Face writes it for a causal model: position 0 is padding,
    so the padding token's own query (row 0) sees no key at all."""
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    mask[:, 0] = False
    return mask


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_a_fully_masked_query_row_gives_zero_as_torch_does(kind: str) -> None:
    model = _MaskedSdpa(_padding_mask(), kind).double().eval()
    x = _x(2, L, D)
    assert torch.isfinite(model(x)).all()  # torch: the row is 0, not NaN
    graph = ModelGraph(model)
    assert "softmax" in {family(i.node, i.module) for i in graph.nodes}  # written out
    results = _check(model, x)
    # The padding token is no key of any query and its own query reads nothing: the
    # gradient (a linear map of the value path) and every relevance give it exactly 0.
    for relevance in results.values():
        assert (relevance[:, 0] == 0).all()


def test_a_fully_masked_row_matches_the_model_without_the_padding_token() -> None:
    """Dropping the padding token from the input leaves the other tokens' relevance as it
    was under every rule (the masked model computes the same function of them)."""
    masked = _MaskedSdpa(_padding_mask(), "bool").double().eval()
    # The same weights (each model seeds its own), a causal mask over the four real tokens.
    plain = _MaskedSdpa(torch.ones(L - 1, L - 1, dtype=torch.bool).tril(), "bool").double().eval()
    x = _x(2, L, D)
    for method in ("gradient", *RULES):
        options = {} if method == "gradient" else {"epsilon": EPS}
        full = innspect.create_analyzer(method, masked, **options).analyze(x)
        short = innspect.create_analyzer(method, plain, **options).analyze(x[:, 1:])
        torch.testing.assert_close(full[:, 1:], short, rtol=1e-9, atol=1e-12, msg=method)


# --- 2a. BLOOM's ALiBi scores: baddbmm ---------------------------------------------------


class _Alibi(nn.Module):
    """BLOOM's attention, bias-free: ``alibi.baddbmm(q, k^T, beta=1, alpha=1/sqrt(d))`` adds
    the (input-independent) ALiBi bias to the scaled scores; ``written`` spells the same
    function as a matmul and a sum."""

    def __init__(self, written: bool, method: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.written, self.method = written, method
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.head = nn.Linear(D, 3, bias=False)
        slopes = torch.tensor([0.5, 0.25], dtype=DT)[:, None, None]
        self.register_buffer("alibi", slopes * torch.arange(L, dtype=DT)[None, None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        q, k, v = (
            f(x).unflatten(-1, (2, D // 2)).transpose(1, 2).reshape(batch * 2, L, D // 2)
            for f in (self.q, self.k, self.v)
        )
        alibi = self.alibi.repeat(batch, 1, 1)
        alpha = (D // 2) ** -0.5
        if self.written:
            scores = alibi + alpha * torch.bmm(q, k.transpose(-1, -2))
        elif self.method:
            scores = alibi.baddbmm(batch1=q, batch2=k.transpose(-1, -2), beta=1.0, alpha=alpha)
        else:
            scores = torch.baddbmm(alibi, q, k.transpose(-1, -2), alpha=alpha)
        attended = torch.bmm(torch.softmax(scores, dim=-1), v)
        attended = attended.reshape(batch, 2, L, D // 2).transpose(1, 2).flatten(-2)
        return self.head(self.o(attended).sum(1))


@pytest.mark.parametrize("method", [True, False], ids=["method", "function"])
def test_alibi_baddbmm_has_the_rules_of_its_written_out_sum(method: bool) -> None:
    """Each rule gives what it gives the same scores written as ``alibi + alpha (q @ k^T)``
    (a shift by the constant bias, then AttnLRP's matmul rule); lrp.cp conserves."""
    fused, written = _Alibi(False, method).double().eval(), _Alibi(True).double().eval()
    x = _x(2, L, D)
    assert "baddbmm" in {family(i.node, i.module) for i in ModelGraph(fused).nodes}
    results = _check(fused, x)
    for rule, relevance in results.items():
        expected = innspect.create_analyzer(rule, written, epsilon=EPS).analyze(x)
        torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12, msg=rule)


class _SignalBias(nn.Module):
    """``baddbmm`` whose added term carries the signal too: ``x W1 + (x W2) @ (x W3)^T``."""

    def __init__(self, written: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.written = written
        self.a, self.b, self.c = (nn.Linear(D, L, bias=False) for _ in range(3))
        self.head = nn.Linear(L, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        added, left, right = self.a(x), self.b(x), self.c(x).transpose(-1, -2)[..., :L, :]
        if self.written:
            scores = 0.5 * added + 2.0 * torch.bmm(left, right)
        else:
            scores = torch.baddbmm(added, left, right, beta=0.5, alpha=2.0)
        return self.head(scores.mean(1))


def test_baddbmm_with_a_signal_in_both_terms_splits_as_the_sum_would() -> None:
    fused, written = _SignalBias(False).double().eval(), _SignalBias(True).double().eval()
    x = _x(2, L, D)
    for rule in RULES:
        relevance = innspect.create_analyzer(rule, fused, epsilon=EPS).analyze(x)
        expected = innspect.create_analyzer(rule, written, epsilon=EPS).analyze(x)
        torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12, msg=rule)


# --- 2b. Falcon's multi-query attention: the shared key and value heads by index ----------


class _MultiQuery(nn.Module):
    """Falcon's fused projection: ``heads`` query heads, then one key and one value head,
    picked with ``qkv[:, :, [-2]]`` (``pick="index"``: ``aten.index`` once exported),
    ``torch.index_select`` (``"select"``), or written as slices (``"slice"``)."""

    def __init__(self, pick: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pick = pick
        self.qkv = nn.Linear(D, 4 * (D // 2), bias=False)  # 2 query heads, 1 key, 1 value
        self.o, self.head = nn.Linear(D, D, bias=False), nn.Linear(D, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if self.pick == "index" and batch > 0:  # data-dependent for fx: torch.export captures
            pass
        qkv = self.qkv(x).view(batch, L, 4, D // 2)
        q = qkv[:, :, :-2]
        if self.pick == "slice":
            k, v = qkv[:, :, -2:-1], qkv[:, :, -1:]
        elif self.pick == "select":
            k = torch.index_select(qkv, 2, torch.tensor([2]))
            v = torch.index_select(qkv, 2, torch.tensor([3]))
        else:
            k, v = qkv[:, :, [-2]], qkv[:, :, [-1]]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k, v = k.expand(-1, 2, -1, -1), v.expand(-1, 2, -1, -1)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(self.o(attended.transpose(1, 2).reshape(batch, L, D)).sum(1))


@pytest.mark.parametrize("pick", ["index", "select"])
def test_falcon_indexed_heads_are_copies(pick: str) -> None:
    """Picking heads by an index list copies values: every rule gives what it gives the
    same heads picked by slices, and lrp.cp conserves (the index was refused before)."""
    model, sliced = _MultiQuery(pick).double().eval(), _MultiQuery("slice").double().eval()
    x = _x(2, L, D)
    names = {n.target for n in ModelGraph(model, x).module.graph.nodes}
    if pick == "index":
        assert torch.ops.aten.index.Tensor in names  # the exported spelling Falcon has
    results = _check(model, x)
    for rule, relevance in results.items():
        expected = innspect.create_analyzer(rule, sliced, epsilon=EPS).analyze(x)
        torch.testing.assert_close(relevance, expected, rtol=1e-10, atol=1e-12, msg=rule)


def test_an_index_computed_from_the_input_picks_the_pooled_token() -> None:
    """Hugging Face's decoder classifiers pool ``logits[arange(N), last_token]`` with
    ``last_token`` computed from the input ids (an ``aten.index`` whose indices depend on
    the input but carry no signal): lrp.cp (refused before) conserves the logit on a
    bias-free LLaMA."""
    import transformers as hf  # the test extra installs it

    torch.manual_seed(0)
    config = hf.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
        max_position_embeddings=32,
    )
    model = hf.LlamaForSequenceClassification(config).eval().double()
    inputs = {"input_ids": torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(1))}
    analyzer = innspect.create_analyzer(
        "lrp.cp", model, attribute_to="model.embed_tokens", epsilon=EPS
    )
    with torch.no_grad():
        logits = model(**inputs).logits.max(-1).values
    torch.testing.assert_close(analyzer.analyze(inputs).sum((1, 2)), logits, rtol=1e-6, atol=1e-9)


# --- 2c. ResMLP's Affine: addcmul ----------------------------------------------------------


class _ResMlpBlock(nn.Module):
    """ResMLP's block (Touvron et al. 2021): ``x + Affine(Linear(Affine(x)))`` with timm's
    ``Affine`` (``torch.addcmul(beta, alpha, x)``), or written out as ``beta + alpha * x``."""

    def __init__(self, written: bool, shift: bool) -> None:
        super().__init__()
        from timm.models.mlp_mixer import Affine  # timm is a test dependency

        torch.manual_seed(0)
        self.written = written
        self.norm1, self.norm2 = Affine(D), Affine(D)
        with torch.no_grad():
            for norm in (self.norm1, self.norm2):
                norm.alpha.uniform_(0.5, 1.5)
                if shift:
                    norm.beta.normal_()
        self.mix, self.head = nn.Linear(D, D, bias=False), nn.Linear(D, 3, bias=False)

    def _affine(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return norm.beta + norm.alpha * x if self.written else norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._affine(self.norm2, F.gelu(self.mix(self._affine(self.norm1, x))))
        return self.head(x.mean(1))


@pytest.mark.parametrize("shift", [False, True], ids=["bias_free", "shifted"])
def test_resmlp_affine_is_a_scale_and_a_shift(shift: bool) -> None:
    """Every rule gives what it gives ``beta + alpha * x`` (a scaling that passes the
    relevance, then a shift: passed by lrp.epsilon, a bias absorbing its share under
    lrp.attn and lrp.cp); bias-free (beta = 0), lrp.cp conserves."""
    fused = _ResMlpBlock(False, shift).double().eval()
    written = _ResMlpBlock(True, shift).double().eval()
    x = _x(2, L, D)
    assert "addcmul" in {family(i.node, i.module) for i in ModelGraph(fused).nodes}
    results = _check(fused, x, conserve=not shift)
    for rule, relevance in results.items():
        expected = innspect.create_analyzer(rule, written, epsilon=EPS).analyze(x)
        torch.testing.assert_close(relevance, expected, rtol=1e-10, atol=1e-12, msg=rule)


class _Gated(nn.Module):
    """``addcmul(x W1, sigmoid(x W2), x W3)``: a gated product of two signals plus a term."""

    def __init__(self, written: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.written = written
        self.a, self.b, self.c = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.head = nn.Linear(D, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        added, gate, signal = self.a(x), torch.sigmoid(self.b(x)), self.c(x)
        if self.written:
            y = added + 0.5 * (gate * signal)
        else:
            y = torch.addcmul(added, gate, signal, value=0.5)
        return self.head(y.mean(1))


def test_addcmul_of_two_signals_splits_as_the_sum_and_gate_rule_would() -> None:
    fused, written = _Gated(False).double().eval(), _Gated(True).double().eval()
    x = _x(2, L, D)
    for rule in RULES:
        relevance = innspect.create_analyzer(rule, fused, epsilon=EPS).analyze(x)
        expected = innspect.create_analyzer(rule, written, epsilon=EPS).analyze(x)
        torch.testing.assert_close(relevance, expected, rtol=1e-10, atol=1e-12, msg=rule)
    totals = innspect.create_analyzer("lrp.cp", fused, epsilon=EPS).analyze(x).sum((1, 2))
    torch.testing.assert_close(totals, _logit(fused, x), rtol=1e-6, atol=1e-9)


# --- 2d. torch.autocast inside a forward ---------------------------------------------------


class _Autocast(nn.Module):
    """A block under ``torch.autocast`` (``enabled=False`` as Hugging Face's rotary
    embeddings write it, or enabled: float64 tensors are never cast), then a cast back."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enabled = enabled
        self.a, self.b = nn.Linear(D, D, bias=False), nn.Linear(D, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:  # data-dependent for fx: torch.export captures the region
            pass
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled):
            h = torch.relu(self.a(x))
        return self.b(h.to(x.dtype)).sum(1)


@pytest.mark.parametrize("enabled", [False, True], ids=["disabled", "enabled"])
def test_autocast_regions_are_written_into_the_graph(enabled: bool) -> None:
    """torch.export keeps the region as one ``wrap_with_autocast`` call, which no relevance
    rule maps (refused before); its body is now in the graph, and lrp.cp conserves."""
    model = _Autocast(enabled).double().eval()
    x = _x(2, L, D)
    targets = {str(n.target) for n in ModelGraph(model, x).module.graph.nodes}
    assert not any("wrap_with_autocast" in t for t in targets)
    assert "aten.relu.default" in targets
    _check(model, x)


# --- 2e. DeBERTa-v2's disentangled attention: gather of relative-position scores ----------


class _Disentangled(nn.Module):
    """DeBERTa's content-to-position term (He et al. 2021): the query's scores against the
    relative-position keys, ``q @ pos_k^T`` of shape (L, 2k), then for each key ``j`` the
    score at the bucket of ``i - j``: ``torch.gather`` (``onehot=False``), or the same pick as
    a product with a constant one-hot tensor (``onehot=True``: a linear map)."""

    def __init__(self, onehot: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.onehot = onehot
        self.q, self.k, self.v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.head = nn.Linear(D, 3, bias=False)
        self.positions = nn.Parameter(torch.randn(2 * 3, D, dtype=DT))  # buckets -3..2
        relative = torch.arange(L)[:, None] - torch.arange(L)[None, :]
        index = (relative.clamp(-3, 2) + 3).long()  # (L, L): the bucket of i - j
        self.register_buffer("index", index)
        self.register_buffer("pick", F.one_hot(index, 6).to(DT).transpose(-1, -2))  # (L, 6, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        c2p = q @ self.positions.T  # (N, L, 6)
        if self.onehot:
            c2p = torch.einsum("nib,ibj->nij", c2p, self.pick)
        else:
            c2p = torch.gather(c2p, -1, self.index.expand(x.shape[0], L, L))
        scores = (q @ k.transpose(-1, -2) + c2p) * (2 * D) ** -0.5
        return self.head((torch.softmax(scores, dim=-1) @ v).sum(1))


def test_deberta_gather_of_relative_scores_is_a_copy() -> None:
    """``gather`` (refused before) gives what the one-hot linear map gives (the relevance of
    each gathered score returns to the score it copies) under AttnLRP and CP-LRP, whose
    matmul rule takes ``epsilon`` (lrp.epsilon's keeps AttnLRP's 1e-6), and lrp.cp
    conserves."""
    gathered = _Disentangled(False).double().eval()
    onehot = _Disentangled(True).double().eval()
    x = _x(2, L, D)
    results = _check(gathered, x)
    for rule in ("lrp.attn", "lrp.cp"):
        relevance = results[rule]
        expected = innspect.create_analyzer(rule, onehot, epsilon=EPS).analyze(x)
        torch.testing.assert_close(relevance, expected, rtol=1e-8, atol=1e-12, msg=rule)


def test_hugging_face_deberta_v2_gets_attn_lrp_and_cp_lrp_conserves() -> None:
    """A tiny random DeBERTa-v2 (c2p and p2c relative attention), its biases set to zero:
    lrp.cp's relevance at the word embeddings sums to the logit; lrp.attn runs (its
    ``gather`` nodes were refused)."""
    import transformers as hf  # the test extra installs it

    torch.manual_seed(0)
    config = hf.DebertaV2Config(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        intermediate_size=32,
        num_attention_heads=2,
        max_position_embeddings=32,
        relative_attention=True,
        position_buckets=8,
        max_relative_positions=16,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
    )
    model = hf.DebertaV2ForSequenceClassification(config).eval().double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    where = {"attribute_to": "deberta.embeddings.word_embeddings", "epsilon": EPS}
    with torch.no_grad():
        logits = model(**inputs).logits.max(-1).values
    cp = innspect.create_analyzer("lrp.cp", model, **where).analyze(inputs)
    torch.testing.assert_close(cp.sum((1, 2)), logits, rtol=1e-6, atol=1e-9)
    attn = innspect.create_analyzer("lrp.attn", model, **where).analyze(inputs)
    assert torch.isfinite(attn).all() and not torch.allclose(attn, cp)


def test_an_autocast_region_that_casts_stays_one_call() -> None:
    """In float32 an enabled region computes in bfloat16: written into the graph it would
    compute in float32, another function; it stays one call, which the gradient runs and
    the relevance rules refuse by name."""
    model = _Autocast(True).eval()
    x = _x(2, L, D).float()
    targets = {str(n.target) for n in ModelGraph(model, x).module.graph.nodes}
    assert any("wrap_with_autocast" in t for t in targets)
    gradient = innspect.create_analyzer("gradient", model).analyze(x)
    torch.testing.assert_close(gradient, _gradient(model, x))
    with pytest.raises(UnsupportedNodeError, match="wrap_with_autocast"):
        innspect.create_analyzer("lrp.cp", model).analyze(x)


# --- GPT-Neo's causal mask: where(mask, scores, min) ------------------------------------


class _WhereMasked(nn.Module):
    """Bias-free causal attention whose mask is ``torch.where(mask, scores, min)`` (GPT-Neo),
    or (``fill``) the same scores with ``masked_fill`` (a rule the project had)."""

    def __init__(self, fill: bool, method: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fill, self.method = fill, method
        self.q, self.k, self.v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.head = nn.Linear(D, 3, bias=False)
        self.register_buffer("causal", torch.ones(L, L, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2)
        low = torch.tensor(torch.finfo(scores.dtype).min, dtype=scores.dtype)
        if self.fill:
            scores = scores.masked_fill(~self.causal, low)
        elif self.method:
            scores = scores.where(self.causal, low)
        else:
            scores = torch.where(self.causal, scores, low)
        return self.head((scores.softmax(-1) @ self.v(x)).sum(1))


@pytest.mark.parametrize("method", [False, True])
def test_where_with_a_constant_branch_passes_relevance_to_the_chosen_scores(method) -> None:
    """GPT-Neo's mask was refused ('where_1: no LRP mapping'); a selection between the
    signal and a constant passes each position's relevance to the operand chosen there, as
    the masked_fill spelling of the same model does; lrp.cp conserves."""
    selected = _WhereMasked(False, method).double().eval()
    filled = _WhereMasked(True).double().eval()
    x = _x(2, L, D)
    results = _check(selected, x)
    for rule, relevance in results.items():
        expected = innspect.create_analyzer(rule, filled, epsilon=EPS).analyze(x)
        torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12, msg=rule)


class _WhereBySignal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.lin(x)
        return torch.where(hidden > 0, hidden, 0.1 * hidden)  # a leaky ReLU by hand


def test_where_choosing_by_the_signal_is_refused_by_name() -> None:
    """A condition computed from the input makes the selection an activation the rules do
    not know: refused at the node, never passed through as a copy."""
    model = _WhereBySignal().double().eval()
    with pytest.raises(UnsupportedNodeError, match="where"):
        innspect.create_analyzer("lrp.epsilon", model).analyze(_x(2, D))
