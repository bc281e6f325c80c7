"""``ReverseAnalyzer``: every method computed by a forward record and a reverse walk.

A method says which mapping each node gets (``_mapping``, or a composite), where the walk
starts (``_start_value``: 1 for gradients, the output for relevance) and how the signal at
an input becomes its attribution (``_postprocess``). This class runs it, by one of two
paths: the node-by-node walk (``engine.reverse``), or, when every node maps by its plain
VJP and no per-node option is asked for, one autograd pass (the same walk in C++).
``explain_feed`` is the entry the averaging wrappers call with their points.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import fx, nn

from innspect.analyzers.api import Analyzer, Explanation, no_float_input_message
from innspect.analyzers.plan import Plan, build_plan
from innspect.engine.forward import ForwardRecord, run_forward
from innspect.engine.inputs import ModelInputs
from innspect.engine.reverse import Mapping, ReverseOptions, reverse_walk
from innspect.engine.selection import OutputSelection
from innspect.errors import InputError, OutputActivationError
from innspect.graph.cache import SHARED_GRAPHS, option_key, tensors_key
from innspect.graph.canonize import structure_stamp
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.lock import GRAPH_LOCK
from innspect.graph.ops import Kind, classify
from innspect.graph.views import refuse_hooks
from innspect.rules.strategy import DEFAULT_STRATEGY, EngineStrategy, computes_gradient, realize
from innspect.util.checks import check_flag, check_range


class ReverseAnalyzer(Analyzer):
    """An analyzer computed by one forward record and one reverse walk over the graph.

    Subclasses implement ``_mapping(info)`` and may override ``_start_value``,
    ``_postprocess`` and ``fuse_batchnorm``.
    """

    fuse_batchnorm: ClassVar[bool] = False
    relevance_start: ClassVar[bool] = False  # start from the output value (LRP), not from 1
    # How the engine computes each mapping (memory/speed; never changes the numbers).
    engine_strategy: EngineStrategy = DEFAULT_STRATEGY

    def __init__(
        self,
        model: nn.Module,
        *,
        neuron_selection_mode: str = "max_activation",
        reverse_keep_tensors: bool = False,
        reverse_check_finite: bool = False,
        reverse_clip_values: Sequence[float] | bool | None = None,
        reverse_project_bottleneck_layers: bool | Sequence[float] = False,
        reverse_min_max: bool = False,
        reverse_check_min_max_values: bool = False,
        reverse_verbose: bool = False,
        reverse_reapply_on_copied_layers: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, neuron_selection_mode=neuron_selection_mode, **kwargs)
        reverse_check_min_max_values = check_flag(
            "reverse_check_min_max_values", reverse_check_min_max_values
        )
        reverse_verbose = check_flag("reverse_verbose", reverse_verbose)
        # Rules never re-apply the user's layers: they always run on replaced weights.
        check_flag("reverse_reapply_on_copied_layers", reverse_reapply_on_copied_layers)
        self.reverse_verbose = reverse_verbose
        project = reverse_project_bottleneck_layers
        if isinstance(project, bool | int) and not isinstance(project, np.ndarray):
            bottleneck = (
                (-1.0, 1.0) if check_flag("reverse_project_bottleneck_layers", project) else None
            )
        else:
            bottleneck = check_range("reverse_project_bottleneck_layers", project)
        clip = reverse_clip_values
        if clip is False:  # iNNvestigate's default for "no clipping"
            clip = None
        self.reverse_options = ReverseOptions(
            keep_tensors=check_flag("reverse_keep_tensors", reverse_keep_tensors),
            check_finite=check_flag("reverse_check_finite", reverse_check_finite),
            clip_values=None if clip is None else check_range("reverse_clip_values", clip),
            project_bottleneck=bottleneck,
            # iNNvestigate prints them; innspect records them in Explanation.min_max too.
            min_max=check_flag("reverse_min_max", reverse_min_max)
            or reverse_check_min_max_values
            or reverse_verbose,
        )
        self._print_min_max = reverse_check_min_max_values or reverse_verbose
        self._graph: ModelGraph | None = None
        self._graph_key: Any = None
        self._mappings: dict[fx.Node, Mapping] = {}
        self._rules: dict[fx.Node, Mapping] = {}
        self._built_plan: Any = None
        self._autograd_nodes: frozenset[fx.Node] = frozenset()
        self._plain_gradient = False

    # -- the pipeline ---------------------------------------------------------------------
    def graph(self, example_input: Any = None) -> ModelGraph:
        """The model's captured graph for inputs like ``example_input`` (captured on first
        use and kept; captured again when a call passes other inputs or dtypes)."""
        refuse_hooks(self.model)  # hooks added after the capture count too
        inputs = None if example_input is None else self._inputs(example_input)
        graph = self._kept_graph(inputs)
        if graph is None:
            with GRAPH_LOCK.exclusive():  # one capture, even when threads share the analyzer
                graph = self._kept_graph(inputs) or self._capture(inputs)
        else:
            graph.refresh()  # the model may have changed since capture (a training step)
        return graph

    def _kept_graph(self, inputs: ModelInputs | None) -> ModelGraph | None:
        """The graph already captured, if it serves ``inputs`` and the model's module tree
        is still the one captured (a replaced submodule, ``bn.eps`` or an attribute that
        ``forward`` reads changed: captured again, docs/reliability.md)."""
        if self._graph is not None and structure_stamp(self.model) != self._structure:
            self._graph = None
        if self._graph is not None and inputs is not None and not self._graph.serves(inputs.values):
            # exported for other sizes, or recurrent layers written out for other lengths
            self._graph = None
        if self._graph is not None:
            if inputs is None or inputs.key() == self._graph_key:
                return self._graph
            if self._graph_key is None and inputs.call.key() == self._graph.call.key():
                self._graph_key = inputs.key()  # captured without an input, same call
                return self._graph
        return None

    def _capture(self, inputs: ModelInputs | None) -> ModelGraph:
        names = self._attribute_names
        if names is None and inputs is not None:
            names = inputs.default_sources()
        # Another analysis of this model may have captured it already for these inputs
        # (graph/cache.py): the graph is shared, the rules below are this analyzer's.
        key = None if inputs is None else self._capture_key(inputs, names)
        graph = None if key is None else SHARED_GRAPHS.find(self.model, key, inputs.values)
        if graph is not None:
            graph.refresh()
        else:
            graph = ModelGraph(
                self.model,
                tuple(inputs.values) if inputs is not None else None,
                fuse_batchnorm=self.fuse_batchnorm,
                call=inputs.call if inputs is not None else None,
                attribute_to=names,
                output=self.output,
            )
            if key is not None:
                SHARED_GRAPHS.add(self.model, key, graph)
        if inputs is not None:
            self._check_sources(graph, inputs)
        activation = graph.output_activation()
        if activation is not None and not self.disable_model_checks:
            raise _activation_error(activation)
        # The method says what each node computes; the engine how (see engine/strategy.py).
        self._rules = {info.node: self._mapping(info, graph) for info in graph.nodes}
        self._mappings = {
            info.node: realize(self._rules[info.node], info, self.engine_strategy)
            for info in graph.nodes
        }
        self._built_plan = None
        self._autograd_nodes = frozenset(
            node for node, m in self._mappings.items() if m.needs_autograd
        )
        # When every node maps by its VJP, one autograd pass is the same walk, done in C++
        # (not for a callable output=: the walk checks the tensors its signal reaches).
        ends = {n for n in graph.source_nodes if not graph.infos[n].signal_inputs}
        self._plain_gradient = graph.output_fn is None and all(
            computes_gradient(m)
            for node, m in self._mappings.items()
            if node in graph.infos
            and graph.infos[node].depends_on_input
            and node.op != "placeholder"
            and node not in ends
        )
        self._graph = graph
        self._graph_key = inputs.key() if inputs is not None else None
        self._structure = structure_stamp(self.model)
        return graph

    def _capture_key(self, inputs: ModelInputs, names: Sequence[str] | None) -> Hashable:
        """What a shared graph must have been captured with to serve this analyzer: the
        module tree, its tensors' shapes and those it holds outside its parameters, the call,
        its inputs' ranks, dtypes and devices, and the capture's options."""
        return (
            structure_stamp(self.model),
            tensors_key(self.model),
            inputs.key(),
            # a capture may depend on them (a Linear + BatchNorm1d folds on 2-D inputs only,
            # torch.export traces dtype casts): a shared graph saw the same
            tuple(
                (v.dim(), v.dtype, v.device) if isinstance(v, torch.Tensor) else None
                for v in inputs.values
            ),
            self.fuse_batchnorm,
            None if names is None else tuple(names),
            option_key(self.output),
        )

    def _check_sources(self, graph: ModelGraph, inputs: ModelInputs) -> None:
        """Clear errors for nothing to attribute and for integer inputs named by the user."""
        if not graph.source_nodes:
            raise InputError(no_float_input_message(inputs, _embedding_names(graph)))
        if self._attribute_names is None:
            return
        values = inputs.by_name()
        for node in graph.source_nodes:
            name = graph.source_names[node]
            value = values.get(name) if node.op == "placeholder" else None
            if isinstance(value, torch.Tensor) and not value.is_floating_point():
                raise InputError(_integer_input_message(name, value, _embedding_names(graph)))

    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        raise NotImplementedError

    def plan(self, example_input: torch.Tensor | None = None) -> Plan:
        """The rule each node gets (``print`` it); captures the graph on first use."""
        graph = self.graph(example_input)
        if self._built_plan is None:
            self._built_plan = build_plan(self.name, graph, self._rules)
        return self._built_plan

    def explain(self, *args: Any, **kwargs: Any) -> Explanation:
        """Like ``analyze`` but returns an Explanation, with the plan used (``.plan``)."""
        explanation = super().explain(*args, **kwargs)
        explanation.plan = self.plan()
        return explanation

    def _start_value(self, output: torch.Tensor) -> torch.Tensor:
        """Signal value at the selected output neurons: 1 for gradients, y for relevance."""
        return output.detach() if self.relevance_start else torch.ones_like(output)

    def _postprocess(self, attribution: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return attribution

    def forward_record(self, x: Any) -> ForwardRecord:
        """Run the recording forward pass (capturing the graph on first use)."""
        inputs = self._inputs(x)
        graph = self.graph(inputs)
        feed = graph.feed(inputs.values)
        self._check_input_shapes(graph, feed)
        with GRAPH_LOCK.shared():
            return run_forward(graph, feed, self._autograd_nodes)

    def model_output(self, x: Any) -> torch.Tensor:
        """The explained output on ``x`` through the captured graph, without recording."""
        inputs = self._inputs(x)
        graph = self.graph(inputs)
        return self.clean_pass(graph, graph.feed(inputs.values))[0]

    def clean_pass(
        self, graph: ModelGraph, feed: dict[fx.Node, Any]
    ) -> tuple[torch.Tensor, dict[fx.Node, Any]]:
        """The explained output and the attributed nodes' values, from a freeing forward
        without autograd (wrappers read the values their points are made from)."""
        self._check_input_shapes(graph, feed)
        with GRAPH_LOCK.shared(), torch.no_grad():
            values = run_forward(graph, feed, keep=False).values
            output = graph.output_value(values)
        return output, {n: values[n] for n in graph.source_nodes}

    def _explain(
        self, inputs: ModelInputs | torch.Tensor, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        inputs = self._inputs(inputs)
        target = self._call_target(neuron_selection, target)
        graph = self.graph(inputs)
        return self.explain_feed(
            graph,
            graph.feed(inputs.values),
            lambda output: self._resolve(output, neuron_selection, target, inputs),
        )

    def explain_feed(
        self, graph: ModelGraph, feed: dict[fx.Node, Any], selection: Selecting
    ) -> Explanation:
        """Explain the values in ``feed`` (inputs, or attributed inner nodes) for
        ``selection``: an ``OutputSelection`` resolved elsewhere (a wrapper's rows), or a
        function resolving it on this pass's output. The core of every call, and what the
        averaging wrappers call with their points."""
        self._check_input_shapes(graph, feed)
        if self._plain_gradient and self.reverse_options == ReverseOptions():
            return self._explain_by_autograd(graph, feed, selection)
        with GRAPH_LOCK.shared():
            record = run_forward(graph, feed, self._autograd_nodes)
        return self._walk(graph, record, selection)

    def explain_record(self, record: ForwardRecord, selection: Selecting) -> Explanation:
        """The walk from a record made by ``forward_record`` (freed as the walk goes)."""
        return self._walk(self.graph(), record, selection)

    def _walk(
        self,
        graph: ModelGraph,
        record: ForwardRecord,
        selection: Selecting,
        source_values: dict[fx.Node, Any] | None = None,
        contributions: Callable[[dict[fx.Node, torch.Tensor]], dict] | None = None,
    ) -> Explanation:
        """The reverse walk from the explained output of ``record``. ``source_values``: the
        attributed values (default: the record's); ``contributions`` turns the signals at
        the sources into what is postprocessed (DeepLIFT's multipliers times the
        differences from the reference)."""
        values = record.values
        if source_values is None:
            source_values = {n: values[n] for n in graph.source_nodes}
        output, starts_from = self._output_and_starts(graph, values)
        chosen = _selection_on(output, selection)
        result = reverse_walk(
            graph,
            record,
            starts_from(chosen.start(output, self._start_value)),
            lambda info: self._mappings[info.node],
            self.reverse_options,
        )
        signals = (
            result.attributions if contributions is None else contributions(result.attributions)
        )
        attributions = self._finish(graph, signals, source_values)
        if self._print_min_max:
            _print_walk(self, result.min_max)
        return Explanation.of_walk(attributions, chosen.selected, chosen.scores, result)

    def _output_and_starts(
        self, graph: ModelGraph, values: Any
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], dict[fx.Node, torch.Tensor]]]:
        """The explained output, and how a signal on it becomes signals on returned tensors.

        For a chosen tensor that is the identity; for ``output=`` a callable, the signal is
        pulled back through the callable by its vector-Jacobian product.
        """
        node = graph.output_node
        if node is not None:
            return values[node], lambda signal: {node: signal}
        leaves = {}
        for leaf in graph.output_nodes:
            value = values[leaf]
            is_float = isinstance(value, torch.Tensor) and value.is_floating_point()
            leaves[leaf] = value.detach().requires_grad_(True) if is_float else value
        with torch.enable_grad():
            output = graph.output_value(leaves)
        wanted = [n for n, v in leaves.items() if isinstance(v, torch.Tensor) and v.requires_grad]

        def starts(signal: torch.Tensor) -> dict[fx.Node, torch.Tensor]:
            if not output.requires_grad or not wanted:
                return {}
            grads = torch.autograd.grad(
                output, [leaves[n] for n in wanted], signal, allow_unused=True
            )
            found = {n: g for n, g in zip(wanted, grads, strict=True) if g is not None}
            for leaf, grad in found.items():
                activation = graph.output_activation(leaf)
                if (
                    activation is not None
                    and not self.disable_model_checks
                    and bool(grad.ne(0).any())
                ):
                    raise _activation_error(activation)
            return found

        return output.detach(), starts

    def _finish(
        self,
        graph: ModelGraph,
        signals: dict[fx.Node, torch.Tensor],
        values: dict[fx.Node, Any],
    ) -> dict[str, torch.Tensor]:
        """Postprocessed attribution per attributed input or node, by name."""
        result = {}
        for node in graph.source_nodes:
            name = graph.source_names[node]
            value = values[node]
            if not isinstance(value, torch.Tensor):
                users = ", ".join(repr(graph.infos[u].name) for u in node.users if u in graph.infos)
                raise InputError(
                    f"attribute_to={name!r} names a node whose output is a "
                    f"{type(value).__name__}, not a tensor; name the node that takes the "
                    f"tensor from it instead ({users})"
                )
            signal = signals.get(node)
            if signal is None:
                if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                    raise InputError(_integer_input_message(name, value, _embedding_names(graph)))
                signal = torch.zeros_like(value)
            attribution = self._postprocess(signal.detach(), value.detach())
            if self.attribute_sum_axis is not None:
                attribution = attribution.sum(dim=self.attribute_sum_axis)
            result[name] = attribution
        return result

    def _explain_by_autograd(
        self, graph: ModelGraph, feed: dict[fx.Node, Any], selection: Selecting
    ) -> Explanation:
        """The same walk as one autograd pass, when every node maps by its VJP."""
        sources = set(graph.source_nodes)
        feed = {
            n: v.detach().requires_grad_(True)
            if n in sources and isinstance(v, torch.Tensor) and v.is_floating_point()
            else v
            for n, v in feed.items()
        }
        with GRAPH_LOCK.shared(), torch.enable_grad():
            values = run_forward(graph, feed, keep=False, global_autograd=True).values
            output = graph.output_value(values)
        source_values = {n: values[n] for n in graph.source_nodes}
        chosen = _selection_on(output, selection)
        start = chosen.start(output, self._start_value)
        wanted = [
            n for n, v in source_values.items() if isinstance(v, torch.Tensor) and v.requires_grad
        ]
        signals: dict[fx.Node, torch.Tensor] = {}
        if output.requires_grad and wanted:
            grads = torch.autograd.grad(
                output, [source_values[n] for n in wanted], start, allow_unused=True
            )
            for node, grad in zip(wanted, grads, strict=True):
                signals[node] = torch.zeros_like(source_values[node]) if grad is None else grad
        attributions = self._finish(graph, signals, source_values)
        return Explanation(
            next(iter(attributions.values())),
            chosen.selected,
            chosen.scores,
            attributions=attributions,
        )

    def _check_input_shapes(self, graph: ModelGraph, feed: dict[fx.Node, Any]) -> None:
        """Compare each input with its first layers' expectations, for a clear message."""
        for input_node, x in feed.items():
            if input_node.op != "placeholder" or not isinstance(x, torch.Tensor):
                continue
            for node in input_node.users:
                info = graph.infos.get(node)
                module = info.module if info is not None else None
                if isinstance(module, nn.modules.conv._ConvNd):
                    dims = len(module.kernel_size)
                    if x.dim() != dims + 2:
                        raise InputError(
                            f"layer '{info.name}' ({type(module).__name__}) expects input of "
                            f"rank {dims + 2} (N, C, ...spatial), got shape {tuple(x.shape)}"
                        )
                    if x.shape[1] != module.in_channels:
                        raise InputError(
                            f"layer '{info.name}' expects {module.in_channels} channels on "
                            f"axis 1, got shape {tuple(x.shape)} (channels-last data needs "
                            "X.permute(0, 3, 1, 2) or np.moveaxis(X, -1, 1))"
                        )
                elif isinstance(module, nn.Linear) and x.shape[-1] != module.in_features:
                    raise InputError(
                        f"layer '{info.name}' (Linear) expects {module.in_features} features "
                        f"on the last axis, got shape {tuple(x.shape)}"
                    )


def _activation_error(activation: NodeInfo) -> OutputActivationError:
    what = activation.operation
    if activation.kind is not Kind.OUTPUT_ACTIVATION and "sigmoid" not in what.lower():
        what = f"a softmax or sigmoid written out (exp(...) in a {what})"
    return OutputActivationError(
        f"the model's output passes through {what} at node "
        f"'{activation.name}'; explanations need the pre-activation output. Use "
        "innspect.model_wo_softmax(model) or model_wo_output_activation(model)"
    )


def _embedding_names(graph: ModelGraph) -> list[str]:
    """Names of the embedding lookups, the nodes to attribute token ids' models to."""
    # Not info.kind: a lookup of ids that get no attribution is a constant of the graph.
    return [i.name for i in graph.nodes if classify(i.node, i.module) is Kind.EMBEDDING]


def _integer_input_message(name: str, value: Any, embeddings: Sequence[str]) -> str:
    dtype = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
    hint = (
        f"attribute to the embedding's output instead, e.g. attribute_to={embeddings[0]!r}"
        if embeddings
        else "convert it to floating point, or attribute to the node that embeds it"
    )
    return (
        f"input {name!r} is {dtype}: integer inputs (token ids, masks) carry no gradient "
        f"and get no attribution; {hint}"
    )


def _print_walk(analyzer: ReverseAnalyzer, min_max: dict[str, tuple[float, float]]) -> None:
    """iNNvestigate's reverse_verbose / reverse_check_min_max_values: print each node's
    rule (verbose) and the minimum and maximum of its signal."""
    rules = analyzer.plan().rules if analyzer.reverse_verbose else {}
    for name, (low, high) in min_max.items():
        rule = f"  {rules[name]!r}" if name in rules else ""
        print(f"{analyzer.name}: node {name!r}{rule}: min {low:.6g}, max {high:.6g}")


Selecting = OutputSelection | Callable[[torch.Tensor], OutputSelection]
"""A selection resolved elsewhere, or how to resolve it on the explained output."""


def _selection_on(output: torch.Tensor, selection: Selecting) -> OutputSelection:
    return selection if isinstance(selection, OutputSelection) else selection(output)
