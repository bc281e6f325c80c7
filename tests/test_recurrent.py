"""Recurrent layers written out step by step (issue 25 item 8: ``nn.LSTM`` / ``nn.GRU``).

The captured graph replaces each LSTM / GRU call by its computation in plain operations
over the example's time steps (``graph/recurrent.py``). Checked here: it computes exactly
what the module computes (every configuration, float64), the gradient equals autograd on
the user's model, LRP follows Arras et al. (2017, 2019: the gate held constant in every
signal-gate product, the layer's rule on the linear maps) against the formula written
out in NumPy, relevance is conserved on bias-free models, the model is left as it was,
and what is not written out is refused with a message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import innspect
from innspect.analyzers.registry import list_analyzers
from innspect.errors import InnspectError, NotAnalyzableModelError
from innspect.graph.call import bind_call
from innspect.graph.graph import ModelGraph
from innspect.graph.recurrent import recurrent_nodes
from innspect.rules.modern import gate_factor


class _Whole(nn.Module):
    """The recurrent layer's own outputs, as torch returns them (with a given state)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
    ) -> object:
        if h0 is None:
            return self.rnn(x)
        return self.rnn(x, h0 if c0 is None else (h0, c0))


class _Head(nn.Module):
    """A recurrent layer, then a linear head on the last step's output."""

    def __init__(self, rnn: nn.Module, outputs: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.rnn = rnn
        width = (rnn.proj_size or rnn.hidden_size) if isinstance(rnn, nn.LSTM) else rnn.hidden_size
        width *= 2 if rnn.bidirectional else 1
        self.head = nn.Linear(width, outputs, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The model takes (N, T, F) whatever the layer's layout.
        out, _ = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1))
        last = out[:, -1] if self.rnn.batch_first else out[-1]
        return self.head(last)


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.uniform_(p, -0.8, 0.8)
    return module.double().eval()


CONFIGS = [
    ("lstm", {}),
    ("lstm", {"batch_first": True}),
    ("lstm", {"num_layers": 2, "bidirectional": True}),
    ("lstm", {"bias": False, "batch_first": True}),
    ("lstm", {"proj_size": 2, "num_layers": 2}),
    ("lstm", {"proj_size": 2, "bidirectional": True, "batch_first": True}),
    ("lstm", {"state": True, "num_layers": 2, "bidirectional": True}),
    ("gru", {}),
    ("gru", {"batch_first": True, "num_layers": 2}),
    ("gru", {"bidirectional": True, "bias": False}),
    ("gru", {"state": True, "bidirectional": True, "num_layers": 2, "batch_first": True}),
]


def _layer(kind: str, options: dict) -> nn.Module:
    options = {k: v for k, v in options.items() if k != "state"}
    cls = nn.LSTM if kind == "lstm" else nn.GRU
    return _seeded(cls(3, 4, **options))


def _inputs(
    rnn: nn.Module, state: bool, steps: int = 4, batch: int = 2, batch_first: bool = False
) -> tuple:
    gen = torch.Generator().manual_seed(1)
    shape = (batch, steps, 3) if rnn.batch_first or batch_first else (steps, batch, 3)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if not state:
        return (x,)
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    out = getattr(rnn, "proj_size", 0) or rnn.hidden_size
    h0 = torch.randn(layers, batch, out, generator=gen, dtype=torch.float64)
    if isinstance(rnn, nn.GRU):
        return (x, h0)
    return (x, h0, torch.randn(layers, batch, rnn.hidden_size, generator=gen, dtype=torch.float64))


def _flat(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _flat(v)]


