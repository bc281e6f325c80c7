"""ModelGraph: the captured, canonicalised graph of a model plus what each node is.

One class (about 580 lines with ``NodeInfo``): every layer above asks the graph about its
nodes (kind, signal inputs, whether a value is non-negative, the layer that follows a
linear one, the bottlenecks, each layer's ``LinearOp``), and the answers share the facts
built once at capture. What the model returns is ``graph/outputs.py``, what a freeing
forward may free or overwrite ``graph/liveness.py``.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree

from innspect.errors import InputError, NotAnalyzableModelError, OutputSelectionError
from innspect.graph import activation_patterns, canonize, liveness, outputs, recurrent
from innspect.graph.call import CallSpec, bind_call
from innspect.graph.capture import capture
from innspect.graph.linear_ops import LinearOp, linear_op_from_function, linear_op_from_module
from innspect.graph.lock import GRAPH_LOCK
from innspect.graph.ops import (
    Kind,
    classify,
    is_nonnegative_op,
    is_product,
    is_relu,
    is_shape_query,
    is_sum,
    metadata_arguments,
    op_name,
    operation_name,
    selection_condition,
)
from innspect.graph.views import unwrap


@dataclass
class NodeInfo:
    """What the reverse pass needs to know about one node of the graph."""

    node: fx.Node
    name: str  # the key used for layer-wise relevances: module path, or fx node name
    kind: Kind
    module: nn.Module | None
    operation: str
    is_relu: bool
    depends_on_input: bool
    is_metadata: bool  # a shape or size derived from the input: never carries a signal
    signal_inputs: list[fx.Node] = field(default_factory=list)  # unique input-dependent args
    fused: list[str] = field(default_factory=list)  # names of layers folded into this one
    linear_op: LinearOp | None = None
    linear_op_stamp: tuple = ()  # canonize.stamp of the tensors linear_op was built from

    def describe(self) -> str:
        """'name' (Operation) for messages."""
        return f"'{self.name}' ({self.operation})"


class ModelGraph:
    """A model captured as a graph, canonicalised for the reverse pass.

    Parameters
    ----------
    model
        The user's model. It is never modified: the graph shares its layers, and
        canonicalisation replaces layers only inside the graph's own module tree.
    example_input
        Optional input (a tensor, or one value per name of ``call.names``), used when
        torch.fx fails and torch.export is tried, and to learn whether a Linear followed by
        BatchNorm1d sees 2-D data (only then is it folded).
    fuse_batchnorm
        Fold each BatchNorm that directly follows a linear layer into a copy of that layer;
        ``refresh`` remakes the folded values after the model's tensors change.
    call
        Which forward arguments are inputs (default: every parameter without a default).
    attribute_to
        Names of the inputs (forward parameter names) or graph nodes (``NodeInfo.name``)
        that receive attributions; the signal flows from them. Default: every input.
    output
        Which returned tensor is explained when the model returns a tuple, dict or
        dataclass: an index, a key, a path tuple, or a callable on the returned structure.
        Default: the only tensor, else the one named ``logits``.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor | Sequence[Any] | None = None,
        fuse_batchnorm: bool = False,
        *,
        call: CallSpec | None = None,
        attribute_to: Sequence[str] | None = None,
        output: Any = None,
    ) -> None:
        # Weakly: graphs are shared per model (graph/cache.py), and a registry entry must
        # not keep its model alive. Whoever analyses with the graph holds the model.
        self._model = weakref.ref(model)
        self.call = call if call is not None else bind_call(unwrap(model))
        # The graph's layers are eval views of the model's (views.eval_view): running them
        # never reads or changes the user's training flags.
        self.module = capture(model, example_input, self.call)
        self.module.training = False
        canonize.remove_inplace(self.module)
        canonize.addmm_as_linear(self.module)
        canonize.conv_subclasses_as_layers(self.module)
        canonize.computed_weights_as_layers(self.module)
        activation_patterns.replace_activations(self.module)
        self.fused: dict[str, list[str]] = {}
        self.folds: list[canonize.Fold] = []
        self._match_placeholders()
        self._fixed_sizes = _fixed_sizes(self.input_nodes)
        example = None
        if example_input is not None:
            given = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
            example = self.placeholder_values(given)
        # LSTM / GRU written out over the example's time steps (graph/recurrent.py); where
        # one takes (T, N, F), the model's first axis may be time: compare it too.
        layers = [
            self.module.get_submodule(n.target) for n in recurrent.recurrent_nodes(self.module)
        ]
        self._first_axis = 0 if any(not layer.batch_first for layer in layers) else 1
        self.recurrent_steps: dict[str, int] = {}
        if layers and example is not None:
            with GRAPH_LOCK.shared():  # one forward on the example to learn the lengths
                self.recurrent_steps = recurrent.unroll_recurrent(self.module, example)
        self._recurrent_left = bool(recurrent.recurrent_nodes(self.module))
        self._example_shapes = _shapes_from(example_input, self._first_axis)
        if fuse_batchnorm:
            with GRAPH_LOCK.shared():  # it may run one forward
                self.fused, self.folds = canonize.fuse_batchnorm(self.module, example)
        self.module.graph.lint()
        self.module.recompile()
        self._choose_output(output)
        self._build_infos(attribute_to)

    @property
    def model(self) -> nn.Module:
        """The user's model the graph was captured from."""
        model = self.live_model()
        if model is None:
            raise AssertionError("the model of this graph was freed while the graph is in use")
        return model

    def live_model(self) -> nn.Module | None:
        """The user's model, or None once nothing else holds it (the graph holds it weakly)."""
        return self._model()

    def serves(self, values: torch.Tensor | Sequence[Any]) -> bool:
        """Whether this graph computes the model on ``values`` (the inputs): always, unless
        torch.export captured it with sizes other than the inputs' (it keeps the batch axis
        symbolic, but a sequence length or image size is fixed), or recurrent layers were
        written out over the example's time steps (then inputs shaped as the example, batch
        size aside where every such layer is batch-first) or left whole for want of an
        example (then none: capture again with the input)."""
        if self._recurrent_left:
            return False
        given = (values,) if isinstance(values, torch.Tensor) else tuple(values)
        for value, (rank, fixed) in zip(given, self._fixed_sizes, strict=False):
            if rank is not None and isinstance(value, torch.Tensor):
                if value.dim() != rank or any(value.shape[a] != size for a, size in fixed):
                    return False  # torch.export specialised the graph to other sizes
        shapes = _shapes_from(values, self._first_axis)
        return not self.recurrent_steps or shapes == self._example_shapes

    def stale_folds(self) -> list[canonize.Fold]:
        """The folded layers whose model tensors changed since their values were made (an
        optimizer step, ``load_state_dict``)."""
        return [fold for fold in self.folds if fold.stale()]

    def refresh(self) -> None:
        """Follow the model's changes since capture (call once before each use): remake
        the folded values whose model tensors changed, and drop each layer op built from
        tensors since replaced or written (batch norm scale and shift are computed from
        them); ``linear_op`` builds it again when asked."""
        if self.folds and self.stale_folds():
            with GRAPH_LOCK.exclusive():  # not while a pass reads the folded values
                for fold in self.stale_folds():
                    fold.refresh()
        for info in self.nodes:
            if info.linear_op is not None and info.linear_op_stamp != self._linear_op_stamp(info):
                info.linear_op = None

    # -- construction -------------------------------------------------------------------
    def _match_placeholders(self) -> None:
        """Pair the graph's placeholders with the call's inputs and bound defaults."""
        placeholders = [n for n in self.module.graph.nodes if n.op == "placeholder"]
        names = self.call.names
        bound = dict(self.call.bound)
        self.input_nodes: list[fx.Node] = []
        self.bound_values: dict[fx.Node, Any] = {}
        for node in placeholders:  # fx's *args / **kwargs: empty, never inputs
            if str(node.target).startswith("**"):
                self.bound_values[node] = {}
            elif str(node.target).startswith("*"):
                self.bound_values[node] = ()
        placeholders = [n for n in placeholders if n not in self.bound_values]
        by_target = {str(n.target): n for n in placeholders}
        if names and all(name in by_target for name in names):
            # Placeholders named after the parameters (fx, torch.export): the inputs by name;
            # the others are bound (fx names a fixed one ``name_1``).
            self.input_nodes = [by_target[name] for name in names]
            for node in placeholders:
                if node in self.input_nodes:
                    continue
                target = str(node.target)
                stripped = re.sub(r"_\d+$", "", target)
                if target in bound:
                    self.bound_values[node] = bound[target]
                elif stripped in bound:
                    self.bound_values[node] = bound[stripped]
                elif node.args:
                    self.bound_values[node] = node.args[0]
                else:
                    raise InputError(
                        f"the model's graph has an input {target!r} that was not given "
                        f"(given: {', '.join(names)})"
                    )
        elif len(placeholders) == len(names) + len(bound) and self.call.parameters:
            # fx: one placeholder per forward parameter, bound ones included.
            order = [p for p in self.call.parameters if p in bound or p in names]
            for node, name in zip(placeholders, order, strict=True):
                if name in bound:
                    self.bound_values[node] = bound[name]
                else:
                    self.input_nodes.append(node)
        elif len(placeholders) == len(names):  # torch.export: the passed tensors only
            self.input_nodes = placeholders
        else:
            extra = [n for n in placeholders[len(names) :] if not n.args]
            if len(placeholders) < len(names) or extra:
                raise InputError(
                    f"the model's graph takes {len(placeholders)} inputs "
                    f"({', '.join(n.name for n in placeholders)}) but {len(names)} were given "
                    f"({', '.join(names)})"
                )
            # A GraphModule given by the user: trailing placeholders keep their defaults.
            self.input_nodes = placeholders[: len(names)]
            for node in placeholders[len(names) :]:
                self.bound_values[node] = node.args[0]
        self.input_names: dict[fx.Node, str] = dict(zip(self.input_nodes, names, strict=True))

    def placeholder_values(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """Values for every placeholder in graph order: the inputs and the bound defaults."""
        by_node = dict(zip(self.input_nodes, values, strict=True))
        return tuple(
            by_node[n] if n in by_node else self.bound_values.get(n)
            for n in self.module.graph.nodes
            if n.op == "placeholder"
        )

    def feed(self, values: torch.Tensor | Sequence[Any]) -> dict[fx.Node, Any]:
        """``{input placeholder: value}`` from the inputs in ``call.names`` order."""
        if isinstance(values, torch.Tensor):
            values = (values,)
        if len(values) != len(self.input_nodes):
            raise InputError(
                f"the model's graph takes {len(self.input_nodes)} inputs "
                f"({', '.join(self.call.names)}), got {len(values)}"
            )
        return dict(zip(self.input_nodes, values, strict=True))

    def _choose_output(self, output: Any) -> None:
        """Find the returned tensors and the one(s) the explanation starts from."""
        output_node = next(n for n in self.module.graph.nodes if n.op == "output")
        result = output_node.args[0]
        spec = getattr(self.module, "_out_spec", None)
        if spec is not None and isinstance(result, tuple | list):
            # torch.export flattens the returned structure; its spec rebuilds dict keys.
            result = _pytree.tree_unflatten(list(result), spec)
        if isinstance(result, tuple | list) and len(result) == 1:
            result = result[0]
        self.output_structure = result
        self.output_leaves = outputs.graph_leaves(result)
        self.output_fn: Callable[[Any], torch.Tensor] | None = None
        if not self.output_leaves:
            raise NotAnalyzableModelError("the model returns no tensor computed by its graph")
        if callable(output):
            self.output_fn = output
            self.output_node: fx.Node | None = None
            self.output_nodes = list(dict.fromkeys(n for _, n in self.output_leaves))
            return
        self.output_node = outputs.choose(self.output_leaves, output)
        self.output_nodes = [self.output_node]

    def output_choices(self) -> str:
        """The valid ``output=`` values, for messages."""
        return outputs.choices(self.output_leaves)

    def output_value(self, values: Any) -> torch.Tensor:
        """The explained output from node values (``values[node]``), tracking autograd."""
        if self.output_node is not None:
            return values[self.output_node]
        assert self.output_fn is not None
        result = self.output_fn(outputs.rebuild(self.output_structure, values))
        if not isinstance(result, torch.Tensor) or result.dim() == 0:
            got = (
                f"shape {tuple(result.shape)}"
                if isinstance(result, torch.Tensor)
                else type(result).__name__
            )
            raise OutputSelectionError(
                f"the output= callable must return a batch-first tensor (N, ...), got {got}"
            )
        return result

    def _resolve_sources(
        self, attribute_to: Sequence[str] | None, names: dict[fx.Node, str]
    ) -> list[fx.Node]:
        self.source_names: dict[fx.Node, str] = {}
        if attribute_to is None:
            self.source_names = dict(self.input_names)
            return list(self.input_nodes)
        by_input = {name: node for node, name in self.input_names.items()}
        by_name = {name: node for node, name in names.items()}
        # torch.export inlines modules (an nn.Embedding becomes an aten.embedding node) but
        # records where each node came from: a module path names the module's last node,
        # its output.
        by_module = {}
        for node in names:
            stack = node.meta.get("nn_module_stack")
            if stack:
                by_module[list(stack.values())[-1][0]] = node
        sources = []
        for name in attribute_to:
            node = by_input.get(name) or by_name.get(name) or by_module.get(name)
            if node is None:
                raise InputError(
                    f"attribute_to={name!r} names neither an input "
                    f"({', '.join(self.call.names)}) nor a node of the model's graph; nodes "
                    f"include: {', '.join(list(by_name)[:40])}"
                )
            sources.append(node)
            self.source_names.setdefault(node, name)
        return list(dict.fromkeys(sources))

    def _build_infos(self, attribute_to: Sequence[str] | None) -> None:
        graph = self.module.graph
        module_uses: dict[str, int] = {}
        names = {
            node: self._display_name(node, module_uses)
            for node in graph.nodes
            if node.op != "output"
        }
        self.source_nodes = self._resolve_sources(attribute_to, names)
        sources = set(self.source_nodes)
        # The first attributed node (the input of a one-input model): what wave-1 code reads.
        self.input_node = self.source_nodes[0] if self.source_nodes else self.input_nodes[0]
        self.infos: dict[fx.Node, NodeInfo] = {}
        for node in graph.nodes:
            if node.op == "output":
                continue
            module = self.module.get_submodule(node.target) if node.op == "call_module" else None
            args = _node_args(node)
            # Inputs and nodes that get no attribution (token ids, masks) are constants:
            # no signal flows into them and rules treat them as fixed parameters.
            depends = node in sources or any(
                self.infos[a].depends_on_input for a in args if a in self.infos
            )
            kind = classify(node, module) if depends or node.op == "placeholder" else Kind.CONSTANT
            # Arguments read for their dtype or shape only (a cast's ``type_as(y)``).
            read_for_metadata = metadata_arguments(node, module) if depends else set()
            dependent_args = [a for a in args if self.infos[a].depends_on_input]
            # A shape-derived operand (metadata) is a constant for the products and sums.
            signal_args = [
                a
                for a in dependent_args
                if not self.infos[a].is_metadata and a not in read_for_metadata
            ]
            signal_inputs = list(dict.fromkeys(signal_args))
            # Shape queries (x.shape, x.size(0) and what is computed from them) depend on the
            # input but never carry a signal.
            metadata = depends and (
                is_shape_query(node) or (bool(dependent_args) and not signal_args)
            )
            kind = _refine_kind(kind, node, len(args), len(signal_args))
            if kind is Kind.IDENTITY and op_name(node) == "where":
                condition = selection_condition(node)
                if condition is None or condition in signal_args:
                    # It selects by the signal (where(x > 0, x, 0) is an activation): no rule.
                    kind = Kind.OTHER
            name = names[node]
            self.infos[node] = NodeInfo(
                node=node,
                name=name,
                kind=kind,
                module=module,
                operation=operation_name(node, module),
                is_relu=is_relu(node, module),
                depends_on_input=depends,
                is_metadata=metadata,
                signal_inputs=signal_inputs,
                fused=self.fused.get(str(node.target), []) if node.op == "call_module" else [],
            )
        self.nodes: list[NodeInfo] = list(self.infos.values())
        self.by_name: dict[str, NodeInfo] = {info.name: info for info in self.nodes}
        self._bottlenecks: set[fx.Node] | None = None
        self._inplace_relus: set[fx.Node] | None = None
        self._inplace_adds: dict[fx.Node, int] | None = None
        self.free_after = liveness.last_uses(self.nodes, set(self.output_nodes) | sources)
        self._nonnegative: dict[fx.Node, bool] = {}

    def _display_name(self, node: fx.Node, module_uses: dict[str, int]) -> str:
        if node.op == "placeholder":
            # One input keeps wave 1's key "input"; several are named by parameter.
            if len(self.input_nodes) == 1 and node in self.input_names:
                return "input"
            return self.input_names.get(node, node.name)
        if node.op != "call_module":
            return node.name
        target = str(node.target)
        original = canonize.original_target(self.module, target)
        uses = module_uses.get(original, 0)
        module_uses[original] = uses + 1
        # A module called twice (torchvision's shared ReLU) gets one key per call.
        return original if uses == 0 else f"{original}:{uses}"

    # -- queries ------------------------------------------------------------------------
    def linear_op(self, info: NodeInfo) -> LinearOp:
        """The LinearOp of a linear or batchnorm node (built once, until ``refresh`` finds
        the layer's tensors changed)."""
        if info.linear_op is None:
            # Stamped before it is built: a change while it is built (an optimizer step in
            # another thread) then shows as stale at the next refresh, not as up to date.
            source_stamp = self._linear_op_stamp(info)
            if info.module is not None:
                op = linear_op_from_module(info.module)
            else:
                args, kwargs = self._functional_linear_args(info)
                op = linear_op_from_function(info.node.target, (None, *args), kwargs)
            info.linear_op, info.linear_op_stamp = op, source_stamp
        return info.linear_op

    def _linear_op_stamp(self, info: NodeInfo) -> tuple:
        """``canonize.stamp`` of the tensors a node's LinearOp is built from."""
        if info.module is None:
            return canonize.stamp(self._functional_linear_args(info))
        module = info.module
        sources = (*module._parameters.values(), *module._buffers.values())
        return canonize.stamp((sources, getattr(module, "eps", None)))

    def _functional_linear_args(self, info: NodeInfo) -> tuple[tuple, dict]:
        """The constant arguments (weight, bias, statistics) of a functional linear node."""
        node = info.node
        if node.op != "call_function" or (
            "batch_norm" in op_name(node) and node.target is not torch.nn.functional.batch_norm
        ):
            raise NotAnalyzableModelError(
                f"node {info.describe()}: innspect's rules need this layer as a module "
                "(nn.Linear, nn.Conv2d, nn.BatchNorm2d...)"
            )

        def constant(arg: fx.Node) -> torch.Tensor:
            if arg.op == "call_function" and arg.target is torch.t and len(arg.args) == 1:
                # canonize.addmm_as_linear's transposed weight: a view of the parameter.
                return constant(arg.args[0]).t()
            if arg.op != "get_attr":
                raise NotAnalyzableModelError(
                    f"node {info.describe()}: its weights are computed in forward ('{arg.name}'); "
                    "innspect's rules need them as parameters or buffers"
                )
            value = self.module
            for part in str(arg.target).split("."):
                value = getattr(value, part)
            return value

        return fx.node.map_arg(node.args[1:], constant), fx.node.map_arg(node.kwargs, constant)

    def linear_nodes(self) -> list[NodeInfo]:
        """Linear layers in execution order (the order per-layer rule lists refer to)."""
        return [i for i in self.nodes if i.kind is Kind.LINEAR]

    def input_layer_nodes(self) -> set[fx.Node]:
        """Linear layers that see a model input directly, looking through reshapes."""
        found: set[fx.Node] = set()
        frontier = list(self.source_nodes)
        seen: set[fx.Node] = set()
        while frontier:
            node = frontier.pop()
            for user in node.users:
                info = self.infos.get(user)
                if info is None or user in seen:
                    continue
                seen.add(user)
                if info.kind is Kind.LINEAR:
                    found.add(user)
                elif info.kind in (Kind.REARRANGE, Kind.IDENTITY):
                    frontier.append(user)
        return found

    def following_activation(self, info: NodeInfo) -> NodeInfo | None:
        """The activation that consumes this node's output, if it is the node's only user."""
        users = list(info.node.users)
        while len(users) == 1:
            user_info = self.infos.get(users[0])
            if user_info is None:
                return None
            if user_info.kind is Kind.ACTIVATION:
                return user_info
            if user_info.kind not in (Kind.IDENTITY, Kind.BATCHNORM):
                return None
            users = list(users[0].users)
        return None

    def is_nonnegative(self, node: fx.Node) -> bool:
        """Whether the node's output is >= 0 by construction (a ReLU, or pooling/reshaping
        or concatenating such outputs), so rules can skip work for negative inputs."""
        if node not in self._nonnegative:
            info = self.infos.get(node)
            if info is None:
                result = False
            elif is_nonnegative_op(node, info.module):
                result = True
            elif info.kind in _SIGN_PRESERVING and info.signal_inputs:
                # a selection or fill may put a negative constant (an attention mask's -inf)
                result = op_name(node) not in ("sub", "neg", "where", "masked_fill") and all(
                    self.is_nonnegative(n) for n in info.signal_inputs
                )
            else:
                result = False
            self._nonnegative[node] = result
        return self._nonnegative[node]

    def inplace_relus(self) -> set[fx.Node]:
        """ReLU nodes a freeing forward may run in place (``liveness.inplace_relus``)."""
        if self._inplace_relus is None:
            self._inplace_relus = liveness.inplace_relus(self)
        return self._inplace_relus

    def inplace_adds(self) -> dict[fx.Node, int]:
        """Additions a freeing forward may run in place, with the term each may overwrite
        (``liveness.inplace_adds``)."""
        if self._inplace_adds is None:
            self._inplace_adds = liveness.inplace_adds(self)
        return self._inplace_adds

    def bottleneck_nodes(self) -> set[fx.Node]:
        """Nodes that every path from the input to the output passes through."""
        if self._bottlenecks is None:
            self._bottlenecks = bottlenecks_in_order(self.nodes, self.output_nodes)
        return self._bottlenecks

    def output_activation(self, node: fx.Node | None = None) -> NodeInfo | None:
        """The final softmax / softmin / log-softmax / sigmoid of the explained output (or
        of the returned tensor ``node``), looking back through nodes that keep it
        probabilities: identities, shifts, scalings, clamps, logs, selections (``where``)
        and rearrangements, of one tensor or several (``Flatten``, ``100 * softmax(x)``,
        ``softmax(x)[:, :5]``, ``softmax(x).clamp(...)``, ``cat`` of softmaxes). A softmax
        or sigmoid written out (``exp(y) / exp(y).sum()``, ``1 / (1 + exp(-y))``) counts."""
        if node is None:
            node = self.output_node
        if node is None:  # a callable output: the analyzer checks the tensors it reads
            return None
        pending, seen = [node], set()
        while pending:
            info = self.infos[pending.pop()]
            if info.node in seen:
                continue
            seen.add(info.node)
            if info.kind is Kind.OUTPUT_ACTIVATION:
                return info
            operation = bare_operation(info.operation)
            if info.kind is Kind.ACTIVATION and operation in _PROBABILITY_ACTIVATIONS:
                return info
            if self._written_out_probability(info):
                return info
            if info.kind in _KEEPS_ACTIVATION or operation in KEEPS_PROBABILITIES:
                pending.extend(info.signal_inputs)
        return None

    def _written_out_probability(self, info: NodeInfo) -> bool:
        """A division whose denominator is computed from an ``exp`` within a few steps: a
        softmax ``exp(y) / sum(exp(y))`` or a sigmoid ``1 / (1 + exp(-y))`` by hand."""
        if bare_operation(info.operation) not in _DIVISIONS:
            return False
        denominators = info.node.args[1:] if len(info.node.args) > 1 else info.node.args
        frontier = [a for a in denominators if isinstance(a, fx.Node) and a in self.infos]
        for _ in range(3):  # exp -> sum / add -> div, with a negation or a shift between
            if any(bare_operation(self.infos[n].operation) == "exp" for n in frontier):
                return True
            frontier = [a for n in frontier for a in self.infos[n].signal_inputs]
        return False


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Legacy: every submodule in eval mode for the block, each flag restored afterwards.

    It writes the user's ``training`` flags, so it is not thread-safe (docs/reliability.md);
    innspect itself no longer uses it. A captured graph needs nothing (its layers are eval
    views); to call the model itself, call ``views.eval_view(model)``. Kept so that code
    written against it keeps working until it moves to ``eval_view``.
    """
    training = [m for m in model.modules() if m.training]
    try:
        for module in training:
            module.training = False
        yield
    finally:
        for module in training:
            module.training = True


def bare_operation(operation: str) -> str:
    """An operation's name without its namespace: "Tensor.clamp" -> "clamp"."""
    return operation.rpartition(".")[2].lower()


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _refine_kind(kind: Kind, node: fx.Node, n_args: int, n_dependent: int) -> Kind:
    """Products and sums where only one factor/term depends on the input are scales/shifts."""
    if kind is Kind.OTHER and is_product(node) and n_dependent == 1:
        return Kind.SCALE
    if kind is Kind.LINEAR_NO_PARAM and is_sum(node) and n_dependent == 1 and n_args > 1:
        # x + c with c a constant tensor: a shift, through which relevance passes unchanged.
        return Kind.IDENTITY
    return kind


_KEEPS_ACTIVATION = {Kind.IDENTITY, Kind.SCALE, Kind.REARRANGE}
# Element-wise operations after which probabilities are still (monotone functions of) the
# probabilities: a clamp away from 0, a log, a selection between them.
KEEPS_PROBABILITIES = {"clamp", "clip", "clamp_min", "clamp_max", "log", "log2", "log10", "where"}
_PROBABILITY_ACTIVATIONS = {"sigmoid", "logsigmoid", "hardsigmoid"}
_DIVISIONS = {"div", "truediv", "reciprocal", "rtruediv"}
_SIGN_PRESERVING = {Kind.MAX_POOL, Kind.REARRANGE, Kind.IDENTITY, Kind.LINEAR_NO_PARAM}


def bottlenecks_in_order(
    nodes: list[NodeInfo], output: fx.Node | Sequence[fx.Node]
) -> set[fx.Node]:
    """Nodes every path from the input to ``output`` passes through (cut vertices).

    Walking in topological order, a node is a bottleneck when no edge from an earlier node
    is still waiting to be consumed at the moment the node is reached.
    """
    ancestors = _ancestors([output] if isinstance(output, fx.Node) else list(output))
    signal_nodes = [
        i for i in nodes if i.depends_on_input and not i.is_metadata and i.node in ancestors
    ]
    signal_of = {i.node: i.signal_inputs for i in signal_nodes}
    pending = 0
    found: set[fx.Node] = set()
    for info in signal_nodes:
        pending -= len(info.signal_inputs)
        if pending == 0:
            found.add(info.node)
        # Users that read the node as a signal (not a cast's dtype source).
        pending += sum(1 for u in info.node.users if info.node in signal_of.get(u, ()))
    return found


def _ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    stack, seen = list(nodes), set()
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return seen


def _fixed_sizes(nodes: list[fx.Node]) -> list[tuple[int | None, tuple[tuple[int, int], ...]]]:
    """Per input, its rank and the (axis, size) pairs torch.export fixed: its placeholders
    carry fake tensors whose free sizes are symbols. (None, ()) where nothing is fixed (fx's
    placeholders carry no value)."""
    found: list[tuple[int | None, tuple[tuple[int, int], ...]]] = []
    for node in nodes:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            found.append((None, ()))
            continue
        sizes = tuple((axis, size) for axis, size in enumerate(value.shape) if type(size) is int)
        found.append((value.dim(), sizes))
    return found


def _shapes_from(values: Any, axis: int) -> tuple[Any, ...]:
    values = (values,) if isinstance(values, torch.Tensor) else tuple(values or ())
    return tuple(tuple(v.shape[axis:]) if isinstance(v, torch.Tensor) else None for v in values)
