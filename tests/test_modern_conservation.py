"""Conservation of lrp.cp and lrp.attn on bias-free modern blocks (float64), and the
attention decomposition against the modules it replaces."""

from __future__ import annotations

import pytest
import torch

import innspect
from innspect.engine.forward import run_forward
from innspect.evaluation.conservation import conservation_report
from innspect.graph.graph import ModelGraph
from innspect.graph.ops import family
from tests import modern_models

EPS = 1e-12  # conservation up to what epsilon absorbs: negligible in float64


@pytest.mark.parametrize("name", sorted(modern_models.MODELS))
def test_decomposed_graph_computes_what_the_model_computes(name: str) -> None:
    model, x = modern_models.build(name), modern_models.inputs(name)
    graph = ModelGraph(model)
    operations = {family(i.node, i.module) for i in graph.nodes}
    if name in ("vit", "bert", "decoder"):
        assert {"matmul", "softmax"} <= operations  # attention written out
    torch.testing.assert_close(graph.module(x), model(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(modern_models.MODELS))
def test_cp_lrp_conserves_at_every_node(name: str) -> None:
    model, x = modern_models.build(name), modern_models.inputs(name)
    report = conservation_report(innspect.create_analyzer("lrp.cp", model, epsilon=EPS), x)
    assert len(report.nodes) >= 5
    for node, balance in report.nodes.items():
        difference = float(balance.relative_difference.max())
        assert difference <= 1e-8, f"lrp.cp on {name}: node {node} loses {difference:.3g}"
    torch.testing.assert_close(report.input_total, report.output_total, rtol=1e-8, atol=0)


@pytest.mark.parametrize("name", sorted(modern_models.MODELS))
def test_attn_lrp_conserves_except_at_softmax_where_the_loss_is_its_bias_term(name: str) -> None:
    model, x = modern_models.build(name), modern_models.inputs(name)
    analyzer = innspect.create_analyzer("lrp.attn", model, epsilon=EPS, reverse_keep_tensors=True)
    report = conservation_report(analyzer, x)
    graph = ModelGraph(model)
    softmax = {i.name: i for i in graph.nodes if family(i.node, i.module) == "softmax"}
    assert bool(softmax) == (name in ("vit", "bert", "decoder"))
    assert set(softmax) <= set(report.nodes)  # relevance reaches every softmax
    record = run_forward(graph, x)
    relevances = analyzer.explain(x).relevances
    for node, balance in report.nodes.items():
        if node not in softmax:
            difference = float(balance.relative_difference.max())
            assert difference <= 1e-8, f"lrp.attn on {name}: node {node} loses {difference:.3g}"
            continue
        # R_in = x (R - s sum R) per row: what leaves is sum(x R) - sum(x s) sum(R) per row,
        # i.e. the loss is the zero-order Taylor term sum_j R_j (1 - x_j + sum_i x_i s_i).
        info = softmax[node]
        scores = record.values[info.signal_inputs[0]]
        scores = torch.where(torch.isinf(scores), torch.zeros_like(scores), scores)
        s, r = record.values[info.node], relevances[node]
        per_row = (scores * r).sum(-1) - (scores * s).sum(-1) * r.sum(-1)
        expected = per_row.reshape(per_row.shape[0], -1).sum(1)
        torch.testing.assert_close(balance.leaving, expected, rtol=1e-10, atol=1e-12)
        assert float((balance.leaving - balance.arriving).abs().max()) > 1e-6  # really lost


def test_gate_rule_conserves_on_squeeze_excitation() -> None:
    model, x = modern_models.build("se"), modern_models.inputs("se")
    report = conservation_report(innspect.create_analyzer("lrp.z", model), x)
    assert report.max_relative_difference() <= 1e-8
    plan = str(innspect.create_analyzer("lrp.z", model).explain(x).plan)
    assert "ProductRule(gate)" in plan


class _ActivatedSqueezeExcitation(torch.nn.Module):
    """EfficientNet's SE on an activation's output: ``silu(conv x) * sigmoid(fc(pool))``,
    bias-free. Under CP-LRP both factors are activation outputs; the sigmoid is the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, bias=False)
        self.act = torch.nn.SiLU()
        self.fc1 = torch.nn.Conv2d(6, 2, 1, bias=False)
        self.fc2 = torch.nn.Conv2d(2, 6, 1, bias=False)
        self.head = torch.nn.Linear(6, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        scale = torch.sigmoid(self.fc2(self.act(self.fc1(h.mean((2, 3), keepdim=True)))))
        return self.head((h * scale).mean((2, 3)))


def test_cp_lrp_holds_the_sigmoid_of_a_squeeze_excitation_on_an_activation() -> None:
    # Both factors count as gates under CP-LRP (activation outputs); splitting the relevance
    # in two sent half into the excitation branch (bias-free EfficientNet-B3 lost 1.6e-5 of
    # it there to cancellation). The true gate (the sigmoid) is held: the branch gets none.
    torch.manual_seed(0)
    model = _ActivatedSqueezeExcitation().double().eval()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    analyzer = innspect.create_analyzer("lrp.cp", model, epsilon=EPS)
    report = conservation_report(analyzer, x)
    assert "mul" in report.nodes
    for branch in ("fc1", "fc2"):  # a node no relevance reaches is not in the walk
        assert branch not in report.nodes or not report.nodes[branch].arriving.any(), branch
    torch.testing.assert_close(report.input_total, report.output_total, rtol=1e-10, atol=0)


class _Attention(torch.nn.Module):
    def __init__(self, mask: str, batch_first: bool, kdim: int | None) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.key = torch.nn.Linear(8, kdim or 8)
        generator = torch.Generator().manual_seed(3)
        masks = {
            "none": None,
            "bool": torch.rand(5, 5, generator=generator) > 0.6,
            "float": torch.randn(5, 5, generator=generator),
            "3d": torch.randn(2 * 2, 5, 5, generator=generator),
        }
        self.register_buffer("mask", masks[mask])
        self.batch_first = batch_first

    def forward(self, x):
        x = x if self.batch_first else x.transpose(0, 1)
        out, weights = self.attn(x, self.key(x), self.key(x), attn_mask=self.mask)
        out = out if self.batch_first else out.transpose(0, 1)
        return out.sum(1) + weights.sum((1, 2))[:, None]


@pytest.mark.parametrize("mask", ["none", "bool", "float", "3d"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_multihead_attention_variants_decompose_exactly(mask, batch_first, kdim) -> None:
    torch.manual_seed(0)
    model = _Attention(mask, batch_first, kdim).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    graph = ModelGraph(model)
    assert not any(i.operation == "MultiheadAttention" for i in graph.nodes)
    torch.testing.assert_close(graph.module(x), model(x), rtol=1e-10, atol=1e-12)
    attribution = innspect.create_analyzer("lrp.attn", model).analyze(x)
    assert bool(torch.isfinite(torch.as_tensor(attribution)).all())


class _Encoder(torch.nn.Module):
    """nn.TransformerEncoder (bias-free), with a key padding mask; a head on token 0."""

    def __init__(self, norm_first: bool, batch_first: bool) -> None:
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(
            8,
            2,
            16,
            batch_first=batch_first,
            norm_first=norm_first,
            bias=False,
            activation="gelu",
        )
        norm = torch.nn.LayerNorm(8, bias=False)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, norm, enable_nested_tensor=False)
        padding = torch.zeros(2, 5, dtype=torch.bool)
        padding[:, -2:] = True
        self.register_buffer("padding", padding)
        self.head = torch.nn.Linear(8, 3, bias=False)
        self.batch_first = batch_first

    def forward(self, x):
        x = x if self.batch_first else x.transpose(0, 1)
        x = self.encoder(x, src_key_padding_mask=self.padding)
        return self.head((x if self.batch_first else x.transpose(0, 1))[:, 0])


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_is_decomposed_and_cp_lrp_conserves(norm_first, batch_first) -> None:
    torch.manual_seed(0)
    model = _Encoder(norm_first, batch_first).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    graph = ModelGraph(model)
    assert not any("Transformer" in i.operation for i in graph.nodes)
    torch.testing.assert_close(graph.module(x), model(x), rtol=1e-10, atol=1e-12)
    report = conservation_report(innspect.create_analyzer("lrp.cp", model, epsilon=EPS), x)
    if batch_first:  # per-node sums are per sample along axis 0 (sequence-first: per token)
        assert report.max_relative_difference() <= 1e-8, report.worst_nodes()
    torch.testing.assert_close(report.input_total, report.output_total, rtol=1e-8, atol=0)
