"""Analyzer base classes: input handling, neuron selection, persistence.

``Analyzer`` holds what every method shares (numpy/torch in and out, the neuron selection
modes, save/load). ``ReverseAnalyzer`` adds the capture -> forward -> reverse walk pipeline;
a method only says which mapping each node gets and where the walk starts.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import fx, nn

from innspect.analyzers.io import (
    ModelInputs,
    attribute_names,
    check_target,
    model_inputs,
    target_gradient,
    to_tensor,
)
from innspect.analyzers.options import check_flag, check_range
from innspect.analyzers.plan import Plan, build_plan
from innspect.data import all_finite, model_device_dtype, nonfinite_counts
from innspect.engine.forward import ForwardRecord, run_forward
from innspect.engine.reverse import Mapping, ReverseOptions, ReverseResult, reverse_walk
from innspect.engine.strategy import DEFAULT_STRATEGY, EngineStrategy, computes_gradient, realize
from innspect.errors import (
    ConfigFileError,
    InnspectError,
    InputError,
    NeuronSelectionError,
    NonFiniteRelevanceError,
    OutputActivationError,
    OutputSelectionError,
)
from innspect.fileio import write_npz
from innspect.graph.capture import GRAPH_LOCK, refuse_hooks
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.kinds import Kind, classify

NEURON_SELECTION_MODES = ("max_activation", "index", "all")


@dataclass
class Explanation:
    """The result of one analysis, with everything the analyzer knows about it.

    Attributes
    ----------
    attribution
        Same shape as the input (the first attributed input or node).
    selected
        Per sample, the output neuron explained (flattened index), or None for mode "all"
        and for ``target=``.
    scores
        Per sample, the model's output at the selected neuron (sum over outputs for "all",
        the target's value ``t`` for ``target=``).
    relevances
        Signal at each node by node name (with ``reverse_keep_tensors=True``).
    min_max
        Per node, (min, max) of its signal (with ``reverse_min_max=True``).
    node_sums
        Per node, per-sample sums of the signal arriving and leaving (with the reverse
        option ``node_sums``; see ``innspect.tools.conservation``).
    """

    attribution: torch.Tensor
    selected: torch.Tensor | None
    scores: torch.Tensor
    relevances: dict[str, torch.Tensor] = field(default_factory=dict)
    min_max: dict[str, tuple[float, float]] = field(default_factory=dict)
    node_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    attributions: dict[str, torch.Tensor] = field(default_factory=dict)
    """Every attribution by input or node name (``attribute_to``), postprocessed."""
    plan: Plan | None = None  # the rule of each node (methods run by the reverse walk)

    def __post_init__(self) -> None:
        if not self.attributions:
            self.attributions = {"input": self.attribution}

    @classmethod
    def of_walk(
        cls,
        attributions: dict[str, torch.Tensor],
        selected: torch.Tensor | None,
        scores: torch.Tensor,
        result: ReverseResult,
    ) -> Explanation:
        """The explanation of a reverse walk: its attributions (the first is ``attribution``)
        with the walk's per-node signals, min/max and sums."""
        return cls(
            next(iter(attributions.values())),
            selected,
            scores,
            result.signals,
            result.min_max,
            result.node_sums,
            attributions,
        )


