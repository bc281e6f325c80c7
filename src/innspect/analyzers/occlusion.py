"""Occlusion: the drop of the explained output when a sliding window is replaced by a baseline.

Zeiler & Fergus 2014 (arXiv 1311.2901), with Captum's ``Occlusion`` semantics: windows start
at index 0 on every axis and move by ``strides`` until the axis is covered (the last window
on an axis may be cut off by the input's end); each input element gets the mean, over the
windows that cover it, of ``score(x) - score(x with the window set to the baseline)``.
Windows are evaluated ``batch_size`` at a time, as one forward pass each; unless ``exact``,
the passes fold eval-mode batch norms into their convolutions and run channels-last on CPU
(innspect.engine.layout says why).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.analyzers.api import Analyzer, Explanation, floating_value
from innspect.analyzers.baselines import broadcast_baseline
from innspect.analyzers.gradient import GradientAnalyzer
from innspect.engine.inputs import ModelInputs
from innspect.engine.layout import channels_last, channels_last_is_faster
from innspect.engine.selection import OutputSelection
from innspect.errors import InputError
from innspect.util.progress import progress

# The default window: the whole channel axis and 1/8 of every other axis (an 8x8 grid of
# non-overlapping windows on an image), so the method works on any model without options.
_DEFAULT_GRID = 8


def _positive_ints(value: Any, what: str) -> tuple[int, ...] | int:
    """An int or a tuple of ints, each >= 1 (a clear error for 0, negatives or non-ints)."""
    items = (value,) if isinstance(value, int | np.integer) else tuple(value)
    for item in items:
        if not isinstance(item, int | np.integer) or isinstance(item, bool) or item < 1:
            raise InputError(f"{what} must be positive integers, got {value!r}")
    return int(value) if isinstance(value, int | np.integer) else tuple(int(i) for i in items)


class Occlusion(Analyzer):
    """Occlusion (Zeiler & Fergus 2014): mean output drop over the windows covering each element.

    Parameters
    ----------
    window_shape
        Shape of the occluding window over every axis but the batch axis (channels included,
        as in Captum), e.g. ``(3, 8, 8)`` on images. Default: the whole channel axis and 1/8
        of every other axis (inputs of rank 2: 1/8 of the feature axis).
    strides
        Step of the window per axis (an int for all axes or one per axis). Default: the
        window shape (non-overlapping windows; Captum's default is 1). Where the window is
        smaller than the axis, the stride may not exceed it (elements would be skipped).
    baseline
        The value the window is replaced by: a number, or a tensor/array broadcastable to
        the input (one baseline per sample, or one for all).
    batch_size
        Windows evaluated per forward pass (each pass holds ``batch_size`` x batch rows).
    verbose
        Show a progress bar.
    exact
        True: every pass runs the model's own operations in the input's layout (equal to
        the bit to Captum's Occlusion given the same input). False: the passes fold each
        eval-mode batch norm into the convolution before it and, on CPU, run 4-D and 5-D
        values channels-last (oneDNN's own layout); a resnet50 pass then takes ~0.7x the
        time, and the scores agree with exact passes to float rounding. Where the model
        cannot run that way (a ``view`` of a channels-last value) and for ``attribute_to``
        (inner nodes), passes are exact. None (default): exact for float64 inputs, else
        False.
    """

    name = "occlusion"
    family = "occlusion"
    title = "occlusion"
    summary = (
        "How much the score drops when a window of the input is replaced by a baseline, "
        "averaged over the windows that cover each element."
    )
    paper = "Zeiler & Fergus 2014, ECCV (arXiv 1311.2901)"

    def __init__(
        self,
        model: nn.Module,
        *,
        window_shape: Sequence[int] | None = None,
        strides: int | Sequence[int] | None = None,
        baseline: Any = 0.0,
        batch_size: int = 64,
        verbose: bool = False,
        exact: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if window_shape is not None:
            window_shape = _positive_ints(tuple(window_shape), "window_shape")
        if strides is not None:
            strides = _positive_ints(strides, "strides")
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.window_shape = window_shape
        self.strides = strides
        self.baseline = baseline
        self.batch_size = int(batch_size)
        self.verbose = verbose
        if exact not in (None, True, False):
            raise InputError(f"exact must be True, False or None (by dtype), got {exact!r}")
        self.exact = exact
        self._engines: dict[bool, GradientAnalyzer] = {}

    # -- geometry ---------------------------------------------------------------------------
    def windows(self, shape: Sequence[int]) -> list[tuple[slice, ...]]:
        """The windows on an input of ``shape`` (batch axis excluded), in Captum's order
        (the first axis varies fastest), as slices."""
        shape = tuple(shape)
        window = self._window(shape)
        strides = self._strides(shape, window)
        starts = []
        for size, w, s in zip(shape, window, strides, strict=True):
            count = math.ceil((size - w) / s) + 1
            starts.append([i * s for i in range(count)])
        result = []
        # itertools.product varies the last axis fastest: reverse in, reverse out.
        for corner in itertools.product(*reversed(starts)):
            corner = corner[::-1]
            spans = zip(corner, window, shape, strict=True)
            result.append(tuple(slice(c, min(c + w, size)) for c, w, size in spans))
        return result

    def _window(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.window_shape is None:
            if len(shape) == 1:
                return (max(1, shape[0] // _DEFAULT_GRID),)
            return (shape[0],) + tuple(max(1, s // _DEFAULT_GRID) for s in shape[1:])
        window = self.window_shape
        if len(window) != len(shape):
            raise InputError(
                f"window_shape {window} has {len(window)} axes but each sample has shape "
                f"{shape} ({len(shape)} axes, channels included); give one size per axis"
            )
        if any(w > s for w, s in zip(window, shape, strict=True)):
            raise InputError(
                f"window_shape {window} is larger than a sample of shape {shape}; "
                "each window size must be at most the axis' size"
            )
        return window

    def _strides(self, shape: tuple[int, ...], window: tuple[int, ...]) -> tuple[int, ...]:
        strides = self.strides
        if strides is None:
            return window
        if isinstance(strides, int):
            strides = (strides,) * len(shape)
        if len(strides) != len(shape):
            raise InputError(
                f"strides {strides} has {len(strides)} axes but each sample has shape {shape}; "
                "give one int, or one stride per axis"
            )
        for size, w, s in zip(shape, window, strides, strict=True):
            if w < size and s > w:
                raise InputError(
                    f"stride {s} is larger than the window size {w} on an axis of size {size}: "
                    f"some elements would never be occluded (strides {strides}, window {window})"
                )
        return tuple(strides)

    # -- the analysis -------------------------------------------------------------------------
    def _engine(self, exact: bool) -> GradientAnalyzer:
        """Runs the forward passes through the captured graph (several inputs, ``output=``,
        ``attribute_to`` an inner node: the engine's own input handling); not ``exact``:
        with batch norms folded."""
        if exact not in self._engines:
            engine = GradientAnalyzer if exact else _FoldingEngine
            self._engines[exact] = engine(
                self.model, output=self.output, attribute_to=self.attribute_to
            )
        return self._engines[exact]

    def _explain(
        self, inputs: ModelInputs | torch.Tensor, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        inputs = self._inputs(inputs)
        target = self._call_target(neuron_selection, target)
        engine, graph, feed, layout, (output, clean) = self._first_pass(inputs)
        selection = self._resolve(output, neuron_selection, target, inputs)
        attributions = {}
        for source in graph.source_nodes:
            name = graph.source_names[source]
            x = floating_value(self.name, name, clean[source])
            attributions[name] = self._occlude(engine, graph, feed, source, x, selection, layout)
        first = next(iter(attributions.values()))
        return Explanation(first, selection.selected, selection.scores, attributions=attributions)

    def _first_pass(self, inputs: ModelInputs) -> tuple[Any, ...]:
        """The clean pass as the occluded passes will run: the engine, its graph, the feed
        (in the passes' layout), the layout change (None: kept), and the pass's output and
        attributed values."""
        exact = self.exact
        if exact is None:
            exact = any(
                isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in inputs.values
            )
        if not exact:
            try:
                first = self._prepared_pass(inputs, exact=False)
            except InputError:
                first = None  # the model cannot run folded or channels-last (a view of one)
            if first is not None:
                return first
        return self._prepared_pass(inputs, exact=True)

    def _prepared_pass(self, inputs: ModelInputs, exact: bool) -> tuple[Any, ...] | None:
        """``_first_pass`` with exact passes, or with batch norms folded and channels-last
        values where faster; None for the latter at inner attributed nodes (folding would
        move a convolution's output after its batch norm)."""
        engine = self._engine(exact)
        graph = engine.graph(inputs)
        if not exact and not all(node.op == "placeholder" for node in graph.source_nodes):
            return None
        feed = graph.feed(inputs.values)
        layout = None
        if not exact and any(map(channels_last_is_faster, feed.values())):
            layout = _channels_last_where_faster
            feed = {node: layout(value) for node, value in feed.items()}
        return engine, graph, feed, layout, engine.clean_pass(graph, feed)

    def _occlude(
        self,
        engine: GradientAnalyzer,
        graph: Any,
        feed: dict,
        source: Any,
        x: torch.Tensor,
        selection: OutputSelection,
        layout: Callable[[Any], Any] | None,
    ) -> torch.Tensor:
        """The occlusion map of one attributed input (or node) ``source`` with value ``x``;
        ``layout`` changes the layout of every fed value (None: kept)."""
        windows = self.windows(x.shape[1:])
        baseline = broadcast_baseline(self.baseline, x, "baseline")
        n = x.shape[0]
        # contiguous whatever x's layout: the map comes back in the usual layout
        total = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
        counts = torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
        # Every pass reads slices of the same buffers, made once, so that a pass allocates
        # only what the model does (the engine never writes into fed values).
        per_pass = min(self.batch_size, len(windows))

        def repeated(value: Any) -> Any:
            if not (isinstance(value, torch.Tensor) and value.dim() > 0):
                return value
            value = value.repeat(per_pass, *([1] * (value.dim() - 1)))
            return value if layout is None else layout(value)

        batched = {node: repeated(value) for node, value in feed.items() if node is not source}
        clean_rows = repeated(x)  # x: an input's fed value, or an inner node's clean value
        occluded_rows = torch.empty_like(clean_rows)
        starts = range(0, len(windows), self.batch_size)
        for start in progress(starts, self.verbose, total=len(starts), desc=self.name):
            chunk = windows[start : start + self.batch_size]
            k = len(chunk)
            batch = {
                node: value[: k * n]
                if isinstance(value, torch.Tensor) and value.dim() > 0
                else value
                for node, value in batched.items()
            }
            occluded = occluded_rows[: k * n]
            occluded.copy_(clean_rows[: k * n])
            for j, window in enumerate(chunk):
                occluded[(slice(j * n, (j + 1) * n), *window)] = baseline[(slice(None), *window)]
            batch[source] = occluded
            output, _ = engine.clean_pass(graph, batch)
            rows = torch.arange(k * n, device=output.device) % n
            drops = selection.scores.repeat(k) - selection.rows(rows, output.dim()).scores_of(
                output
            )
            # Window by window, in order: the same sums (to the last bit) as Captum's.
            for j, window in enumerate(chunk):
                drop = drops[j * n : (j + 1) * n].reshape([n] + [1] * (x.dim() - 1))
                total[(slice(None), *window)] += drop
                counts[window] += 1
        return total / counts


class _FoldingEngine(GradientAnalyzer):
    """Occlusion's inexact passes: eval-mode batch norms folded into their convolutions
    (one elementwise pass and one allocation less per pair; the same map up to rounding)."""

    fuse_batchnorm = True


def _channels_last_where_faster(value: Any) -> Any:
    return channels_last(value) if channels_last_is_faster(value) else value


ANALYZERS = [Occlusion]
