"""Recurrent layers (``nn.LSTM``, ``nn.GRU``) written out step by step, so rules reach them.

An LSTM or GRU is one leaf module under torch.fx, which no relevance rule maps. After
capture, with the example input at hand (its sequence length fixes how many steps there
are), ``unroll_recurrent`` replaces each call by the same computation in plain operations,
time step by time step, on the module's own tensors (the module is never changed):

- LSTM (torch's equations): ``z = [W_ih W_hh] [x_t; h] + b_ih + b_hh`` as *one* linear
  layer over the concatenation (a computed-weight ``Linear`` shared by every step of a
  layer and direction, ``canonize._computed_layer``: one cached concatenation, remade
  when the parameters change), so the layer's rule (epsilon...) has
  the whole pre-activation in its denominator, as in Arras et al. 2017 ("Explaining
  recurrent neural network predictions in sentiment analysis", WASSA) and 2019 ("Evaluating
  recurrent neural network explanations", BlackboxNLP); ``i, f, o = sigmoid``,
  ``g = tanh``, ``c = f * c + i * g``, ``h = o * tanh(c)`` (and ``h = W_hr h`` with
  ``proj_size``). The products' sigmoid factors are gates: the gate rule
  (``rules/modern.ProductRule``) gives all relevance to the signal ``g`` or ``tanh(c)``,
  and the z-rule splits ``c`` between ``f * c_prev`` and ``i * g``, as Arras et al. do.
- GRU: ``r, z = sigmoid(W_i x + b_i + W_h h + b_h)``,
  ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h = (1 - z) * n + z * h_prev``;
  ``1 - z`` is a gate too (``gate_factor`` looks through the constant shift). ``r`` gates
  only the recurrent part of ``n``, so the input and recurrent maps stay two linear layers
  (``F.linear`` on the parameters) whose sums the z-rule splits.

A state the caller does not give is zero: a constant of the graph for the LSTM, ``0 * x``
for the GRU (``_Writer.zero_signal`` says why). A state given as a model input is a
signal and receives relevance. Dropout between layers is left out (the graph runs in eval
mode). Packed sequences, unbatched input and subclasses with their own forward are refused.

The steps are cut from the input by ``time_steps``, which refuses a sequence of another
length than the one unrolled (``ModelGraph.serves`` makes analyzers capture again
instead). Nodes written here carry ``attention.WRITTEN_OUT``.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.rnn import PackedSequence

from innspect.errors import InputError, NotAnalyzableModelError, first_line
from innspect.graph import canonize
from innspect.graph.attention import WRITTEN_OUT
from innspect.graph.capture import call_arguments

RECURRENT = (nn.LSTM, nn.GRU)


def time_steps(x: torch.Tensor, steps: int, dim: int, layer: str) -> tuple[torch.Tensor, ...]:
    """``x.unbind(dim)``, refusing a sequence whose length is not the ``steps`` unrolled.

    One node of the written-out graph (a rearrangement in the operations table); the
    check keeps a graph unrolled for one length from silently reading part of another.
    """
    if x.shape[dim] != steps:
        raise NotAnalyzableModelError(
            f"the graph wrote out the recurrent layer '{layer}' over the {steps} time steps "
            f"of the example input, and this input has {x.shape[dim]}: capture the model "
            "again for this length (analyzers do so by themselves), or give sequences of "
            "one length"
        )
    return x.unbind(dim)


def recurrent_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The graph's calls of ``nn.LSTM`` / ``nn.GRU`` modules (not yet written out)."""
    return [
        node
        for node in gm.graph.nodes
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), RECURRENT)
    ]


def unroll_recurrent(gm: fx.GraphModule, example: tuple[Any, ...] | None) -> dict[str, int]:
    """Write every LSTM / GRU call of ``gm`` out over the time steps of ``example`` (one
    value per placeholder), in place; ``{layer name: steps}``. Without an example the
    calls stay as they are (the gradient runs them; the relevance rules refuse them)."""
    nodes = recurrent_nodes(gm)
    if not nodes or example is None:
        return {}
    inputs = _recurrent_inputs(gm, nodes, example)
    steps: dict[str, int] = {}
    for node in nodes:
        name = canonize.original_target(gm, str(node.target))
        steps[name] = _write_out(gm, node, inputs[node], name)
    gm.graph.lint()
    gm.recompile()
    return steps


def _recurrent_inputs(
    gm: fx.GraphModule, nodes: list[fx.Node], example: tuple[Any, ...]
) -> dict[fx.Node, Any]:
    """The value each recurrent call receives as its input on the example (one forward)."""
    wanted = set(nodes)
    seen: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
            return call_arguments(n, self.env.__getitem__)

        def run_node(self, node: fx.Node) -> Any:
            if node in wanted:
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                seen[node] = args[0] if args else kwargs.get("input")
            try:
                return super().run_node(node)
            except Exception as error:  # noqa: BLE001 - re-raised with the node's name
                raise InputError(
                    f"the model failed at node '{node.name}' on the example input: "
                    f"{first_line(error)}"
                ) from error

    with torch.no_grad():
        Recorder(gm).run(*example)
    return seen