@pytest.mark.parametrize(("kind", "options"), CONFIGS)
def test_written_out_layer_computes_what_the_module_computes(kind: str, options: dict) -> None:
    rnn = _layer(kind, options)
    model = _Whole(rnn)
    inputs = _inputs(rnn, options.get("state", False))
    graph = ModelGraph(model, inputs, call=bind_call(model, len(inputs)), output=0)
    assert graph.recurrent_steps == {"rnn": 4} and not recurrent_nodes(graph.module)
    with torch.no_grad():
        expected, got = model(*inputs), graph.module(*graph.placeholder_values(inputs))
    # Same structure: (output, (h_n, c_n)) for an LSTM, (output, h_n) for a GRU.
    assert type(got) is type(expected) and len(got) == len(expected)
    for e, g in zip(_flat(expected), _flat(got), strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kind", "options"), CONFIGS[:4] + CONFIGS[7:9])
def test_gradient_equals_autograd_on_the_model(kind: str, options: dict) -> None:
    rnn = _layer(kind, options)
    model = _Head(rnn, outputs=3)
    _seeded(model.head, 2)
    (x,) = _inputs(rnn, False, batch_first=True)
    for name in ("gradient", "input_t_gradient"):
        got = innspect.create_analyzer(name, model, neuron_selection_mode="index").analyze(x, 1)
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(leaf)[:, 1].sum(), leaf)
        expected = grad if name == "gradient" else grad * x
        torch.testing.assert_close(torch.as_tensor(got), expected, rtol=1e-10, atol=1e-12)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _eps_rule(inputs: np.ndarray, weight: np.ndarray, z: np.ndarray, r: np.ndarray, eps: float):
    """Arras et al.'s ``lrp_linear`` with the bias absorbing (bias_factor 0):
    ``R_k = sum_j in_k w_jk / (z_j + eps sign z_j) R_j``."""
    return inputs * (weight.T @ (r / (z + eps * np.where(z >= 0, 1.0, -1.0))))


def _lstm_arras(rnn: nn.LSTM, head: nn.Linear, x: np.ndarray, eps: float) -> np.ndarray:
    """LRP of a one-layer LSTM and a bias-free linear head on h_T, for one sequence
    ``x`` (T, D), after Arras et al. 2017 (their LRP_for_LSTM code): the epsilon rule on
    the linear maps, whose pre-activation is ``W_ih x_t + W_hh h_{t-1} + b`` (the bias
    absorbs its share: their ``bias_factor=0``); the sigmoid gates
    held constant in ``i * g`` and ``o * tanh(c)``; ``c_t = f c_{t-1} + i g`` split in
    proportion to its two terms (innspect's sums carry no epsilon)."""
    w_ih, w_hh = rnn.weight_ih_l0.detach().numpy(), rnn.weight_hh_l0.detach().numpy()
    bias = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy() if rnn.bias else 0.0
    hidden = w_hh.shape[1]
    steps = x.shape[0]
    h, c = [np.zeros(hidden)], [np.zeros(hidden)]
    gates, pre = [], []
    for t in range(steps):
        z = w_ih @ x[t] + w_hh @ h[-1] + bias
        i, f, g, o = _sigmoid(z[:hidden]), _sigmoid(z[hidden : 2 * hidden]), None, None
        g, o = np.tanh(z[2 * hidden : 3 * hidden]), _sigmoid(z[3 * hidden :])
        c.append(f * c[-1] + i * g)
        h.append(o * np.tanh(c[-1]))
        gates.append((i, f, g))
        pre.append(z)
    w_out = head.weight.detach().numpy()
    y = w_out @ h[-1]
    r_h = _eps_rule(h[-1], w_out, y, y, eps)
    r_c = np.zeros(hidden)
    r_x = np.zeros_like(x)
    for t in reversed(range(steps)):
        i, f, g = gates[t]
        r_c = r_c + r_h  # h = o * tanh(c): o held constant, tanh passes
        r_c_prev = f * c[t] / c[t + 1] * r_c
        r_g = i * g / c[t + 1] * r_c  # i * g: i held constant, tanh passes
        rows = slice(2 * hidden, 3 * hidden)
        weight = np.concatenate([w_ih[rows], w_hh[rows]], axis=1)
        r_in = _eps_rule(np.concatenate([x[t], h[t]]), weight, pre[t][rows], r_g, eps)
        r_x[t] = r_in[: x.shape[1]]
        r_h, r_c = r_in[x.shape[1] :], r_c_prev
    return r_x


