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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import fx, nn

from innspect.engine.forward import ForwardRecord, run_forward
from innspect.engine.reverse import Mapping, ReverseOptions, reverse_walk
from innspect.errors import InputError, NeuronSelectionError, OutputActivationError
from innspect.fileio import atomic_path
from innspect.graph.capture import GRAPH_LOCK, refuse_hooks
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.rules.basic import Gradient

NEURON_SELECTION_MODES = ("max_activation", "index", "all")


@dataclass
class Explanation:
    """The result of one analysis, with everything the analyzer knows about it.

    Attributes
    ----------
    attribution
        Same shape as the input.
    selected
        Per sample, the output neuron explained (flattened index), or None for mode "all".
    scores
        Per sample, the model's output at the selected neuron (sum over outputs for "all").
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


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of the model's first parameter or buffer (None if it has none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


class Analyzer:
    """Base of every analyzer.

    Parameters
    ----------
    model
        A torch model returning one tensor of shape (N, ...) (logits, not probabilities).
    neuron_selection_mode
        "max_activation" (default), "index" or "all".
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

    def __init__(self, model: nn.Module, *, neuron_selection_mode: str = "max_activation") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if neuron_selection_mode not in NEURON_SELECTION_MODES:
            raise NeuronSelectionError(
                f"neuron_selection_mode must be one of {NEURON_SELECTION_MODES}, "
                f"got {neuron_selection_mode!r}"
            )
        self.model = model
        self.neuron_selection_mode = neuron_selection_mode
        self._options = getattr(self, "_options", {})

    # -- public interface ---------------------------------------------------------------
    def analyze(self, X: Any, neuron_selection: Any = None) -> Any:
        """Explain ``X`` (batch first); numpy in gives numpy out, a tensor gives a tensor.

        Parameters
        ----------
        X
            Input batch, numpy array or torch tensor.
        neuron_selection
            With mode "index": one int for the whole batch or one per sample.
        """
        x, was_numpy = self._to_tensor(X)
        with GRAPH_LOCK.shared():  # no capture in any thread while this one runs modules
            explanation = self._explain(x, neuron_selection)
        return self._from_tensor(explanation.attribution, was_numpy)

    def explain(self, X: Any, neuron_selection: Any = None) -> Explanation:
        """Like ``analyze`` but returns an Explanation with the selected neurons and scores."""
        x, _ = self._to_tensor(X)
        with GRAPH_LOCK.shared():
            return self._explain(x, neuron_selection)

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
        _atomic_savez(path, payload)

    @staticmethod
    def load_npz(path: str | os.PathLike, model: nn.Module) -> Analyzer:
        """Rebuild an analyzer written by ``save_npz``."""
        with np.load(path, allow_pickle=False) as data:
            config = json.loads(str(data["config"]))
            arrays = {k[len("state/") :]: data[k] for k in data.files if k.startswith("state/")}
        return Analyzer.load(config["name"], {"config": config, "arrays": arrays}, model)

    # -- input handling -----------------------------------------------------------------
    def _to_tensor(self, X: Any) -> tuple[torch.Tensor, bool]:
        device, dtype = model_device_dtype(self.model)
        if isinstance(X, torch.Tensor):
            x, was_numpy = X, False
            if dtype is not None and x.is_floating_point() and x.dtype != dtype:
                raise InputError(
                    f"input dtype {x.dtype} does not match the model's {dtype}; "
                    f"convert it with X.to({dtype})"
                )
            if device is not None and x.device != device:
                raise InputError(
                    f"input is on {x.device} but the model is on {device}; move it with "
                    f"X.to('{device}')"
                )
        else:
            try:
                array = np.asarray(X)
            except Exception as error:  # noqa: BLE001
                raise InputError(
                    f"cannot convert input of type {type(X).__name__}: {error}"
                ) from error
            if array.dtype.kind not in "fiub":
                raise InputError(f"input must be numeric, got an array of dtype {array.dtype}")
            x = torch.as_tensor(array, device=device)
            if x.is_floating_point() or array.dtype.kind == "b":
                # A model without tensors of its own takes numpy's float64 as it is.
                x = x.to(dtype or (torch.float64 if array.dtype == np.float64 else torch.float32))
            was_numpy = True
        if x.dim() == 0 or x.shape[0] == 0:
            raise InputError(
                f"input must be a batch (first axis = samples) with at least one sample, got "
                f"shape {tuple(x.shape)}; for a single sample use X[None]"
            )
        if x.is_floating_point():
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                n_nan = int(torch.isnan(x).sum())
                n_inf = int((~finite).sum()) - n_nan
                raise InputError(
                    f"input contains {n_nan} NaN and {n_inf} infinite values; clean or impute "
                    "them before analysis"
                )
        return x, was_numpy

    @staticmethod
    def _from_tensor(x: torch.Tensor, to_numpy: bool) -> Any:
        return x.detach().cpu().numpy() if to_numpy else x.detach()

    def _explain(self, x: torch.Tensor, neuron_selection: Any) -> Explanation:
        raise NotImplementedError

    # -- neuron selection ---------------------------------------------------------------
    def _check_selection_arguments(self, neuron_selection: Any) -> None:
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
        if isinstance(neuron_selection, torch.Tensor):
            index = neuron_selection.to(flat.device)
        else:
            index = torch.as_tensor(np.asarray(neuron_selection), device=flat.device)
        if index.is_floating_point() or index.dtype == torch.bool:
            raise NeuronSelectionError(f"neuron_selection must be integers, got {index.dtype}")
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

    def __init__(
        self,
        model: nn.Module,
        *,
        neuron_selection_mode: str = "max_activation",
        reverse_keep_tensors: bool = False,
        reverse_check_finite: bool = False,
        reverse_clip_values: Sequence[float] | None = None,
        reverse_project_bottleneck_layers: bool | Sequence[float] = False,
        reverse_min_max: bool = False,
    ) -> None:
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)
        project = reverse_project_bottleneck_layers
        self.reverse_options = ReverseOptions(
            keep_tensors=reverse_keep_tensors,
            check_finite=reverse_check_finite,
            clip_values=tuple(reverse_clip_values) if reverse_clip_values is not None else None,
            project_bottleneck=(-1.0, 1.0)
            if project is True
            else (tuple(project) if project else None),
            min_max=reverse_min_max,
        )
        self._graph: ModelGraph | None = None
        self._mappings: dict[fx.Node, Mapping] = {}
        self._autograd_nodes: frozenset[fx.Node] = frozenset()
        self._plain_gradient = False

    # -- the pipeline ---------------------------------------------------------------------
    def graph(self, example_input: torch.Tensor | None = None) -> ModelGraph:
        """The model's captured graph (captured on first use and kept)."""
        refuse_hooks(self.model)  # hooks added after the capture count too
        if self._graph is None:
            with GRAPH_LOCK.exclusive():  # one capture, even when threads share the analyzer
                if self._graph is None:
                    self._build_graph(example_input)
        return self._graph

    def _build_graph(self, example_input: torch.Tensor | None) -> None:
        graph = ModelGraph(self.model, example_input, fuse_batchnorm=self.fuse_batchnorm)
        activation = graph.output_activation()
        if activation is not None:
            raise OutputActivationError(
                f"the model's output passes through {activation.operation} at node "
                f"'{activation.name}'; explanations need the pre-activation output. Use "
                "innspect.model_wo_softmax(model) or model_wo_output_activation(model)"
            )
        self._mappings = {info.node: self._mapping(info, graph) for info in graph.nodes}
        self._autograd_nodes = frozenset(
            node for node, m in self._mappings.items() if m.needs_autograd
        )
        # When every node maps by its VJP, one autograd pass is the same walk, done in C++.
        self._plain_gradient = all(
            type(m) is Gradient
            for node, m in self._mappings.items()
            if node in graph.infos
            and graph.infos[node].depends_on_input
            and node is not graph.input_node
        )
        self._graph = graph

    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        raise NotImplementedError

    def _start_value(self, output: torch.Tensor) -> torch.Tensor:
        """Signal value at the selected output neurons: 1 for gradients, y for relevance."""
        return output.detach() if self.relevance_start else torch.ones_like(output)

    def _postprocess(self, attribution: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return attribution

    def forward_record(self, x: torch.Tensor) -> ForwardRecord:
        """Run the recording forward pass (capturing the graph on first use)."""
        graph = self.graph(x)
        self._check_input_shape(graph, x)
        with GRAPH_LOCK.shared():
            return run_forward(graph, x, self._autograd_nodes)

    def model_output(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` through the captured graph, without recording."""
        graph = self.graph(x)
        self._check_input_shape(graph, x)
        with GRAPH_LOCK.shared(), torch.no_grad():
            return run_forward(graph, x, keep=False).output(graph)

    def _explain(self, x: torch.Tensor, neuron_selection: Any) -> Explanation:
        self._check_selection_arguments(neuron_selection)
        graph = self.graph(x)
        if self._plain_gradient and self.reverse_options == ReverseOptions():
            return self._explain_by_autograd(x, neuron_selection)
        record = self.forward_record(x)
        output = record.output(graph)
        selected = self._select(output, neuron_selection)
        return self._reverse_from(x, record, output, selected)

    def _explain_by_autograd(self, x: torch.Tensor, neuron_selection: Any) -> Explanation:
        graph = self.graph()
        self._check_input_shape(graph, x)
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            output = run_forward(graph, leaf, keep=False, global_autograd=True).output(graph)
        selected = self._select(output, neuron_selection)
        start, scores = self._start_signal(output, selected)
        if output.requires_grad:
            (gradient,) = torch.autograd.grad(output, leaf, start)
        else:
            gradient = torch.zeros_like(x)
        attribution = self._postprocess(gradient.detach(), x)
        return Explanation(attribution, selected, scores)

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
        graph = self.graph()
        start, scores = self._start_signal(output, selected)
        result = reverse_walk(
            graph, record, start, lambda info: self._mappings[info.node], self.reverse_options
        )
        attribution = self._postprocess(result.attribution.detach(), x)
        return Explanation(
            attribution, selected, scores, result.signals, result.min_max, result.node_sums
        )

    def _check_input_shape(self, graph: ModelGraph, x: torch.Tensor) -> None:
        """Compare the input with the first layers' expectations, for a clear message."""
        for node in graph.input_node.users:
            info = graph.infos.get(node)
            module = info.module if info is not None else None
            if isinstance(module, nn.modules.conv._ConvNd):
                dims = len(module.kernel_size)
                if x.dim() != dims + 2:
                    raise InputError(
                        f"layer '{info.name}' ({type(module).__name__}) expects input of rank "
                        f"{dims + 2} (N, C, ...spatial), got shape {tuple(x.shape)}"
                    )
                if x.shape[1] != module.in_channels:
                    raise InputError(
                        f"layer '{info.name}' expects {module.in_channels} channels on axis 1, "
                        f"got shape {tuple(x.shape)} (channels-last data needs "
                        "X.permute(0, 3, 1, 2) or np.moveaxis(X, -1, 1))"
                    )
            elif isinstance(module, nn.Linear) and x.shape[-1] != module.in_features:
                raise InputError(
                    f"layer '{info.name}' (Linear) expects {module.in_features} features on the "
                    f"last axis, got shape {tuple(x.shape)}"
                )


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


def _atomic_savez(path: str | os.PathLike, payload: dict[str, np.ndarray]) -> None:
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **payload)