def _refusal(name: str, module: nn.Module, what: str) -> NotAnalyzableModelError:
    return NotAnalyzableModelError(
        f"the recurrent layer '{name}' ({type(module).__name__}) {what}, which innspect does "
        "not write out for the rules"
    )


def _write_out(gm: fx.GraphModule, node: fx.Node, value: Any, name: str) -> int:
    module = gm.get_submodule(str(node.target))
    kind = nn.LSTM if isinstance(module, nn.LSTM) else nn.GRU
    if type(module).forward is not kind.forward:
        raise _refusal(name, module, "has a forward of its own")
    if isinstance(value, PackedSequence):
        raise _refusal(
            name,
            module,
            "receives a packed sequence; pass a padded tensor (and pick each sequence's "
            "last valid step after the layer) to explain it",
        )
    if not isinstance(value, torch.Tensor) or value.dim() != 3:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise _refusal(
            name, module, f"receives an input of shape {shape} (batched 3-D input is written out)"
        )
    time_dim, batch_dim = (1, 0) if module.batch_first else (0, 1)
    steps = value.shape[time_dim]
    values = dict(zip(("input", "hx"), node.args, strict=False)) | dict(node.kwargs)
    before = set(gm.graph.nodes)
    tracer = fx.proxy.GraphAppendingTracer(gm.graph)
    with gm.graph.inserting_before(node):
        writer = _Writer(gm, tracer, node, module, name, steps, time_dim, batch_dim)
        result = writer.lstm(values) if kind is nn.LSTM else writer.gru(values)
    for new in gm.graph.nodes:
        if new not in before:
            new.meta[WRITTEN_OUT] = True
    _replace_uses(gm, node, result)
    gm.graph.erase_node(node)
    return steps


def _replace_uses(gm: fx.GraphModule, node: fx.Node, result: Any) -> None:
    """Replace ``node`` (a tuple-valued call) by ``result`` (a nested tuple of nodes): its
    ``[i]`` readers by the part, any other reader by the structure itself."""
    for user in list(node.users):
        part_of = user.op == "call_function" and user.target is operator.getitem
        if part_of and len(user.args) == 2 and isinstance(user.args[1], int):
            part = result[user.args[1]]
            if isinstance(part, fx.Node):
                user.replace_all_uses_with(part)
            else:
                _replace_uses(gm, user, part)
            gm.graph.erase_node(user)
        else:
            user.args = fx.node.map_aggregate(user.args, lambda a: result if a is node else a)
            user.kwargs = fx.node.map_aggregate(user.kwargs, lambda a: result if a is node else a)