def _gru_formula(rnn: nn.GRU, head: nn.Linear, x: np.ndarray, eps: float) -> np.ndarray:
    """LRP of a one-layer GRU and a bias-free linear head on h_T in the same spirit: the
    epsilon rule on each linear map (biases absorb their share, the first step's
    ``W_hn h_0 + b_hn`` with ``h_0 = 0`` included), the gates ``r``, ``z`` and ``1 - z``
    held constant, sums split in proportion to their terms."""
    w_ih, w_hh = rnn.weight_ih_l0.detach().numpy(), rnn.weight_hh_l0.detach().numpy()
    b_ih, b_hh = (
        (rnn.bias_ih_l0.detach().numpy(), rnn.bias_hh_l0.detach().numpy()) if rnn.bias else (0, 0)
    )
    hidden = w_hh.shape[1]
    h, saved = [np.zeros(hidden)], []
    for t in range(x.shape[0]):
        a, b = w_ih @ x[t] + b_ih, w_hh @ h[-1] + b_hh
        r = _sigmoid(a[:hidden] + b[:hidden])
        z = _sigmoid(a[hidden : 2 * hidden] + b[hidden : 2 * hidden])
        n_pre = a[2 * hidden :] + r * b[2 * hidden :]
        n = np.tanh(n_pre)
        h.append((1 - z) * n + z * h[-1])
        saved.append((a, b, r, z, n_pre, n))
    w_out = head.weight.detach().numpy()
    y = w_out @ h[-1]
    r_h = _eps_rule(h[-1], w_out, y, y, eps)
    r_x = np.zeros_like(x)
    rows = slice(2 * hidden, 3 * hidden)
    for t in reversed(range(x.shape[0])):
        a, b, r, z, n_pre, n = saved[t]
        r_n = (1 - z) * n / h[t + 1] * r_h  # (1 - z) * n: 1 - z held constant
        r_prev = z * h[t] / h[t + 1] * r_h  # z * h_prev: z held constant
        r_a = a[rows] / n_pre * r_n  # n = tanh(a_n + r * b_n), split; r held constant
        r_b = r * b[rows] / n_pre * r_n
        r_x[t] = _eps_rule(x[t], w_ih[rows], a[rows], r_a, eps)
        r_h = r_prev + _eps_rule(h[t], w_hh[rows], b[rows], r_b, eps)
    return r_x


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(("epsilon", "bias"), [(1e-2, False), (1e-9, False), (1e-2, True)])
def test_lrp_epsilon_is_the_gate_holding_formula(kind: str, epsilon: float, bias: bool) -> None:
    # LSTM: Arras et al. 2017; GRU: the same rules (gates held, 1 - z a gate), in NumPy.
    layer, formula = {"lstm": (nn.LSTM, _lstm_arras), "gru": (nn.GRU, _gru_formula)}[kind]
    rnn = _seeded(layer(2, 2, bias=bias, batch_first=True))
    model = _Head(rnn)
    _seeded(model.head, 3)
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = innspect.create_analyzer("lrp.epsilon", model, epsilon=epsilon).analyze(x)
    expected = np.stack([formula(rnn, model.head, s, epsilon) for s in x.numpy()])
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-12)
    # LRP is not input x gradient here (tanh and the gates are not piecewise linear).
    grad = innspect.create_analyzer("input_t_gradient", model).analyze(x)
    assert not np.allclose(np.asarray(grad), expected, atol=1e-3)


