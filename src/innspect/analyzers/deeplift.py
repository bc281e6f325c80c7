"""DeepLIFT (rescale and reveal-cancel) and DeepLiftShap.

DeepLIFT (Shrikumar et al. 2017, arXiv 1704.02685) explains ``f(x) - f(x_ref)``: one batched
forward pass of the input and its reference (the engine's reference pass), then one reverse
walk of multipliers (``innspect.rules.deeplift``); the attribution is the multiplier at the
input times ``x - x_ref`` and sums to the difference of the explained output
(summation-to-delta). DeepLiftShap averages DeepLIFT over a set of references (Lundberg &
Lee 2017, arXiv 1705.07874; Captum's ``DeepLiftShap``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from innspect.analyzers.base import Analyzer, Explanation, ReverseAnalyzer, _print_walk
from innspect.analyzers.baselines import broadcast_baseline
from innspect.analyzers.io import ModelInputs, target_gradient, target_rows
from innspect.engine.forward import run_forward_with_reference
from innspect.engine.reverse import Mapping, Unsupported, reverse_walk
from innspect.errors import InputError, NotAnalyzableModelError
from innspect.graph.capture import GRAPH_LOCK
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.kinds import Kind
from innspect.progress import progress
from innspect.rules.basic import RECOMPUTED_GRADIENT, LinearGradient
from innspect.rules.deeplift import LinearSplit, MaxPoolDelta, Rescale, RevealCancel

NONLINEAR_MODES = ("rescale", "reveal_cancel")
MAX_POOLING_MODES = ("gradient", "delta")
_LINEAR_GRADIENT = LinearGradient()
_RESCALE = Rescale()
_REVEAL_CANCEL = RevealCancel()
_LINEAR_SPLIT = LinearSplit()
_MAX_POOL_DELTA = MaxPoolDelta()
# Kinds that are linear (affine) in their signal inputs: the multiplier is their gradient.
_LINEAR_KINDS = (
    Kind.LINEAR_NO_PARAM,
    Kind.REARRANGE,
    Kind.IDENTITY,
    Kind.SCALE,
    Kind.CONSTANT,
    Kind.INPUT,
)


class DeepLIFT(ReverseAnalyzer):
    """DeepLIFT (Shrikumar et al. 2017): contributions of differences from a reference input.

    Parameters
    ----------
    reference_inputs
        The reference ``x_ref``: a number, or an array/tensor broadcastable to the input
        (one reference for all samples, or one per sample). Default 0.
    nonlinear_mode
        "rescale" (sec. 3.5.2) or "reveal_cancel" (sec. 3.5.3: positive and negative
        contributions get separate multipliers at a non-linearity that follows a linear
        layer; elsewhere, e.g. after a residual addition, there is no such split and the
        rescale rule applies).
    max_pooling
        "gradient" (default, the original DeepLIFT's: the gradient at x, which loses
        summation-to-delta where the maximum's position differs between input and
        reference) or "delta" (Captum's rule: keeps summation-to-delta).
    """

    name = "deep_lift"
    # Eval-mode BatchNorm folded into its convolution: one linear unit, as in the paper.
    fuse_batchnorm: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        *,
        reference_inputs: Any = 0.0,
        nonlinear_mode: str = "rescale",
        max_pooling: str = "gradient",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if nonlinear_mode not in NONLINEAR_MODES:
            raise ValueError(
                f"nonlinear_mode must be one of {NONLINEAR_MODES}, got {nonlinear_mode!r}"
            )
        if max_pooling not in MAX_POOLING_MODES:
            raise ValueError(f"max_pooling must be one of {MAX_POOLING_MODES}, got {max_pooling!r}")
        self.reference_inputs = reference_inputs
        self.nonlinear_mode = nonlinear_mode
        self.max_pooling = max_pooling

    # -- the plan ---------------------------------------------------------------------------
    def _mapping(self, info: NodeInfo, graph: ModelGraph) -> Mapping:
        kind = info.kind
        if kind in (Kind.LINEAR, Kind.BATCHNORM):
            if self._has_linear_op(info, graph):
                return _LINEAR_SPLIT if self.nonlinear_mode == "reveal_cancel" else _LINEAR_GRADIENT
            return RECOMPUTED_GRADIENT
        if kind in _LINEAR_KINDS:
            return RECOMPUTED_GRADIENT
        if kind is Kind.ACTIVATION and len(info.signal_inputs) == 1:
            if self.nonlinear_mode == "reveal_cancel" and self._after_linear_layer(info, graph):
                return _REVEAL_CANCEL
            return _RESCALE
        if kind is Kind.MAX_POOL and len(info.signal_inputs) == 1:
            return _MAX_POOL_DELTA if self.max_pooling == "delta" else RECOMPUTED_GRADIENT
        return Unsupported(
            self.name,
            "DeepLIFT has rules for linear layers, sums, rearrangements, element-wise "
            "activations and max pooling only (a product of two signals, a softmax or a "
            "normalisation inside the network has none)",
        )

    @staticmethod
    def _has_linear_op(info: NodeInfo, graph: ModelGraph) -> bool:
        try:
            graph.linear_op(info)
        except (NotAnalyzableModelError, TypeError, ValueError):
            return False
        return True

    def _after_linear_layer(self, info: NodeInfo, graph: ModelGraph) -> bool:
        source = graph.infos[info.signal_inputs[0]]
        return source.kind in (Kind.LINEAR, Kind.BATCHNORM) and self._has_linear_op(source, graph)

    # -- the analysis -------------------------------------------------------------------------
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The reference for ``x`` (``reference_inputs`` broadcast to its shape)."""
        return broadcast_baseline(self.reference_inputs, x, "reference_inputs")

    def _explain(
        self, inputs: ModelInputs | torch.Tensor, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        return self.explain_from(inputs, None, neuron_selection, target)

    def explain_from(
        self,
        inputs: ModelInputs | torch.Tensor,
        references: dict[str, torch.Tensor] | None,
        neuron_selection: Any = None,
        target: Any = None,
        *,
        checked: bool = False,
    ) -> Explanation:
        """DeepLIFT of ``inputs`` against ``references`` (by attributed name, each shaped like
        its input; default: ``reference_inputs`` for every attributed input). ``checked``:
        the neuron selection was checked by the caller (DeepLiftShap)."""
        inputs = self._inputs(inputs)
        target = self._target(target) if checked else self._call_target(neuron_selection, target)
        graph = self.graph(inputs)
        feed = graph.feed(inputs.values)
        self._check_input_shapes(graph, feed)
        inner = [node for node in graph.source_nodes if node not in feed]
        if inner:
            # Attributed inner nodes (an embedding's output): their values on the input are
            # fed to both passes, the reference replacing them in the second.
            _, clean = self._clean_pass(graph, feed)
            feed.update({node: clean[node].detach() for node in inner})
        reference_feed = dict(feed)
        for node in graph.source_nodes:
            value = feed[node]
            if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                raise InputError(
                    f"{self.name} needs floating-point inputs; '{graph.source_names[node]}' "
                    f"is {getattr(value, 'dtype', type(value).__name__)}"
                )
            name = graph.source_names[node]
            given = None if references is None else references.get(name)
            reference_feed[node] = (
                self.reference(value)
                if given is None
                else broadcast_baseline(given, value, "reference_inputs")
            )
        with GRAPH_LOCK.shared():
            record = run_forward_with_reference(graph, feed, reference_feed)
        output, starts_from = self._output_and_starts(graph, record.values)
        selected, scores, start = self._start(output, neuron_selection, target)
        result = reverse_walk(
            graph,
            record,
            starts_from(start),
            lambda info: self._mappings[info.node],
            self.reverse_options,
        )
        contributions = {
            node: result.attributions[node] * (feed[node] - reference_feed[node])
            for node in graph.source_nodes
            if node in result.attributions
        }
        attributions = self._finish(graph, contributions, feed)
        if self._print_min_max:  # reverse_check_min_max_values / reverse_verbose
            _print_walk(self, result.min_max)
        return Explanation.of_walk(attributions, selected, scores, result)


class DeepLIFTWrapper(DeepLIFT):
    """DeepLIFT under iNNvestigate 1.0.9's name for the original DeepLIFT (same parameters)."""

    name = "deep_lift.wrapper"


class DeepLiftShap(Analyzer):
    """DeepLiftShap: DeepLIFT averaged over a set of references (Captum's DeepLiftShap).

    Parameters
    ----------
    reference_inputs
        The references, a batch ``(B, ...)`` of samples shaped like one input each (e.g. a
        background sample of the training data). Without it, ``fit(X)`` draws
        ``background_size`` samples of ``X``.
    background_size
        How many samples ``fit`` draws.
    seed
        Seed of ``fit``'s draw.
    batch_size
        Input/reference pairs explained per forward pass.
    verbose
        Show a progress bar.
    nonlinear_mode, max_pooling, reverse options
        As for ``deep_lift``.
    """

    name = "deep_lift_shap"
    is_trainable = True

    def __init__(
        self,
        model: nn.Module,
        *,
        reference_inputs: Any = None,
        background_size: int = 16,
        seed: int | None = 0,
        batch_size: int = 64,
        verbose: bool = False,
        neuron_selection_mode: str = "max_activation",
        target: Any = None,
        output: Any = None,
        attribute_to: Any = None,
        **deeplift_options: Any,
    ) -> None:
        super().__init__(
            model,
            neuron_selection_mode=neuron_selection_mode,
            target=target,
            output=output,
            attribute_to=attribute_to,
        )
        if int(batch_size) < 1 or int(background_size) < 1:
            raise ValueError(
                f"batch_size and background_size must be >= 1, got {batch_size}, {background_size}"
            )
        inner = "all" if neuron_selection_mode == "all" else "index"
        self._deeplift = DeepLIFT(
            model,
            neuron_selection_mode=inner,
            output=output,
            attribute_to=attribute_to,
            **deeplift_options,
        )
        self.background_size = int(background_size)
        self.seed = seed
        self.batch_size = int(batch_size)
        self.verbose = verbose
        self.references: torch.Tensor | None = None
        if reference_inputs is not None:
            self.references = self._as_tensor(reference_inputs)

    def _as_tensor(self, value: Any) -> torch.Tensor:
        tensor, _ = self._to_tensor(value)
        return tensor.detach()

    def fit(self, X: Any, **kwargs: Any) -> None:
        """Draw ``background_size`` samples of ``X`` as the references."""
        data = self._as_tensor(X)
        generator = torch.Generator()
        if self.seed is not None:
            generator.manual_seed(self.seed)
        count = min(self.background_size, data.shape[0])
        rows = torch.randperm(data.shape[0], generator=generator)[:count]
        self.references = data[rows.to(data.device)]

    def get_state(self) -> dict[str, np.ndarray]:
        if self.references is None:
            return {}
        return {"references": self.references.detach().cpu().numpy()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if "references" in state:
            self.references = self._as_tensor(state["references"])

    def _explain(
        self, inputs: ModelInputs | torch.Tensor, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        inputs = self._inputs(inputs)
        target = self._call_target(neuron_selection, target)
        refs = self.references
        if refs is None:
            raise InputError(
                "deep_lift_shap needs references: pass reference_inputs=(B, ...) samples or "
                "call fit(X) on data to draw them"
            )
        deeplift = self._deeplift
        graph = deeplift.graph(inputs)
        feed = graph.feed(inputs.values)
        sources = [graph.source_names[node] for node in graph.source_nodes]
        if len(sources) != 1 or graph.source_nodes[0] not in feed:
            raise InputError(
                f"deep_lift_shap explains models with one attributed input (got {sources}); "
                "use deep_lift with reference_inputs for several"
            )
        x = feed[graph.source_nodes[0]]
        if refs.shape[1:] != x.shape[1:]:
            raise InputError(
                f"reference_inputs hold samples of shape {tuple(refs.shape[1:])}, the input "
                f"{tuple(x.shape[1:])}; each reference must be shaped like one sample"
            )
        refs = refs.to(device=x.device, dtype=x.dtype)
        output, _ = deeplift._clean_pass(graph, feed)
        n, b = x.shape[0], refs.shape[0]
        if target is None:
            selected = self._select(output, neuron_selection)
            flat = output.reshape(n, -1)
            rows = torch.arange(n, device=flat.device)
            scores = flat.sum(dim=1) if selected is None else flat[rows, selected]
        else:
            selected, (_, scores) = None, target_gradient(output, target)
        total = torch.zeros_like(x)
        # Row k of the expanded batch pairs sample k // B with reference k % B.
        starts = range(0, n * b, self.batch_size)
        for start in progress(starts, self.verbose, total=len(starts), desc=self.name):
            pairs = torch.arange(start, min(start + self.batch_size, n * b), device=x.device)
            samples = pairs // b
            values = [
                v[samples] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                for v in inputs.values
            ]
            explanation = deeplift.explain_from(
                replace(inputs, values=values),
                {sources[0]: refs[pairs % b]},
                None if selected is None else selected[samples],
                target_rows(target, samples, n, output.dim()),
                checked=True,
            )
            total.index_add_(0, samples, explanation.attribution)
        attribution = total / b
        return Explanation(attribution, selected, scores, attributions={sources[0]: attribution})


# The registry imports this module and registers these on first lookup.
ANALYZERS = [DeepLIFT, DeepLIFTWrapper, DeepLiftShap]
