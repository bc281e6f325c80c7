"""ModelGraph: the captured, canonicalised graph of a model plus what each node is."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from innspect.errors import NotAnalyzableModelError
from innspect.graph import canonize
from innspect.graph.capture import GRAPH_LOCK, capture
from innspect.graph.kinds import (
    Kind,
    classify,
    is_plain_relu,
    is_relu,
    op_name,
    operation_name,
)
from innspect.graph.linear_ops import LinearOp, linear_op_from_function, linear_op_from_module


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
        Optional input, used when torch.fx fails and torch.export is tried, and to learn
        whether a Linear followed by BatchNorm1d sees 2-D data (only then is it folded).
    fuse_batchnorm
        Fold each BatchNorm that directly follows a linear layer into a copy of that layer.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor | None = None,
        fuse_batchnorm: bool = False,
    ) -> None:
        self.model = model
        # The graph's layers are eval views of the model's (capture.eval_view): running them
        # never reads or changes the user's training flags.
        self.module = capture(model, example_input)
        self.module.training = False
        canonize.remove_inplace(self.module)
        self.fused: dict[str, list[str]] = {}
        if fuse_batchnorm:
            with GRAPH_LOCK.shared():  # it may run one forward
                self.fused = canonize.fuse_batchnorm(self.module, example_input)
        self.module.graph.lint()
        self.module.recompile()
        self._build_infos()

    # -- construction -------------------------------------------------------------------
    def _build_infos(self) -> None:
        graph = self.module.graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotAnalyzableModelError(
                f"the model's forward takes {len(placeholders)} inputs; innspect analyzes models "
                "with exactly one input tensor (wrap the model to bind the others)"
            )
        self.input_node = placeholders[0]
        output_nodes = [n for n in graph.nodes if n.op == "output"]
        result = output_nodes[0].args[0]
        if isinstance(result, tuple | list) and len(result) == 1:
            result = result[0]  # torch.export wraps a single output in a tuple
        if not isinstance(result, fx.Node):
            raise NotAnalyzableModelError(
                "the model returns a tuple, list or dict; innspect needs a model returning one "
                "tensor (wrap it, e.g. `lambda x: model(x)[0]` inside an nn.Module)"
            )
        self.output_node = result
        self.infos: dict[fx.Node, NodeInfo] = {}
        module_uses: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "output":
                continue
            module = self.module.get_submodule(node.target) if node.op == "call_module" else None
            args = _node_args(node)
            depends = node.op == "placeholder" or any(
                self.infos[a].depends_on_input for a in args if a in self.infos
            )
            kind = classify(node, module) if depends or node.op == "placeholder" else Kind.CONSTANT
            signal_inputs = list(
                dict.fromkeys(
                    a
                    for a in args
                    if self.infos[a].depends_on_input and not self.infos[a].is_metadata
                )
            )
            dependent_args = [a for a in args if self.infos[a].depends_on_input]
            # Shape queries (x.shape, x.size(0) and what is computed from them) depend on the
            # input but never carry a signal.
            metadata = depends and (
                _is_shape_query(node)
                or (bool(dependent_args) and all(self.infos[a].is_metadata for a in dependent_args))
            )
            kind = _refine_kind(kind, node, len(args), len(dependent_args))
            name = self._display_name(node, module_uses)
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
        self.free_after = _last_uses(self.nodes, self.output_node)
        self._nonnegative: dict[fx.Node, bool] = {}

    def _display_name(self, node: fx.Node, module_uses: dict[str, int]) -> str:
        if node.op == "placeholder":
            return "input"
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
        """The LinearOp of a linear or batchnorm node (built once)."""
        if info.linear_op is None:
            if info.module is not None:
                info.linear_op = linear_op_from_module(info.module)
            else:
                info.linear_op = self._functional_linear_op(info)
        return info.linear_op

    def _functional_linear_op(self, info: NodeInfo) -> LinearOp:
        node = info.node
        if node.op != "call_function" or "batch_norm" in op_name(node):
            raise NotAnalyzableModelError(
                f"node {info.describe()}: innspect's rules need this layer as a module "
                "(nn.Linear, nn.Conv2d, nn.BatchNorm2d...)"
            )

        def constant(arg: fx.Node) -> torch.Tensor:
            if arg.op != "get_attr":
                raise NotAnalyzableModelError(
                    f"node {info.describe()}: its weights are computed in forward ('{arg.name}'); "
                    "innspect's rules need them as parameters or buffers"
                )
            value = self.module
            for part in str(arg.target).split("."):
                value = getattr(value, part)
            return value

        args = fx.node.map_arg(node.args[1:], constant)
        kwargs = fx.node.map_arg(node.kwargs, constant)
        return linear_op_from_function(node.target, (None, *args), kwargs)

    def linear_nodes(self) -> list[NodeInfo]:
        """Linear layers in execution order (the order per-layer rule lists refer to)."""
        return [i for i in self.nodes if i.kind is Kind.LINEAR]

    def input_layer_nodes(self) -> set[fx.Node]:
        """Linear layers that see the model input directly, looking through reshapes."""
        found: set[fx.Node] = set()
        frontier = [self.input_node]
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
            elif info.is_relu:
                result = True
            elif info.kind in _SIGN_PRESERVING and info.signal_inputs:
                result = op_name(node) not in ("sub", "neg") and all(
                    self.is_nonnegative(n) for n in info.signal_inputs
                )
            else:
                result = False
            self._nonnegative[node] = result
        return self._nonnegative[node]

    def inplace_relus(self) -> set[fx.Node]:
        """ReLU nodes a freeing forward may run in place, as the model's own in-place ReLUs do.

        The ReLU must be the only reader of its input, and the input must come from a layer
        whose autograd backward does not read its output (linear, batchnorm, a sum): then
        overwriting it is safe with and without autograd, and saves a full-size allocation.
        """
        if self._inplace_relus is None:
            self._inplace_relus = set()
            for info in self.nodes:
                sources = info.node.all_input_nodes
                if (
                    not is_plain_relu(info.node, info.module)
                    or len(sources) != 1
                    or info.node is self.output_node
                ):
                    continue
                source = self.infos.get(sources[0])
                if (
                    source is not None
                    and len(source.node.users) == 1
                    and source.node is not self.output_node
                    and (
                        source.kind in (Kind.LINEAR, Kind.BATCHNORM)
                        or (
                            source.kind is Kind.LINEAR_NO_PARAM
                            and op_name(source.node) in ("add", "sub")
                        )
                    )
                ):
                    self._inplace_relus.add(info.node)
        return self._inplace_relus

    def bottleneck_nodes(self) -> set[fx.Node]:
        """Nodes that every path from the input to the output passes through."""
        if self._bottlenecks is None:
            self._bottlenecks = bottlenecks_in_order(self.nodes, self.output_node)
        return self._bottlenecks

    def output_activation(self) -> NodeInfo | None:
        """The final softmax / log-softmax / sigmoid, looking back through identities."""
        info = self.infos[self.output_node]
        while info.kind is Kind.IDENTITY and info.signal_inputs:
            info = self.infos[info.signal_inputs[0]]
        if info.kind is Kind.OUTPUT_ACTIVATION:
            return info
        if info.kind is Kind.ACTIVATION and info.operation.lower() in {"sigmoid", "logsigmoid"}:
            return info
        return None


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _refine_kind(kind: Kind, node: fx.Node, n_args: int, n_dependent: int) -> Kind:
    """Products and sums where only one factor/term depends on the input are scales/shifts."""
    name = op_name(node).rstrip("_") if node.op in ("call_function", "call_method") else ""
    if kind is Kind.OTHER and name in _PRODUCTS and n_dependent == 1:
        return Kind.SCALE
    if kind is Kind.LINEAR_NO_PARAM and name in _SUMS and n_dependent == 1 and n_args > 1:
        # x + c with c a constant tensor: a shift, through which relevance passes unchanged.
        return Kind.IDENTITY
    return kind


_SIGN_PRESERVING = {Kind.MAX_POOL, Kind.REARRANGE, Kind.IDENTITY, Kind.LINEAR_NO_PARAM}
_PRODUCTS = {"mul", "div", "truediv"}
_SUMS = {"add", "sub"}


def bottlenecks_in_order(nodes: list[NodeInfo], output: fx.Node) -> set[fx.Node]:
    """Nodes every path from the input to ``output`` passes through (cut vertices).

    Walking in topological order, a node is a bottleneck when no edge from an earlier node
    is still waiting to be consumed at the moment the node is reached.
    """
    ancestors = _ancestors(output)
    signal_nodes = [
        i for i in nodes if i.depends_on_input and not i.is_metadata and i.node in ancestors
    ]
    members = {i.node for i in signal_nodes}
    pending = 0
    found: set[fx.Node] = set()
    for info in signal_nodes:
        pending -= len(info.signal_inputs)
        if pending == 0:
            found.add(info.node)
        pending += sum(1 for u in info.node.users if u in members)
    return found


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "dtype", "device", "ndim")
    return node.op == "call_method" and node.target in ("size", "dim", "numel")


def _last_uses(nodes: list[NodeInfo], output: fx.Node) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values that can be dropped once it has run (a plain forward)."""
    last_user: dict[fx.Node, fx.Node] = {}
    for info in nodes:
        for arg in info.node.all_input_nodes:
            last_user[arg] = info.node
    free_after: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last_user.items():
        if value is not output:
            free_after.setdefault(user, []).append(value)
    return free_after


def _ancestors(node: fx.Node) -> set[fx.Node]:
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return seen