@pytest.mark.parametrize(
    "rnn",
    [
        nn.LSTM(3, 4, bias=False, batch_first=True, num_layers=2, bidirectional=True),
        nn.LSTM(3, 4, bias=False, batch_first=True, proj_size=2),
        nn.GRU(3, 4, bias=False, batch_first=True, num_layers=2, bidirectional=True),
    ],
    ids=["lstm", "lstm-proj", "gru"],
)
def test_bias_free_models_conserve_relevance(rnn: nn.Module) -> None:
    model = _Head(_seeded(rnn))
    _seeded(model.head, 4)
    (x,) = _inputs(rnn, False, steps=5, batch=3, batch_first=True)
    with torch.no_grad():
        logits = model(x)[:, 0]
    relevances = {}
    for name in ("lrp.epsilon", "lrp.cp"):
        relevance = innspect.create_analyzer(name, model, epsilon=1e-12).analyze(x)
        relevances[name] = torch.as_tensor(relevance)
        total = relevances[name].sum(dim=(1, 2))
        torch.testing.assert_close(total, logits, rtol=1e-6, atol=1e-9)
    # CP-LRP counts tanh's output as a gate too; the sigmoid is the true gate of sigmoid x
    # tanh, so CP-LRP is Arras's rule here as well (the uniform split would differ).
    torch.testing.assert_close(
        relevances["lrp.cp"], relevances["lrp.epsilon"], rtol=1e-6, atol=1e-10
    )


class _StateHead(nn.Module):
    """An LSTM given its initial state as model inputs, a head on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4, bias=False, batch_first=True, num_layers=2)
        self.head = nn.Linear(4, 1, bias=False)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x, (h0.transpose(0, 1), c0.transpose(0, 1)))
        return self.head(out[:, -1])


def test_relevance_reaches_a_given_initial_state() -> None:
    """A state passed in as inputs is a signal: the inputs and the state share the logit
    (bias-free, conserved), and the state's share is not zero."""
    model = _seeded(_StateHead())
    gen = torch.Generator().manual_seed(2)
    # Batch first: (N, T, F) and (N, layers, H) for each state.
    shapes = [(3, 5, 3), (3, 2, 4), (3, 2, 4)]
    x, h0, c0 = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes)
    relevance = innspect.create_analyzer("lrp.epsilon", model, epsilon=1e-12).analyze((x, h0, c0))
    with torch.no_grad():
        logits = model(x, h0, c0)[:, 0]
    total = sum(torch.as_tensor(r).flatten(1).sum(1) for r in relevance)
    torch.testing.assert_close(total, logits, rtol=1e-6, atol=1e-9)
    assert torch.as_tensor(relevance[1]).abs().sum() > 1e-3


def test_gate_rule_sees_the_gates() -> None:
    """Every product of the written-out layers is a signal-gate product (the gate rule
    holds one factor), ``1 - z`` of the GRU included; none falls back to the uniform rule."""
    for rnn in (nn.LSTM(2, 2, batch_first=True), nn.GRU(2, 2, batch_first=True)):
        model = _seeded(_Head(rnn))
        graph = ModelGraph(model, torch.zeros(1, 3, 2, dtype=torch.float64))
        products = [
            i
            for i in graph.nodes
            if i.node.op == "call_function"
            and i.node.target.__name__ == "mul"
            and len(i.signal_inputs) == 2
        ]
        assert products
        for info in products:
            gates = [gate_factor(graph, f) for f in info.signal_inputs]
            assert sorted(gates) == [False, True], info.name


def _every_method() -> list[str]:
    skip = {"lrp", "lrp.alpha_beta", "input", "random"}  # need a rule / are not methods
    return [n for n in list_analyzers() if n not in skip]


_OPTIONS = {
    "lrp.epsilon_gamma_box": {"low": -4.0, "high": 4.0},
    "deep_taylor.bounded": {"low": -4.0, "high": 4.0},
    "lrp.sequential_preset_b_flat_until_idx": {"until_layer_idx": 1},
    "smoothgrad": {"seed": 0},
}


def _refusal_reason(name: str) -> str | None:
    """Why a method refuses this LSTM model, or None where it must run: class activation
    maps want an image; DeepLIFT and Deep Taylor have no rule for a product of two signals
    (the gates), and say so naming the node."""
    if name.startswith("cam.") or name == "guided_grad_cam":
        return "needs an image input"
    if name.startswith(("deep_lift", "deep_taylor")):
        return r"node 'mul_\d+' \(mul\) has no mapping"
    return None


