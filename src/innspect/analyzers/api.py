"""The public face of every analyzer: ``Analyzer`` and ``Explanation``.

``Analyzer`` holds what every method shares: numpy or torch in and out, input checks, the
neuron selection modes and ``target=`` (resolved by ``innspect.engine.selection``), the
finiteness check of the result, and save/load (``Persistent``). Methods computed by a
reverse walk derive from ``innspect.analyzers.reverse.ReverseAnalyzer``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import inspect
import itertools
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from innspect.analyzers.persistence import Persistent
from innspect.analyzers.plan import Plan
from innspect.engine.inputs import ModelInputs, attribute_names, model_inputs, to_tensor
from innspect.engine.reverse import ReverseResult
from innspect.engine.selection import (
    NEURON_SELECTION_MODES,
    OutputSelection,
    check_selection_arguments,
    check_target,
    resolve,
)
from innspect.errors import (
    InputError,
    ModelChangedError,
    NeuronSelectionError,
    NonFiniteRelevanceError,
    OptionError,
    OutputSelectionError,
    first_line,
)
from innspect.graph.lock import GRAPH_LOCK
from innspect.util.checks import check_axis, check_flag
from innspect.util.tensors import all_finite, model_device_dtype, nonfinite_counts


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
        option ``node_sums``; see ``innspect.evaluation.conservation``).
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


class Analyzer(Persistent):
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
    # How the method describes itself, once (the grid, the demo page, `innspect methods`
    # and the reference names read these): its family (a key of
    # innspect.analyzers.families.FAMILIES), a short title for figure columns (shown under
    # the family's title), a one-sentence summary for readers, the paper it comes from,
    # and iNNvestigate's name for it (where iNNvestigate has it, with default options).
    family: ClassVar[str] = "other"
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    innvestigate: ClassVar[str] = ""

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
            if "_options" in self.__dict__:
                init(self, model, **options)
                return
            self._options = dict(options)
            try:
                init(self, model, **options)
            except TypeError as error:
                message = unknown_option_message(cls, options)
                if message is None:
                    raise
                raise OptionError(message) from error
            except OptionError as error:
                # Named once, with the method: "lrp.epsilon: epsilon must be ...".
                if str(error).startswith(f"{cls.name}:"):
                    raise
                raise OptionError(f"{cls.name}: {error}") from error

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
        self.disable_model_checks = check_flag("disable_model_checks", disable_model_checks)
        check_flag("allow_lambda_layers", allow_lambda_layers)
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
        self.attribute_sum_axis = check_axis("attribute_sum_axis", attribute_sum_axis)
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
        with autograd_enabled():
            inputs = self._inputs(X)
            explanation = self._checked_explain(inputs, neuron_selection, target)
        return inputs.restore(explanation.attributions, self.attribute_to)

    def explain(self, X: Any, neuron_selection: Any = None, target: Any = None) -> Explanation:
        """Like ``analyze`` but returns an Explanation with the selected neurons and scores."""
        _refuse_meta(self.model, X)
        with autograd_enabled():
            return self._checked_explain(self._inputs(X), neuron_selection, target)

    def _checked_explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any
    ) -> Explanation:
        """``_explain`` holding the graph lock shared, with clear errors around it."""
        self._check_sum_axis(inputs)
        with GRAPH_LOCK.shared():  # no capture in any thread while this one runs modules
            explanation = self._explain_unchanged(inputs, neuron_selection, target)
        self._check_finite(explanation)
        return explanation

    def _explain_unchanged(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any
    ) -> Explanation:
        """``_explain`` on a model whose tensors did not change while it ran.

        Beside a training thread an optimizer step may land between the forward pass and
        the walk back (autograd then fails: "modified by an inplace operation") or between
        two layers (the result would mix two models, silently). Every parameter and buffer's
        object and version are compared before and after: a call that saw a change is run
        again; after a few such runs (training steps faster than the analysis) a copy of the
        model taken between two changes is explained. Either way the result is the
        explanation of the model as it was at some point of training
        (docs/reliability.md)."""
        for _ in range(_ATTEMPTS):
            before = ModelState(self.model)
            try:
                explanation = self._explain(inputs, neuron_selection, target)
            except InputError as error:
                if not before.unchanged():
                    continue
                raise _with_integer_input_hint(error, inputs) from error
            except RuntimeError:
                if not before.unchanged():
                    continue
                raise
            if before.unchanged():
                return explanation
        twin = type(self)(self._snapshot(), **self._options)
        return twin._explain(inputs, neuron_selection, target)

    def _snapshot(self) -> nn.Module:
        """A copy of the model whose tensors did not change while it was copied."""
        for _ in range(_ATTEMPTS):
            before = ModelState(self.model)
            try:
                copied = copy.deepcopy(self.model)
            except Exception as error:  # noqa: BLE001 - any object the model holds
                raise ModelChangedError(
                    f"{self.name}: the model changed during each of {_ATTEMPTS} attempts (a "
                    "training step in another thread) and cannot be copied to explain a "
                    f"snapshot ({first_line(error)}): hold one lock around optimizer.step() "
                    "and the analysis"
                ) from error
            if before.unchanged():
                return copied
        raise ModelChangedError(
            f"{self.name}: the model's weights or statistics changed during each of "
            f"{_ATTEMPTS} attempts and while it was copied (a training step or a train-mode "
            "forward in another thread): explain a copy made between steps "
            "(copy.deepcopy(model)), or hold one lock around optimizer.step() and the analysis"
        )

    def _check_sum_axis(self, inputs: ModelInputs) -> None:
        """``attribute_sum_axis`` must exist in every attributed input, checked before the
        computation rather than after it (nodes named by ``attribute_to`` are checked when
        their attributions are summed)."""
        axis = self.attribute_sum_axis
        if axis is None:
            return
        names = self._attribute_names or inputs.default_sources()
        for name, value in inputs.by_name().items():
            if name in names and isinstance(value, torch.Tensor):
                if not -value.dim() <= axis < value.dim():
                    raise OptionError(
                        f"{self.name}: attribute_sum_axis={axis} but input {name!r} has "
                        f"{value.dim()} axes (shape {tuple(value.shape)}; valid: "
                        f"{-value.dim()} .. {value.dim() - 1})"
                    )

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

    # -- input handling -----------------------------------------------------------------
    def _inputs(self, X: Any) -> ModelInputs:
        """``X`` checked and bound to the model's forward (see ``engine.inputs``)."""
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
            raise InputError(no_float_input_message(inputs))
        return names

    def _to_tensor(self, X: Any) -> tuple[torch.Tensor, bool]:
        """One input tensor, checked (wave 1's single-input conversion)."""
        device, dtype = model_device_dtype(self.model)
        return to_tensor(X, device, dtype)

    def _explain(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        raise NotImplementedError

    # -- what a call explains -----------------------------------------------------------
    def _call_target(self, neuron_selection: Any, target: Any) -> Any:
        """The call's target (per call, else the analyzer's), checked against the call's
        neuron selection: the first step of every ``_explain``."""
        target = self.target if target is None else check_target(target)
        check_selection_arguments(self.neuron_selection_mode, neuron_selection, target)
        return target

    def _resolve(
        self, output: torch.Tensor, neuron_selection: Any, target: Any, inputs: ModelInputs
    ) -> OutputSelection:
        """The call's selection on the explained ``output`` (``engine.selection.resolve``
        in this analyzer's mode), which must have one row per sample of ``inputs``."""
        unbatched = [
            (name, tuple(value.shape))
            for name, value in inputs.by_name().items()
            if isinstance(value, torch.Tensor) and value.dim() == 1
        ]
        if unbatched and output.dim() >= 1 and output.shape[0] != inputs.batch_size:
            name, shape = unbatched[0]
            raise InputError(
                f"input {name!r} of shape {shape} has no batch axis (the model returned "
                f"{tuple(output.shape)} for it): the first axis must be the samples; for one "
                f"sample pass X[None], shape (1, {shape[0]})"
            )
        return resolve(
            output, self.neuron_selection_mode, neuron_selection, target, inputs.batch_size
        )


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Autograd on for the analysis, whatever the caller's mode: under
    ``torch.inference_mode()`` or ``torch.no_grad()`` every gradient would be missing and
    the reverse methods would return zeros. The caller's mode is restored on exit."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


_ATTEMPTS = 3  # runs of a call beside a training thread before it explains a copy


class ModelState:
    """What the model's tensors are now, to tell later whether they changed.

    Each parameter and buffer's object and version (bumped by every in-place write: an
    optimizer step, a train-mode forward's running statistics, ``load_state_dict``). When
    other threads run, also a fingerprint of the values: torch bumps a version after the
    write, so a check that falls between the two would miss the change; the values do not.
    A fingerprint, not a copy: a copy of the weights per call doubled the peak memory of
    every analysis run beside any other thread (a progress bar's, a server's).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.versions = self._versions()
        self.fingerprint = None
        if threading.active_count() > 1:
            self.fingerprint = self._fingerprint()

    def _tensors(self) -> Iterator[torch.Tensor]:
        # A lazy module's parameters have no values until its first forward (which then
        # replaces them: a change, seen by their objects).
        return (
            t
            for t in itertools.chain(self.model.parameters(), self.model.buffers())
            if not isinstance(t, nn.parameter.UninitializedTensorMixin)
        )

    def _versions(self) -> tuple[tuple[int, int], ...]:
        return tuple((id(t), t._version) for t in self._tensors())

    def _fingerprint(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return model_fingerprint(list(self._tensors()))

    def unchanged(self) -> bool:
        """Whether every tensor is the same object, version and (with threads) value."""
        if self._versions() != self.versions:
            return False
        if self.fingerprint is None:
            return True
        return all(
            torch.equal(now, then) or bool(torch.allclose(now, then, 0.0, 0.0, equal_nan=True))
            for now, then in zip(self._fingerprint(), self.fingerprint, strict=True)
        )


def model_fingerprint(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The Euclidean norm of every floating tensor, and the integer tensors' values.

    The norms are taken in each tensor's dtype by one fused call for all tensors (the
    check's own time is the window a concurrent write must fall into; few calls keep it
    short for small models, and no copy keeps large ones' memory flat). A write moves a
    norm but for changes below its rounding or that keep it, and an in-place write only
    escapes the version check while it runs (torch bumps the version after it), when real
    updates (an optimizer step) change many values at once. Integer and boolean buffers
    (counters, masks) are small: their values are kept. A tensor with NaN has NaN norms:
    for it only the version is compared (NaN equals NaN in ``ModelState.unchanged``).
    """
    floats, exact = [], []
    for tensor in tensors:
        values = tensor.detach()
        if values.is_complex():
            values = torch.view_as_real(values)
        (floats if values.is_floating_point() else exact).append(values)
    parts = []
    if floats:
        parts.append(_stacked(torch._foreach_norm(floats, 2)))
    if exact:
        parts.append(_stacked([t.reshape(-1).to(torch.int64) for t in exact], cat=True))
    return parts


def _stacked(
    values: list[torch.Tensor] | tuple[torch.Tensor, ...], cat: bool = False
) -> torch.Tensor:
    """One tensor of ``values``, moved to the CPU only when they lie on several devices."""
    join = torch.cat if cat else torch.stack
    if len({v.device for v in values}) > 1:
        return join([v.cpu() for v in values])
    return join(values)


def analyzer_parameters(cls: type, inherited: bool = True) -> tuple[set[str], set[str], bool]:
    """(accepted option names, required names, takes ``**kwargs``) of ``cls.__init__``.

    The first two parameters (self, model) are not options. With ``inherited``, options that
    ``**kwargs`` forwards to base classes count as accepted.
    """
    signature = inspect.signature(cls.__init__)
    accepted: set[str] = set()
    required: set[str] = set()
    var_keyword = False
    for index, (name, parameter) in enumerate(signature.parameters.items()):
        if index < 2:  # self, model
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            accepted.add(name)
            if parameter.default is inspect.Parameter.empty:
                required.add(name)
    if var_keyword and inherited:
        for base in cls.__mro__[1:]:
            if "__init__" in base.__dict__ and issubclass(base, Analyzer):
                base_accepted, _, _ = analyzer_parameters(base)
                accepted |= base_accepted
    return accepted, required, var_keyword


def unknown_option_message(cls: type, options: dict[str, Any]) -> str | None:
    """For a constructor that failed with a TypeError: the message for the first option that
    ``cls`` does not take ("'epsilom' is not an option of lrp.epsilon; did you mean
    'epsilon'? valid options: ..."), or None when every option is taken (the TypeError is
    about something else). A class that passes unknown options to an inner analyzer
    (``forwards_options_to_inner``) leaves them to that analyzer."""
    if getattr(cls, "forwards_options_to_inner", False):
        return None
    accepted = analyzer_parameters(cls)[0]
    unknown = [name for name in options if name not in accepted]
    if not unknown:
        return None
    shared = analyzer_parameters(Analyzer)[0]
    close = difflib.get_close_matches(unknown[0], sorted(accepted), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    own = sorted(n for n in accepted - shared if not n.startswith("reverse_"))
    return (
        f"'{unknown[0]}' is not an option of {getattr(cls, 'name', cls.__name__)}; {hint}"
        f"valid options: {', '.join(own) or 'none'} (and the reverse_* options and those "
        "every analyzer takes; see `innspect methods`)"
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


def floating_value(method: str, name: str, value: Any) -> torch.Tensor:
    """``value``, an attributed input or node's, if it is a floating tensor; else the
    InputError of a method that needs one (averaging over points, a reference, occlusion)."""
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        dtype = getattr(value, "dtype", type(value).__name__)
        raise InputError(f"{method} needs floating-point values; {name!r} is {dtype}")
    return value


def no_float_input_message(inputs: ModelInputs, embeddings: Sequence[str] = ()) -> str:
    """The error for inputs none of which is floating point (nothing to attribute)."""
    described = ", ".join(
        f"{n}: {v.dtype}" if isinstance(v, torch.Tensor) else f"{n}: {type(v).__name__}"
        for n, v in inputs.by_name().items()
    )
    hint = f", e.g. attribute_to={embeddings[0]!r}" if embeddings else ""
    return (
        f"no input is floating point ({described}), so there is nothing to attribute by "
        f"default; name a graph node with attribute_to=... (an embedding's output{hint})"
    )
