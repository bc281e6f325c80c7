"""DeepLIFT (rescale and reveal-cancel) and DeepLiftShap.

DeepLIFT (Shrikumar et al. 2017, arXiv 1704.02685) explains ``f(x) - f(x_ref)``: one batched
forward pass of the input and its reference (the engine's reference pass), then one reverse
walk of multipliers (``innspect.rules.deeplift``); the attribution is the multiplier at the
input times ``x - x_ref`` and sums to the difference of the explained output
(summation-to-delta). DeepLiftShap averages DeepLIFT over a set of references (Lundberg &
Lee 2017, arXiv 1705.07874; Captum's ``DeepLiftShap``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import fx, nn

from innspect.analyzers.api import Explanation, floating_value
from innspect.analyzers.averaged import Averaged, Points
from innspect.analyzers.baselines import broadcast_baseline, named_baseline
from innspect.analyzers.reverse import ReverseAnalyzer, Selecting
from innspect.engine.forward import run_forward_with_reference
from innspect.engine.inputs import ModelInputs
from innspect.engine.reverse import Mapping, Unsupported
from innspect.errors import InputError, NotAnalyzableModelError, OptionError
from innspect.graph.graph import ModelGraph, NodeInfo
from innspect.graph.lock import GRAPH_LOCK
from innspect.graph.ops import Kind
from innspect.rules.basic import RECOMPUTED_GRADIENT, LinearGradient
from innspect.rules.deeplift import LinearSplit, MaxPoolDelta, Rescale, RevealCancel
from innspect.util.checks import check_int

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
    family = "reference"
    title = "DeepLIFT"
    summary = (
        "Contributions of each input's difference from a reference (0 by default) to the "
        "score's difference, by multipliers passed back layer by layer; they sum to that "
        "difference."
    )
    paper = "Shrikumar et al. 2017, ICML (arXiv 1704.02685)"
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
    def reference(self, x: torch.Tensor, name: str = "input") -> torch.Tensor:
        """The reference for ``x``, the attributed input or node ``name``
        (``reference_inputs`` broadcast to its shape, or its entry in a dict by name)."""
        return named_baseline(self.reference_inputs, x, name, "reference_inputs")

    def explain_feed(
        self,
        graph: ModelGraph,
        feed: dict[fx.Node, Any],
        selection: Selecting,
        references: dict[fx.Node, Any] | None = None,
    ) -> Explanation:
        """DeepLIFT of the values in ``feed`` against ``references`` (by attributed node, each
        broadcastable to its value; default: ``reference_inputs`` for every one): one
        forward pass of input and reference, one walk of multipliers."""
        self._check_input_shapes(graph, feed)
        feed = dict(feed)
        inner = [node for node in graph.source_nodes if node not in feed]
        if inner:
            # Attributed inner nodes (an embedding's output): their values on the input are
            # fed to both passes, the reference replacing them in the second.
            _, clean = self.clean_pass(graph, feed)
            feed.update({node: clean[node].detach() for node in inner})
        reference_feed = dict(feed)
        for node in graph.source_nodes:
            value = floating_value(self.name, graph.source_names[node], feed[node])
            given = None if references is None else references.get(node)
            reference_feed[node] = (
                self.reference(value, graph.source_names[node])
                if given is None
                else broadcast_baseline(given, value, "reference_inputs")
            )
        with GRAPH_LOCK.shared():
            record = run_forward_with_reference(graph, feed, reference_feed)

        def contributions(multipliers: dict[fx.Node, torch.Tensor]) -> dict:
            return {
                node: multipliers[node] * (feed[node] - reference_feed[node])
                for node in graph.source_nodes
                if node in multipliers
            }

        return self._walk(graph, record, selection, feed, contributions)


class DeepLIFTWrapper(DeepLIFT):
    """DeepLIFT under iNNvestigate 1.0.9's name for the original DeepLIFT (same parameters)."""

    name = "deep_lift.wrapper"
    family = "reference"
    title = "DeepLIFT (wrapper)"
    summary = (
        "DeepLIFT under iNNvestigate 1.0.9's name for the original DeepLIFT (the same method)."
    )
    paper = "Shrikumar et al. 2017, ICML (arXiv 1704.02685)"
    innvestigate = "DeepLIFTWrapper"


class DeepLiftShap(Averaged):
    """DeepLiftShap: DeepLIFT averaged over a set of references (Lundberg & Lee 2017,
    arXiv 1705.07874; Captum's DeepLiftShap).

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
    family = "reference"
    title = "DeepLift SHAP"
    summary = (
        "DeepLIFT averaged over a set of reference samples (a background of the data): an "
        "estimate of SHAP values."
    )
    paper = "Lundberg & Lee 2017, NeurIPS (arXiv 1705.07874)"
    is_trainable = True
    default_inner = "deep_lift"

    def __init__(
        self,
        model: nn.Module,
        *,
        reference_inputs: Any = None,
        background_size: int = 16,
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        if "inner" in kwargs:
            raise TypeError("deep_lift_shap averages deep_lift; it takes no inner=")
        super().__init__(model, **kwargs)
        self.background_size = check_int("background_size", background_size, 1)
        self.seed = seed
        self.references: torch.Tensor | None = None
        if reference_inputs is not None:
            several = (
                "deep_lift_shap averages over references for one input, given as (B, ...) "
                "samples; for a model with several inputs use deep_lift with "
                "reference_inputs={name: reference, ...}"
            )
            if isinstance(reference_inputs, dict):
                raise OptionError(f"{several} (got a dict)")
            try:
                self.references = self._as_tensor(reference_inputs)
            except InputError as error:  # ragged: arrays of several shapes
                raise OptionError(f"{several} ({error})") from error

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
        self, inputs: ModelInputs, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        if self.references is None:
            self._call_target(neuron_selection, target)
            raise InputError(
                "deep_lift_shap needs references: pass reference_inputs=(B, ...) samples or "
                "call fit(X) on data to draw them"
            )
        graph = self.inner.graph(inputs)
        sources = [graph.source_names[node] for node in graph.source_nodes]
        if len(sources) != 1 or graph.source_nodes[0].op != "placeholder":
            raise InputError(
                f"deep_lift_shap explains models with one attributed input (got {sources}); "
                "use deep_lift with reference_inputs for several"
            )
        return super()._explain(inputs, neuron_selection, target)

    def _points(self, node: fx.Node, x: torch.Tensor, name: str, call: dict[str, Any]) -> Points:
        refs = self.references
        assert refs is not None
        if refs.shape[1:] != x.shape[1:]:
            raise InputError(
                f"reference_inputs hold samples of shape {tuple(refs.shape[1:])}, the input "
                f"{tuple(x.shape[1:])}; each reference must be shaped like one sample"
            )
        refs = refs.to(device=x.device, dtype=x.dtype)

        def options(samples: torch.Tensor, points: torch.Tensor) -> dict[str, Any]:
            return {"references": {node: refs[points]}}

        # Row k pairs sample k // B with reference k % B (Captum's order).
        return Points(refs.shape[0], None, options=options, by_sample=True)


# The registry imports this module and registers these on first lookup.
ANALYZERS = [DeepLIFT, DeepLIFTWrapper, DeepLiftShap]