def test_every_method_runs_on_an_lstm_and_the_model_is_unchanged() -> None:
    model = _seeded(
        _Head(nn.LSTM(3, 4, batch_first=True, num_layers=2, dropout=0.5), outputs=3, bias=True)
    )
    model.train()  # a training flag the analyses must not touch (dropout between layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    (x,) = _inputs(model.rnn, False, batch_first=True)
    ran = []
    for name in _every_method():
        options = dict(_OPTIONS.get(name, {}))
        if name == "deep_lift_shap":
            options["reference_inputs"] = torch.zeros(2, 4, 3, dtype=torch.float64)
        analyzer = innspect.create_analyzer(name, model, **options)
        if name.startswith("pattern."):
            analyzer.fit(x)
        reason = _refusal_reason(name)
        if reason is not None:
            with pytest.raises(InnspectError, match=reason):
                analyzer.analyze(x)
            continue
        result = analyzer.analyze(x)
        assert np.isfinite(np.asarray(result)).all(), name
        ran.append(name)
    assert model.training and model.rnn.training and model.head.training
    assert [id(p) for p in model.parameters()] == params
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert {"gradient", "lrp.epsilon", "lrp.epsilon_plus", "lrp.cp", "occlusion"} <= set(ran)


def test_another_sequence_length_is_captured_again() -> None:
    model = _seeded(_Head(nn.LSTM(2, 3, batch_first=True)))
    analyzer = innspect.create_analyzer("gradient", model)
    for steps in (3, 5):
        x = torch.randn(2, steps, 2, dtype=torch.float64)
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(leaf).sum(), leaf)
        torch.testing.assert_close(torch.as_tensor(analyzer.analyze(x)), grad)
    # A graph used directly with another length refuses instead of reading part of it.
    # Planned without an input, the layer stays whole; the first analysis captures again.
    lrp = innspect.create_analyzer("lrp.epsilon", model)
    lrp.plan()
    assert np.isfinite(np.asarray(lrp.analyze(torch.randn(2, 3, 2, dtype=torch.float64)))).all()
    graph = ModelGraph(model, torch.zeros(1, 3, 2, dtype=torch.float64))
    assert graph.recurrent_steps == {"rnn": 3}
    assert not graph.serves((torch.zeros(1, 4, 2, dtype=torch.float64),))
    with pytest.raises(NotAnalyzableModelError, match=r"'rnn' over the 3 time steps"):
        graph.module(torch.zeros(1, 4, 2, dtype=torch.float64))


def _pack(x: torch.Tensor) -> object:
    lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
    return pack_padded_sequence(x, lengths, batch_first=True)


torch.fx.wrap("_pack")  # one node of the traced graph, as a user's packing helper may be


def test_a_changed_model_is_explained_as_it_is() -> None:
    """The concatenated LSTM weight follows the parameters (an optimizer step between two
    analyses with the same analyzer): lrp.z equals a fresh analyzer's on the new model."""
    model = _seeded(_Head(nn.LSTM(2, 3, batch_first=True)))
    analyzer = innspect.create_analyzer("lrp.z", model)
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    first = torch.as_tensor(analyzer.analyze(x))
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(-0.5)  # in place, as optimizers write
        model.rnn.bias_ih_l0.add_(0.3)
    second = torch.as_tensor(analyzer.analyze(x))
    fresh = torch.as_tensor(innspect.create_analyzer("lrp.z", model).analyze(x))
    torch.testing.assert_close(second, fresh, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(first, second)


class _Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(2, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(_pack(x))
        return h[-1]


def test_unsupported_configurations_are_refused_by_name() -> None:
    x = torch.randn(2, 3, 2)
    with pytest.raises(InnspectError, match=r"'rnn' \(GRU\) receives a packed sequence"):
        innspect.create_analyzer("lrp.epsilon", _Packed()).analyze(x)
    unbatched = _Whole(nn.LSTM(2, 2))
    with pytest.raises(InnspectError, match=r"'rnn' \(LSTM\) receives an input of shape \(3, 2\)"):
        ModelGraph(unbatched, torch.randn(3, 2))