class Analyzer:
    """Base of every analyzer.

    Parameters
    ----------
    model
        A torch model (its output: logits, not probabilities). It may take several inputs
        (``analyze`` a tuple or a dict) and return a tuple, dict or dataclass.
    neuron_selection_mode
        "max_activation" (default), "index" or "all".
    target
        Instead of a neuron selection: output weights ``w`` broadcastable to the explained
        output (explains ``t = sum(w * y)`` per sample, Zennit's ``attr_output``) or a
        callable ``f(y) -> (N,)`` (a contrast ``y[:, a] - y[:, b]``, a region's mean...).
        Gradient methods start the walk from ``dt/dy``, relevance methods from
        ``y * dt/dy``. ``analyze(X, target=...)`` overrides it per call.
    output
        Which returned tensor to explain when the model returns several: an index, a key,
        a path tuple, or a callable on the returned structure. Default: the only tensor,
        else ``"logits"``.
    attribute_to
        Which inputs (forward parameter names) or graph nodes (``NodeInfo.name``, e.g. an
        embedding's module path) receive attributions: a name or a list of names. Default:
        every floating-point input; integer inputs and masks pass through.
    attribute_sum_axis
        Sum every attribution over this axis (e.g. -1: an embedding's feature axis).
    allow_nonfinite
        Return NaN or infinite attributions instead of raising NonFiniteRelevanceError.
    """

    name: ClassVar[str] = "analyzer"
    is_trainable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self: Analyzer, model: nn.Module, *args: Any, **options: Any) -> None:
            if args:
                raise TypeError(f"{cls.__name__}: pass options by keyword, e.g. epsilon=0.1")
            # The outermost __init__ sees the options the user gave: they are the config.
            if "_options" not in self.__dict__:
                self._options = dict(options)
            init(self, model, **options)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def __init__(
        self,
        model: nn.Module,
        *,
        neuron_selection_mode: str = "max_activation",
        target: Any = None,
        output: Any = None,
        attribute_to: str | Sequence[str] | None = None,
        attribute_sum_axis: int | None = None,
        allow_nonfinite: bool = False,
        disable_model_checks: bool = False,
        allow_lambda_layers: bool = False,
    ) -> None:
        # iNNvestigate's options (docs/innvestigate.md): disable_model_checks skips the
        # refusal of an output softmax; allow_lambda_layers has nothing to allow (innspect
        # traces through Python code, there are no opaque Lambda layers).
        _check_flag("disable_model_checks", disable_model_checks)
        _check_flag("allow_lambda_layers", allow_lambda_layers)
        self.disable_model_checks = disable_model_checks
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if neuron_selection_mode not in NEURON_SELECTION_MODES:
            raise NeuronSelectionError(
                f"neuron_selection_mode must be one of {NEURON_SELECTION_MODES}, "
                f"got {neuron_selection_mode!r}"
            )
        self.model = model
        self.neuron_selection_mode = neuron_selection_mode
        self.target = check_target(target)
        if self.target is not None and neuron_selection_mode != "max_activation":
            raise NeuronSelectionError(
                f"target= replaces the neuron selection; drop neuron_selection_mode="
                f"{neuron_selection_mode!r}"
            )
        if isinstance(output, list):  # a path restored from a saved (JSON) config
            output = tuple(output)
        if output is not None and not (callable(output) or isinstance(output, str | int | tuple)):
            raise OutputSelectionError(
                f"output must be an index, a key, a path tuple or a callable, got {output!r}"
            )
        self.output = output
        self.attribute_to = attribute_to
        self._attribute_names = attribute_names(attribute_to)
        self.attribute_sum_axis = None if attribute_sum_axis is None else int(attribute_sum_axis)
        self.allow_nonfinite = check_flag("allow_nonfinite", allow_nonfinite)
        self._options = getattr(self, "_options", {})

    # -- public interface ---------------------------------------------------------------
    def analyze(self, X: Any, neuron_selection: Any = None, target: Any = None) -> Any:
        """Explain ``X`` (batch first); numpy in gives numpy out, a tensor gives a tensor.

        Parameters
        ----------
        X
            Input batch, numpy array or torch tensor; a tuple of them for a model with
            several positional inputs, a dict for keyword inputs. Attributions come back in
            the same structure (None for inputs that get none), or as ``attribute_to``
            names them.
        neuron_selection
            With mode "index": one int for the whole batch or one per sample.
        target
            Output weights or a callable ``f(y) -> (N,)`` (see the class), for this call.
        """
        _refuse_meta(self.model, X)
        inputs = self._inputs(X)
        explanation = self._checked_explain(inputs, neuron_selection, target)
        return inputs.restore(explanation.attributions, self.attribute_to)

    def explain(self, X: Any, neuron_selection: Any = None, target: Any = None) -> Explanation:
        """Like ``analyze`` but returns an Explanation with the selected neurons and scores."""
        _refuse_meta(self.model, X)
        return self._checked_explain(self._inputs(X), neuron_selection, target)

    def _checked_explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any
    ) -> Explanation:
        """``_explain`` holding the graph lock shared, with clear errors around it."""
        with GRAPH_LOCK.shared():  # no capture in any thread while this one runs modules
            try:
                explanation = self._explain(inputs, neuron_selection, target)
            except InputError as error:
                raise _with_integer_input_hint(error, inputs) from error
        self._check_finite(explanation)
        return explanation

    def _check_finite(self, explanation: Explanation) -> None:
        """NaN or infinite attributions are an error unless ``allow_nonfinite=True``."""
        if self.allow_nonfinite:
            return
        for name, attribution in explanation.attributions.items():
            if all_finite(attribution):
                continue
            n_nan, n_inf = nonfinite_counts(attribution)
            raise NonFiniteRelevanceError(
                f"{self.name}: the attribution of {name!r} has {n_nan} NaN and {n_inf} infinite "
                f"values (of {attribution.numel()}): the model's output or its gradient is not "
                f"finite{self._nonfinite_hint()}. Pass allow_nonfinite=True to get the values "
                "anyway, or reverse_check_finite=True to find the node where they appear."
            )

    def _nonfinite_hint(self) -> str:
        """Where non-finite values may come from, for the error message."""
        return " at these inputs"

    def fit(self, *args: Any, **kwargs: Any) -> None:
        """Train the analyzer on data; analyzers that need no training warn and do nothing."""
        warnings.warn(f"{self.name} needs no fitting; fit() does nothing", stacklevel=2)

    # -- persistence --------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """The options this analyzer was created with (JSON-serialisable)."""
        return {"name": self.name, "options": _jsonable(self._options)}

    def get_state(self) -> dict[str, np.ndarray]:
        """Fitted state as arrays (empty for analyzers that are not trained)."""
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore state produced by ``get_state``."""

    def save(self) -> tuple[str, dict[str, Any]]:
        """Return (name, state) from which ``load`` rebuilds the analyzer (model excluded)."""
        return self.name, {"config": self.get_config(), "arrays": self.get_state()}

    @staticmethod
    def load(name: str, state: dict[str, Any], model: nn.Module) -> Analyzer:
        """Rebuild an analyzer saved with ``save``; the model is passed again."""
        from innspect.analyzers.registry import create_analyzer

        config = state["config"]
        analyzer = create_analyzer(name, model, **config["options"])
        analyzer.set_state(state.get("arrays", {}))
        return analyzer

    def save_npz(self, path: str | os.PathLike) -> None:
        """Write configuration and fitted state to an .npz file (atomically)."""
        name, state = self.save()
        payload = {f"state/{k}": v for k, v in state["arrays"].items()}
        payload["config"] = np.array(json.dumps({"name": name, **state["config"]}))
        write_npz(path, payload)

    @classmethod
    def load_npz(cls, path: str | os.PathLike, model: nn.Module) -> Analyzer:
        """Rebuild an analyzer written by ``save_npz`` (``path`` with or without ``.npz``).

        The file is never unpickled, and its options are validated as on creation. Called
        on a subclass (``IntegratedGradients.load_npz``), the file must hold that analyzer.
        Any damaged, foreign or invalid file raises ConfigFileError naming it.
        """
        from innspect.analyzers.registry import analyzer_class

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        path = _existing_npz(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if "config" not in data.files:
                    raise ValueError("it has no 'config' entry")
                config = json.loads(str(data["config"][()]))
                arrays = {
                    k[len("state/") :]: np.asarray(data[k])
                    for k in data.files
                    if k.startswith("state/")
                }
            name, options = _saved_config(config)
            saved_class = analyzer_class(name)
        except Exception as error:  # noqa: BLE001 - zip, npy, JSON and key errors alike
            raise ConfigFileError(
                f"{path} is not an analyzer file written by save_npz, or it is damaged "
                f"({type(error).__name__}: {error})"
            ) from error
        if not issubclass(saved_class, cls):
            raise ConfigFileError(
                f"{path} holds a {name!r} analyzer, not {cls.name!r}; load it with "
                "innspect.Analyzer.load_npz"
            )
        try:
            return Analyzer.load(name, {"config": {"options": options}, "arrays": arrays}, model)
        except (TypeError, ValueError, KeyError, InnspectError) as error:
            raise ConfigFileError(
                f"{path}: its options are not valid for {name!r} ({error})"
            ) from error

    # -- input handling -----------------------------------------------------------------
    def _inputs(self, X: Any) -> ModelInputs:
        """``X`` checked and bound to the model's forward (see ``analyzers.io``)."""
        if isinstance(X, ModelInputs):
            return X
        device, dtype = model_device_dtype(self.model)
        return model_inputs(self.model, X, device, dtype)

    def _attributed_inputs(self, inputs: ModelInputs) -> tuple[str, ...]:
        """Names of the inputs to attribute, for analyzers that see no graph."""
        names = self._attribute_names or inputs.default_sources()
        unknown = [n for n in names if n not in inputs.names]
        if unknown:
            raise InputError(
                f"{self.name} attributes inputs only, and {unknown[0]!r} is not one of them "
                f"({', '.join(inputs.names)})"
            )
        if not names:
            raise InputError(_no_float_input_message(inputs))
        return names

    def _to_tensor(self, X: Any) -> tuple[torch.Tensor, bool]:
        """One input tensor, checked (wave 1's single-input conversion)."""
        device, dtype = model_device_dtype(self.model)
        return to_tensor(X, device, dtype)

    @staticmethod
    def _from_tensor(x: torch.Tensor, to_numpy: bool) -> Any:
        return x.detach().cpu().numpy() if to_numpy else x.detach()

    def _explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        raise NotImplementedError

    # -- neuron selection ---------------------------------------------------------------
    def _target(self, target: Any) -> Any:
        """The per-call target, else the analyzer's."""
        return self.target if target is None else check_target(target)

    def _call_target(self, neuron_selection: Any, target: Any) -> Any:
        """The call's target (per call, else the analyzer's), checked against the call's
        neuron selection: the first step of every ``_explain``."""
        target = self._target(target)
        self._check_selection_arguments(neuron_selection, target)
        return target

    def _check_selection_arguments(self, neuron_selection: Any, target: Any = None) -> None:
        if target is not None:
            if neuron_selection is not None or self.neuron_selection_mode != "max_activation":
                raise NeuronSelectionError(
                    "target= replaces the neuron selection; pass either target or "
                    "neuron_selection (with neuron_selection_mode='index'), not both"
                )
            return
        mode = self.neuron_selection_mode
        if mode == "index" and neuron_selection is None:
            raise NeuronSelectionError(
                'neuron_selection_mode="index" needs analyze(X, neuron_selection=...) '
                "(an int or one int per sample)"
            )
        if mode != "index" and neuron_selection is not None:
            raise NeuronSelectionError(
                f'neuron_selection is only allowed with neuron_selection_mode="index" '
                f"(this analyzer uses {mode!r})"
            )

    def _select(self, output: torch.Tensor, neuron_selection: Any) -> torch.Tensor | None:
        """Flattened output indices per sample, or None for mode "all"."""
        flat = output.reshape(output.shape[0], -1)
        n, k = flat.shape
        mode = self.neuron_selection_mode
        if mode == "all":
            return None
        if mode == "max_activation":
            return flat.detach().argmax(dim=1)
        index = _neuron_indices(neuron_selection, k).to(flat.device)
        if index.dim() == 0:
            index = index.expand(n)
        index = index.reshape(-1).long()
        if index.numel() != n:
            raise NeuronSelectionError(
                f"neuron_selection has {index.numel()} indices for a batch of {n} samples; "
                "give one int for all or one per sample"
            )
        bad = (index < 0) | (index >= k)
        if bool(bad.any()):
            raise NeuronSelectionError(
                f"neuron index {int(index[bad][0])} is out of range: the model has {k} outputs "
                f"(valid: 0 .. {k - 1})"
            )
        return index


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
        _check_flag("reverse_check_min_max_values", reverse_check_min_max_values)
        _check_flag("reverse_verbose", reverse_verbose)
        # Rules never re-apply the user's layers: they always run on replaced weights.
        _check_flag("reverse_reapply_on_copied_layers", reverse_reapply_on_copied_layers)
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
        """The graph already captured, if it serves ``inputs``."""
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
        graph = ModelGraph(
            self.model,
            tuple(inputs.values) if inputs is not None else None,
            fuse_batchnorm=self.fuse_batchnorm,
            call=inputs.call if inputs is not None else None,
            attribute_to=names,
            output=self.output,
        )
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
        return graph

    def _check_sources(self, graph: ModelGraph, inputs: ModelInputs) -> None:
        """Clear errors for nothing to attribute and for integer inputs named by the user."""
        if not graph.source_nodes:
            raise InputError(_no_float_input_message(inputs, _embedding_names(graph)))
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
        return self._clean_pass(graph, graph.feed(inputs.values))[0]

    def _clean_pass(
        self, graph: ModelGraph, feed: dict[fx.Node, Any]
    ) -> tuple[torch.Tensor, dict[fx.Node, Any]]:
        """The explained output and the attributed nodes' values, from a freeing forward."""
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
        return self._explain_feed(graph, graph.feed(inputs.values), neuron_selection, target)

    def _explain_feed(
        self, graph: ModelGraph, feed: dict[fx.Node, Any], neuron_selection: Any, target: Any
    ) -> Explanation:
        """Explain the inputs (and fed nodes) in ``feed``; the core of ``_explain``."""
        self._check_input_shapes(graph, feed)
        if self._plain_gradient and self.reverse_options == ReverseOptions():
            return self._explain_by_autograd(graph, feed, neuron_selection, target)
        with GRAPH_LOCK.shared():
            record = run_forward(graph, feed, self._autograd_nodes)
        values = record.values
        source_values = {n: values[n] for n in graph.source_nodes}
        output, starts_from = self._output_and_starts(graph, values)
        selected, scores, start = self._start(output, neuron_selection, target)
        starts = starts_from(start)
        result = reverse_walk(
            graph, record, starts, lambda info: self._mappings[info.node], self.reverse_options
        )
        attributions = self._finish(graph, result.attributions, source_values)
        if self._print_min_max:
            _print_walk(self, result.min_max)
        return Explanation.of_walk(attributions, selected, scores, result)

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

    def _start(
        self, output: torch.Tensor, neuron_selection: Any, target: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Selected neurons, scores and the start signal on the explained output.

        With ``target`` ``t``: ``dt/dy`` for gradient methods and ``y * dt/dy`` (the start
        value times ``dt/dy``) for relevance methods, which sums to ``t`` when ``t`` is
        linear in ``y``.
        """
        if target is None:
            selected = self._select(output, neuron_selection)
            start, scores = self._start_signal(output, selected)
            return selected, scores, start
        grad, scores = target_gradient(output, target)
        return None, scores, self._start_value(output.detach()) * grad

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
        self, graph: ModelGraph, feed: dict[fx.Node, Any], neuron_selection: Any, target: Any
    ) -> Explanation:
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
        selected, scores, start = self._start(output, neuron_selection, target)
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
            next(iter(attributions.values())), selected, scores, attributions=attributions
        )

    def _start_signal(
        self, output: torch.Tensor, selected: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The signal at the output (its shape) and the explained scores per sample."""
        flat = output.detach().reshape(output.shape[0], -1)
        value = self._start_value(flat)
        if selected is None:
            return value.reshape(output.shape), flat.sum(dim=1)
        start_flat = torch.zeros_like(flat)
        rows = torch.arange(flat.shape[0], device=flat.device)
        start_flat[rows, selected] = value[rows, selected]
        return start_flat.reshape(output.shape), flat[rows, selected]

    def _reverse_from(
        self,
        x: torch.Tensor,
        record: ForwardRecord,
        output: torch.Tensor,
        selected: torch.Tensor | None,
    ) -> Explanation:
        """The walk from a record made by ``forward_record`` (wave 1's entry point)."""
        graph = self.graph()
        start, scores = self._start_signal(output, selected)
        source_values = {n: record.values[n] for n in graph.source_nodes}
        result = reverse_walk(
            graph, record, start, lambda info: self._mappings[info.node], self.reverse_options
        )
        attributions = self._finish(graph, result.attributions, source_values)
        if self._print_min_max:
            _print_walk(self, result.min_max)
        return Explanation.of_walk(attributions, selected, scores, result)

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


def _refuse_meta(model: nn.Module, X: Any) -> None:
    """Tensors on the meta device have no values to explain (torch fails in ``item()``)."""
    device, _ = model_device_dtype(model)
    given = X.values() if isinstance(X, dict) else X if isinstance(X, tuple | list) else [X]
    meta = any(isinstance(v, torch.Tensor) and v.device.type == "meta" for v in given)
    if (device is not None and device.type == "meta") or meta:
        where = "the input is" if meta else "the model's parameters are"
        raise InputError(
            f"{where} on the meta device (shapes without values), so there is nothing to "
            "explain; materialise the model (model.to_empty(device='cpu') and load_state_dict) "
            "and pass real inputs"
        )


def _with_integer_input_hint(error: InputError, inputs: ModelInputs) -> InputError:
    """A model that failed on an integer input: say what to do about the input."""
    integers = [
        (name, value)
        for name, value in inputs.by_name().items()
        if isinstance(value, torch.Tensor)
        and not (value.is_floating_point() or value.is_complex())
        and value.dtype != torch.bool
    ]
    if not integers or not str(error).startswith("the model failed"):
        return error
    name, value = integers[0]
    return InputError(
        f"{error}. Input {name!r} is {value.dtype}: innspect does not convert integer inputs "
        "(they may be token ids); convert it to floating point (X.float(), "
        "X.astype(np.float32)), or for token ids attribute to the embedding's output with "
        "attribute_to='<embedding module path>'"
    )


def _neuron_indices(neuron_selection: Any, n_outputs: int) -> torch.Tensor:
    """``neuron_selection`` as an int64 tensor, or a NeuronSelectionError saying why not.

    Checked before any conversion: torch would raise its own TypeError on strings and None,
    and wrap an unsigned 2**64 - 1 around to -1.
    """
    usage = "give an int for the whole batch or a sequence of ints, one per sample"
    if isinstance(neuron_selection, torch.Tensor):
        if (
            neuron_selection.is_floating_point()
            or neuron_selection.is_complex()
            or (neuron_selection.dtype == torch.bool)
        ):
            raise NeuronSelectionError(
                f"neuron_selection must be integers, got {neuron_selection.dtype}; {usage}"
            )
        values = neuron_selection.detach().cpu()
        if values.dtype == torch.uint64:  # values above int64's range must not wrap around
            array = values.numpy()
        else:
            return values.long()
    else:
        try:
            array = np.asarray(neuron_selection)
        except Exception as error:  # noqa: BLE001 - ragged nesting and the like
            raise NeuronSelectionError(
                f"neuron_selection {neuron_selection!r} is not a sequence of ints; {usage}"
            ) from error
    if array.dtype.kind == "O":  # Python ints beyond 64 bits, None, mixed types
        for value in array.reshape(-1):
            if isinstance(value, int | np.integer) and not isinstance(value, bool):
                continue
            raise NeuronSelectionError(
                f"neuron_selection must be integers, got {value!r} in {neuron_selection!r}; {usage}"
            )
        array = np.array([int(v) for v in array.reshape(-1)], dtype=object).reshape(array.shape)
    elif array.dtype.kind not in "iu":
        raise NeuronSelectionError(
            f"neuron_selection must be integers, got {neuron_selection!r} ({array.dtype}); {usage}"
        )
    flat = array.reshape(-1)
    too_large = [int(v) for v in flat if int(v) >= n_outputs or int(v) < 0]
    if too_large:
        raise NeuronSelectionError(
            f"neuron index {too_large[0]} is out of range: the model has {n_outputs} outputs "
            f"(valid: 0 .. {n_outputs - 1})"
        )
    return torch.as_tensor(array.astype(np.int64))


def _activation_error(activation: NodeInfo) -> OutputActivationError:
    return OutputActivationError(
        f"the model's output passes through {activation.operation} at node "
        f"'{activation.name}'; explanations need the pre-activation output. Use "
        "innspect.model_wo_softmax(model) or model_wo_output_activation(model)"
    )


def _embedding_names(graph: ModelGraph) -> list[str]:
    """Names of the embedding lookups, the nodes to attribute token ids' models to."""
    # Not info.kind: a lookup of ids that get no attribution is a constant of the graph.
    return [i.name for i in graph.nodes if classify(i.node, i.module) is Kind.EMBEDDING]


def _no_float_input_message(inputs: ModelInputs, embeddings: Sequence[str] = ()) -> str:
    described = ", ".join(
        f"{n}: {v.dtype}" if isinstance(v, torch.Tensor) else f"{n}: {type(v).__name__}"
        for n, v in inputs.by_name().items()
    )
    hint = f", e.g. attribute_to={embeddings[0]!r}" if embeddings else ""
    return (
        f"no input is floating point ({described}), so there is nothing to attribute by "
        f"default; name a graph node with attribute_to=... (an embedding's output{hint})"
    )


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


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _print_walk(analyzer: ReverseAnalyzer, min_max: dict[str, tuple[float, float]]) -> None:
    """iNNvestigate's reverse_verbose / reverse_check_min_max_values: print each node's
    rule (verbose) and the minimum and maximum of its signal."""
    rules = analyzer.plan().rules if analyzer.reverse_verbose else {}
    for name, (low, high) in min_max.items():
        rule = f"  {rules[name]!r}" if name in rules else ""
        print(f"{analyzer.name}: node {name!r}{rule}: min {low:.6g}, max {high:.6g}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return np.asarray(
            value.detach().cpu() if isinstance(value, torch.Tensor) else value
        ).tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "get_config"):
        return value.get_config()
    raise TypeError(
        f"analyzer option of type {type(value).__name__} cannot be saved; pass names or numbers"
    )


def _existing_npz(path: str | os.PathLike) -> str:
    """The file ``save_npz(path)`` wrote: ``path`` itself, or ``path`` + ".npz"."""
    path = os.fspath(path)
    if not os.path.exists(path) and not path.endswith(".npz") and os.path.exists(path + ".npz"):
        return path + ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no analyzer file {path!r} (nor {path + '.npz'!r})")
    return path


def _saved_config(config: Any) -> tuple[str, dict[str, Any]]:
    """(name, options) of a saved configuration, or ValueError naming what is wrong."""
    if not isinstance(config, dict):
        raise ValueError(f"its config is a {type(config).__name__}, not an object")
    name, options = config.get("name"), config.get("options", {})
    if not isinstance(name, str):
        raise ValueError(f"its config has no analyzer name (got {name!r})")
    if not isinstance(options, dict):
        raise ValueError(f"its options are a {type(options).__name__}, not an object")
    return name, options