class _Writer:
    """Emits one recurrent call's written-out operations through fx proxies."""

    def __init__(
        self,
        gm: fx.GraphModule,
        tracer: Any,
        node: fx.Node,
        module: nn.LSTM | nn.GRU,
        name: str,
        steps: int,
        time_dim: int,
        batch_dim: int,
    ) -> None:
        self.gm, self.tracer, self.module, self.name = gm, tracer, module, name
        self.path = str(node.target)
        self.steps, self.time_dim, self.batch_dim = steps, time_dim, batch_dim
        self.directions = 2 if module.bidirectional else 1

    def proxy(self, value: Any) -> Any:
        return fx.Proxy(value, self.tracer) if isinstance(value, fx.Node) else value

    def call(self, kind: str, target: Any, *args: Any, **kwargs: Any) -> Any:
        return self.tracer.create_proxy(kind, target, args, kwargs)

    def tensor(self, attribute: str) -> Any:
        if getattr(self.module, attribute, None) is None:
            return None
        return self.call("get_attr", f"{self.path}.{attribute}")

    def zeros(self, x: Any, size: int) -> Any:
        # A constant of the graph: computed from x's shape, dtype and device only.
        return self.call(
            "call_function",
            torch.zeros,
            x.size(self.batch_dim),
            size,
            dtype=x.dtype,
            device=x.device,
        )

    def zero_signal(self, x: Any, size: int) -> Any:
        """A zero state computed as ``0 * x``: a signal of value 0 rather than a constant.
        In the GRU's ``r * (W_hn h + b_hn)`` a constant second factor would make the
        product a scaling of the gate ``r``, through which relevance would pass into the
        gate; as a product of two signals, the gate rule holds ``r`` and the bias absorbs
        the share (Arras et al.'s bias_factor 0). Its value, gradient and relevance are 0."""
        first = x.select(self.time_dim, 0).narrow(-1, 0, 1) * 0.0
        return first.expand(-1, size)

    def initial(self, state: Any, layer: int, direction: int) -> Any:
        return None if state is None else state[layer * self.directions + direction]

    def layers(self, x: Any, initial: Any, cell_step: Any) -> tuple[Any, list]:
        """Run ``cell_step(x_t, carried, layer, direction) -> carried`` over the layers and
        directions from ``initial(layer, direction)``: the last layer's outputs (as the
        module returns them) and each layer and direction's last state, in torch's order."""
        last: list[Any] = []
        for layer in range(self.module.num_layers):
            per_direction = []
            slices = self.call("call_function", time_steps, x, self.steps, self.time_dim, self.name)
            for direction in range(self.directions):
                carried = initial(layer, direction)
                outputs: list[Any] = [None] * self.steps
                order = range(self.steps) if direction == 0 else reversed(range(self.steps))
                for t in order:
                    carried = cell_step(slices[t], carried, layer, direction)
                    outputs[t] = carried[0] if isinstance(carried, tuple) else carried
                last.append(carried)
                per_direction.append(torch.stack(outputs, dim=self.time_dim))
            x = per_direction[0] if len(per_direction) == 1 else torch.cat(per_direction, -1)
        return x, last

    # -- LSTM ---------------------------------------------------------------------------
    def lstm(self, values: dict[str, Any]) -> tuple[Any, tuple[Any, Any]]:
        module = self.module
        x = self.proxy(values["input"])
        hx = values.get("hx")
        if isinstance(hx, tuple | list):
            h0, c0 = (self.proxy(v) for v in hx)
        elif isinstance(hx, fx.Node):
            h0, c0 = self.proxy(hx)[0], self.proxy(hx)[1]
        else:
            h0 = c0 = None
        hidden = module.proj_size or module.hidden_size
        cells = {
            (layer, direction): self.lstm_cell(layer, direction)
            for layer in range(module.num_layers)
            for direction in range(self.directions)
        }

        def initial(layer: int, direction: int) -> tuple[Any, Any]:
            h = self.initial(h0, layer, direction)
            c = self.initial(c0, layer, direction)
            h = self.zeros(x, hidden) if h is None else h
            c = self.zeros(x, module.hidden_size) if c is None else c
            return h, c

        def step(x_t: Any, carried: tuple[Any, Any], layer: int, direction: int) -> tuple:
            h, c = carried
            gates = self.call("call_module", cells[layer, direction], torch.cat([x_t, h], -1))
            parts = gates.chunk(4, -1)
            i, f, g, o = parts[0], parts[1], parts[2], parts[3]
            i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
            c = f * c + i * torch.tanh(g)
            h = o * torch.tanh(c)
            if module.proj_size:
                h = F.linear(h, self.tensor(f"weight_hr_l{layer}{_suffix(direction)}"))
            return h, c

        output, last = self.layers(x, initial, step)
        h_n = torch.stack([h for h, _ in last], 0)
        c_n = torch.stack([c for _, c in last], 0)
        return output.node, (h_n.node, c_n.node)

    def lstm_cell(self, layer: int, direction: int) -> str:
        """The target of one layer and direction's ``[W_ih W_hh]`` linear layer, computed
        from the module's tensors (cached until they change) and shared by every step."""
        module, suffix = self.module, _suffix(direction)
        w_ih = getattr(module, f"weight_ih_l{layer}{suffix}")
        w_hh = getattr(module, f"weight_hh_l{layer}{suffix}")
        b_ih = getattr(module, f"bias_ih_l{layer}{suffix}", None) if module.bias else None
        b_hh = getattr(module, f"bias_hh_l{layer}{suffix}", None) if module.bias else None

        def compute() -> tuple[torch.Tensor, torch.Tensor | None]:
            weight = torch.cat([w_ih, w_hh], 1)
            return weight, None if b_ih is None else b_ih + b_hh

        with torch.device("meta"):
            plain = nn.Linear(w_ih.shape[1] + w_hh.shape[1], w_ih.shape[0], bias=module.bias)
        sources = [t for t in (w_ih, w_hh, b_ih, b_hh) if t is not None]
        cell = canonize._computed_layer(plain, compute, sources)
        return canonize.install(self.gm, cell, f"{self.name}.l{layer}{suffix}")

    # -- GRU ----------------------------------------------------------------------------
    def gru(self, values: dict[str, Any]) -> tuple[Any, Any]:
        module = self.module
        x = self.proxy(values["input"])
        h0 = self.proxy(values.get("hx"))
        hidden = module.hidden_size

        def initial(layer: int, direction: int) -> Any:
            h = self.initial(h0, layer, direction)
            return self.zero_signal(x, hidden) if h is None else h

        def step(x_t: Any, h: Any, layer: int, direction: int) -> Any:
            suffix = f"l{layer}{_suffix(direction)}"
            gi = F.linear(x_t, self.tensor(f"weight_ih_{suffix}"), self.tensor(f"bias_ih_{suffix}"))
            gh = F.linear(h, self.tensor(f"weight_hh_{suffix}"), self.tensor(f"bias_hh_{suffix}"))
            xi, gh_parts = gi.chunk(3, -1), gh.chunk(3, -1)
            r = torch.sigmoid(xi[0] + gh_parts[0])
            z = torch.sigmoid(xi[1] + gh_parts[1])
            n = torch.tanh(xi[2] + r * gh_parts[2])
            return (1 - z) * n + z * h

        output, last = self.layers(x, initial, step)
        return output.node, torch.stack(last, 0).node


def _suffix(direction: int) -> str:
    return "_reverse" if direction else ""
