"""Class activation maps that need more than one pass: Score-CAM and Ablation-CAM (masked
forward passes, ``batch_size`` rows at a time, with progress), FullGrad (the gradient at
every bias layer) and Guided Grad-CAM (guided backprop times Grad-CAM)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from innspect.analyzers.api import Explanation
from innspect.analyzers.cam import (
    CamPass,
    CamPlan,
    ClassActivationMap,
    minmax,
    principal_projection,
    upsample,
)
from innspect.analyzers.cam_layers import CamLayer
from innspect.analyzers.gradient import GuidedBackprop
from innspect.engine.forward import run_forward, run_node
from innspect.engine.inputs import ModelInputs
from innspect.engine.selection import OutputSelection
from innspect.errors import InputError, OptionError
from innspect.graph.graph import ModelGraph
from innspect.graph.lock import GRAPH_LOCK
from innspect.graph.outputs import select_output
from innspect.graph.views import eval_view
from innspect.util.checks import check_flag, check_int, check_number
from innspect.util.progress import progress

_SCORE_EPS = 1e-8  # grad-cam's Score-CAM mask scaling: (m - min) / (max - min + 1e-8)
_ABLATION_OFFSET = 1e7  # grad-cam's AblationLayer: min - 1e7 where activations go below 0


def chunks(total: int, size: int) -> list[range]:
    """``range(total)`` in consecutive pieces of at most ``size``."""
    return [range(s, min(s + size, total)) for s in range(0, total, size)]


@dataclass
class _Rows:
    """Feeds of ``k`` rows that all repeat sample ``i`` of a batch of ``n``."""

    feed: dict[fx.Node, Any]
    n: int

    def of(self, i: int, k: int) -> dict[fx.Node, Any]:
        return {node: _repeat(value, self.n, i, k) for node, value in self.feed.items()}


def _repeat(value: Any, n: int, i: int, k: int) -> Any:
    """Row ``i`` of a batch-first tensor of ``n`` rows as ``k`` rows (a view); other values
    as they are."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[i : i + 1].expand(k, *value.shape[1:])
    return value


def _scores_of(
    graph: ModelGraph, output: torch.Tensor, selection: OutputSelection, sample: int
) -> torch.Tensor:
    """The explained score of each row of ``output``, all rows of sample ``sample``."""
    rows = torch.full((output.shape[0],), sample, dtype=torch.long, device=output.device)
    return selection.rows(rows, output.dim()).scores_of(output)


def _forward_scores(
    graph: ModelGraph, feed: dict[fx.Node, Any], selection: OutputSelection, sample: int
) -> torch.Tensor:
    """A forward pass of ``feed`` (rows of one sample) and the explained score per row."""
    with GRAPH_LOCK.shared(), torch.no_grad():
        output = graph.output_value(run_forward(graph, feed, keep=False).values)
    return _scores_of(graph, output, selection, sample)


class _Suffix:
    """The nodes after the layer ``node`` in execution order, run on their own: what
    Ablation-CAM's passes need. Everything before the layer is the same in every pass, so
    it is computed once (grad-cam runs the whole model in every pass).

    ``frontier``: the earlier nodes the suffix reads (the layer, a residual branch, a
    parameter). ``usable`` is False when one of them depends on the batch and is not a
    tensor (a shape read from the input): then the passes run the whole graph.
    """

    def __init__(self, graph: ModelGraph, node: fx.Node) -> None:
        self.graph = graph
        self.node = node
        order = {info.node: i for i, info in enumerate(graph.nodes)}
        position = order[node]
        self.infos = [
            info
            for info in graph.nodes[position + 1 :]
            if info.node.op not in ("placeholder", "get_attr")
        ]
        reads = {a for info in self.infos for a in info.node.all_input_nodes}
        reads |= set(graph.output_nodes)
        self.frontier = {
            a for a in reads if a in order and (order[a] <= position or a.op == "get_attr")
        }
        self.frontier.add(node)
        self.usable = all(
            not graph.infos[a].depends_on_input or not graph.infos[a].is_metadata
            for a in self.frontier
        )

    def run(
        self, values: dict[fx.Node, Any], n: int, i: int, k: int, layer_value: torch.Tensor
    ) -> torch.Tensor:
        """The explained output of ``k`` rows of sample ``i``: the frontier's ``values``
        (``n`` rows) repeated, ``layer_value`` as the layer's output."""
        graph = self.graph
        current: dict[fx.Node, Any] = {}
        for node in self.frontier:
            value = values[node]
            if graph.infos[node].depends_on_input:
                value = _repeat(value, n, i, k)
            current[node] = value
        current[self.node] = layer_value
        keep = set(graph.output_nodes)
        with GRAPH_LOCK.shared(), torch.no_grad():
            for info in self.infos:
                current[info.node] = run_node(info, current)
                for done in graph.free_after.get(info.node, ()):
                    if done not in keep:
                        current.pop(done, None)
            return graph.output_value(current)


class _Perturbing(ClassActivationMap):
    """A map whose channel weights come from forward passes of perturbed inputs."""

    uses_gradients = False

    def __init__(
        self, model: nn.Module, *, batch_size: int = 16, verbose: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.verbose = check_flag("verbose", verbose)

    def _batches(self, n: int, channels: int) -> list[tuple[int, range]]:
        return [(i, chunk) for i in range(n) for chunk in chunks(channels, self.batch_size)]


class ScoreCAM(_Perturbing):
    """Score-CAM (Wang et al. 2020): each channel, upsampled and scaled to [0, 1], masks the
    input; the channel's weight is the softmax over channels of the masked input's score.
    The masked passes call the model itself when the image is its only input (its eager
    kernels, as grad-cam), else run its captured graph.

    Parameters
    ----------
    batch_size
        Masked inputs per forward pass (grad-cam's default: 16).
    verbose
        Show a progress bar over the passes.
    """

    name = "cam.score"
    title = "Score-CAM"
    summary = "Channels weighted by the score of the input masked by each channel: gradient-free."
    paper = "Wang et al. 2020, CVPR workshops (arXiv 1910.01279)"

    def _model_on_images(self, cam_pass: CamPass) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The model itself (its eval view) on a batch of images, giving the explained
        output; None unless the image is the model's only input, passed by position, with
        the dtype and device of the model's parameters.

        The masked passes only read the output: the model's own eager kernels serve them, as
        in grad-cam, where the captured graph writes attention out in plain operations for
        the relevance rules, a few percent slower than PyTorch's fused attention
        (benchmarks/RESULTS-cam.md).
        """
        graph = cam_pass.graph
        if graph.input_nodes != [cam_pass.image] or graph.call.fixed or graph.call.keyword:
            return None
        image = cam_pass.feed[cam_pass.image]
        weights = next(
            (t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()),
            None,
        )
        if weights is None or (weights.dtype, weights.device) != (image.dtype, image.device):
            return None
        model, output = eval_view(self.model), self.output

        def run(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return select_output(model(images), output)

        return run

    def _weights(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        model_on_images = self._model_on_images(cam_pass)
        acts = cam_pass.acts[index]
        n, c = acts.shape[:2]
        image = cam_pass.feed[cam_pass.image]
        size = tuple(image.shape[2:])
        rows = _Rows(cam_pass.feed, n)
        scores = torch.empty(n, c, dtype=acts.dtype, device=acts.device)
        batches = self._batches(n, c)
        for i, chunk in progress(batches, self.verbose, total=len(batches), desc=self.name):
            # grad-cam upsamples with align_corners=True here (torch.nn.UpsamplingBilinear2d)
            masks = F.interpolate(
                acts[i : i + 1, chunk.start : chunk.stop],
                size=size,
                mode="bilinear",
                align_corners=True,
            )[0]
            flat = masks.reshape(len(chunk), -1)
            low = flat.min(dim=1).values[:, None, None]
            high = flat.max(dim=1).values[:, None, None]
            masks = (masks - low) / (high - low + _SCORE_EPS)
            masked = image[i : i + 1] * masks[:, None]
            if model_on_images is not None:
                output = model_on_images(masked)
                found = _scores_of(cam_pass.graph, output, cam_pass.selection, i)
            else:
                feed = rows.of(i, len(chunk))
                feed[cam_pass.image] = masked
                found = _forward_scores(cam_pass.graph, feed, cam_pass.selection, i)
            scores[i, chunk.start : chunk.stop] = found
        return scores.softmax(dim=-1)


_OBJECT_THRESHOLD = 0.01  # grad-cam's objectiveness_mask_from_svd threshold


def channels_to_ablate(acts: torch.Tensor, ratio: float) -> list[torch.Tensor]:
    """Per image, the sorted channels Ablation-CAM ablates (grad-cam's experimental
    ``AblationLayer.activations_to_be_ablated``; the paper ablates every channel).

    ``acts`` (N, C, h, w). Below ``ratio`` 1, an object mask is the absolute Eigen-CAM
    projection min-max scaled and thresholded at 0.01; each channel's score is the share of
    its absolute values (shifted to minimum 0, scaled to maximum 1) that falls in the mask.
    The ``k = int(C * ratio)`` highest and the ``k`` lowest scores are ablated, each channel
    once (grad-cam lists a channel twice when ``2 k > C``, see docs/cam.md). A constant
    channel scores 0 / 0 = NaN, which ranks highest (numpy's ``argsort`` sorts NaN last).
    """
    n, c = acts.shape[:2]
    if ratio == 1.0:
        return [torch.arange(c)] * n
    mask = principal_projection(acts).abs().flatten(1)
    mask = mask - mask.min(dim=1, keepdim=True).values
    mask = (mask / mask.max(dim=1, keepdim=True).values) > _OBJECT_THRESHOLD  # NaN: False
    channel = torch.nan_to_num(acts.detach(), nan=0.0).flatten(2).abs()
    channel = channel - channel.min(dim=2, keepdim=True).values
    channel = channel / channel.max(dim=2, keepdim=True).values
    scores = (mask[:, None] * channel).sum(dim=2) / channel.sum(dim=2)
    # Ties are common (every channel inside the mask scores exactly 1): grad-cam breaks
    # them with numpy's default (unstable) argsort of float32 scores, so the same sort here
    # picks the same channels. NaN sorts last in numpy.
    order = np.argsort(scores.detach().cpu().numpy().astype(np.float32), axis=1)
    k = int(c * ratio)
    return [torch.from_numpy(np.unique(np.concatenate([row[:k], row[c - k :]]))) for row in order]


class _Copies:
    """Copies of one sample's layer output, row ``j`` with one channel ablated, in a buffer
    reused across passes: each pass writes its ablated channels and puts them back after,
    rather than copying the whole output once per row again (the copy costs as much as the
    pass from ``layer4`` on in a ResNet). A pass that wrote into the buffer (a module of
    the user's that works in place; in-place writes bump the tensor's version) has it
    filled afresh."""

    def __init__(self, raw: torch.Tensor, axis: int, rows: int) -> None:
        self.raw, self.axis, self.rows = raw, axis, rows
        self.sample: int | None = None
        self.buffer = raw[:0]

    @contextmanager
    def ablated(self, i: int, channels: torch.Tensor, value: float) -> Iterator[torch.Tensor]:
        """The copies of sample ``i``, row ``j`` with ``channels[j]`` set to ``value``."""
        k = len(channels)
        if self.sample != i:
            shape = [1] * (self.raw.dim() - 1)
            self.buffer = self.raw[i : i + 1].repeat(min(self.rows, max(k, 1)), *shape)
            self.sample = i
        copies = self.buffer[:k]
        rows = torch.arange(k, device=copies.device)
        # row j ablates channel channels[j]: one indexed write for the whole pass
        copies.movedim(self.axis, 1)[rows, channels] = value
        version = self.buffer._version
        try:
            yield copies
        finally:
            if self.buffer._version != version:
                self.sample = None  # written by the pass: fill afresh next time
            else:
                within = self.axis - 1 if self.axis > 0 else self.axis  # without the batch
                original = self.raw[i].movedim(within, 0)[channels]
                copies.movedim(self.axis, 1)[rows, channels] = original


class AblationCAM(_Perturbing):
    """Ablation-CAM (Desai & Ramaswamy 2020): a channel's weight is the relative drop of the
    score when the channel is ablated, ``(y - y_k) / y``.

    Parameters
    ----------
    batch_size
        Ablated channels per forward pass (grad-cam's default: 32).
    ablation_value
        What an ablated channel is set to. None (grad-cam's rule): 0 where the layer's
        output for the image has minimum 0 (after a ReLU), else that minimum minus 1e7.
    ratio_channels_to_ablate
        grad-cam's experimental pruning (``channels_to_ablate``): 1.0 ablates every channel;
        below 1, the ``int(C * ratio)`` channels that overlap the Eigen-CAM object mask most
        and the ``int(C * ratio)`` that overlap it least are ablated, each once, and the
        others get weight 0 (so up to twice the ratio is ablated, as grad-cam does).
    verbose
        Show a progress bar over the passes.
    """

    name = "cam.ablation"
    title = "Ablation-CAM"
    summary = "Channels weighted by the drop of the score when each is removed: gradient-free."
    paper = "Desai & Ramaswamy 2020, WACV"

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = 32,
        ablation_value: float | None = None,
        ratio_channels_to_ablate: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, batch_size=batch_size, **kwargs)
        self.ablation_value = (
            None if ablation_value is None else check_number("ablation_value", ablation_value)
        )
        ratio = check_number("ratio_channels_to_ablate", ratio_channels_to_ablate)
        if not 0.0 < ratio <= 1.0:
            raise OptionError(
                f"ratio_channels_to_ablate must be in (0, 1] (1.0: every channel), got {ratio}"
            )
        self.ratio_channels_to_ablate = ratio

    def _weights(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        raw = cam_pass.raw[index].detach()
        n = raw.shape[0]
        c = raw.shape[layer.channel_axis()]
        graph, selection = cam_pass.graph, cam_pass.selection
        run = self._suffix_runner(cam_pass, layer.node, n)
        original = selection.scores.to(raw.dtype)
        if bool((original == 0).any()):
            sample = int((original == 0).nonzero()[0, 0])
            raise InputError(
                f"{self.name} divides each drop by the explained score, which is 0 for sample "
                f"{sample}; explain another output (neuron_selection, target=)"
            )
        chosen = channels_to_ablate(cam_pass.acts[index], self.ratio_channels_to_ablate)
        if any(len(channels) == 0 for channels in chosen):
            raise InputError(
                f"ratio_channels_to_ablate={self.ratio_channels_to_ablate} selects no channel "
                f"of the layer's {c} (int({c} * ratio) = 0); use at least {1 / c:.3g}"
            )
        # a channel left out keeps the original score: weight 0 (grad-cam's rule)
        scores = original[:, None].repeat(1, c)
        batches = [
            (i, chunk) for i in range(n) for chunk in chunks(len(chosen[i]), self.batch_size)
        ]
        axis = layer.channel_axis()
        copies = _Copies(raw, axis, self.batch_size)
        for i, chunk in progress(batches, self.verbose, total=len(batches), desc=self.name):
            value = self.ablation_value
            if value is None:
                low = float(raw[i].min())
                value = 0.0 if low == 0 else low - _ABLATION_OFFSET
            channels = chosen[i][chunk.start : chunk.stop].to(raw.device)
            with copies.ablated(i, channels, value) as ablated:
                output = run(i, ablated)
                scores[i, channels] = _scores_of(graph, output, selection, i)
        return (original[:, None] - scores) / original[:, None]

    def _also_kept(self, graph: ModelGraph, layers: list[CamLayer]) -> set[fx.Node]:
        """The values the passes from each layer on read (one forward pass gives the
        layers' outputs, the score and these)."""
        suffixes = [_Suffix(graph, layer.node) for layer in layers]
        return {a for suffix in suffixes if suffix.usable for a in suffix.frontier}

    def _suffix_runner(self, cam_pass: CamPass, node: fx.Node, n: int) -> Any:
        """``run(i, layer_value) -> output``: the passes from the layer on (``_Suffix``), or
        whole passes with the layer's output replaced where the suffix cannot run alone."""
        graph = cam_pass.graph
        suffix = _Suffix(graph, node)
        if suffix.usable:
            # the frontier's values come from the method's own forward pass (``_also_kept``)
            kept = {a: cam_pass.kept[a] for a in suffix.frontier}
            if all(
                isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n
                for a, v in kept.items()
                if graph.infos[a].depends_on_input
            ):
                return lambda i, value: suffix.run(kept, n, i, value.shape[0], value)
        rows = _Rows(cam_pass.feed, n)

        def whole(i: int, value: torch.Tensor) -> torch.Tensor:
            feed = rows.of(i, value.shape[0])
            feed[node] = value  # the pass takes this value for the layer's output
            with GRAPH_LOCK.shared(), torch.no_grad():
                return graph.output_value(run_forward(graph, feed, keep=False).values)

        return whole


def _bias_nodes(graph: ModelGraph) -> list[tuple[fx.Node, torch.Tensor]]:
    """Every Conv2d with a bias and every BatchNorm2d (its eval-mode bias
    ``beta - mean * gamma / sqrt(var + eps)``), as FullGrad's official code reads them."""
    found = []
    for info in graph.nodes:
        module = info.module
        if type(module) is nn.Conv2d and module.bias is not None:
            found.append((info.node, module.bias.detach()))
        elif type(module) is nn.BatchNorm2d and module.bias is not None:
            if module.running_mean is None:
                raise InputError(
                    f"FullGrad needs running statistics at '{info.name}' (BatchNorm2d with "
                    "track_running_stats=False has no fixed bias)"
                )
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            found.append((info.node, (module.bias - module.running_mean * scale).detach()))
    return found


def _channels_scaled(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """grad-cam's ``scale_accross_batch_and_channels``: each (image, channel) map min-max
    scaled, then resized to ``size``."""
    n, c = maps.shape[:2]
    scaled = minmax(maps.reshape(n * c, *maps.shape[2:]))
    return upsample(scaled[:, None], size).reshape(n, c, *size)


class FullGrad(ClassActivationMap):
    """FullGrad (Srinivas & Fleuret 2019): ``|x * dy/dx|`` plus, for every bias ``b`` of a
    convolution or batch norm, ``|b * dy/dz|`` at its output ``z``, each channel scaled to
    [0, 1] and resized to the input, summed. Reads every bias layer (no ``layer=``)."""

    name = "cam.full_grad"
    title = "FullGrad"
    summary = "Input-gradient plus the bias-gradients of every layer: a full decomposition."
    paper = "Srinivas & Fleuret 2019, NeurIPS (arXiv 1905.00780)"
    takes_layer = False

    def _maps(self, graph, feed, image, layers, selecting):  # type: ignore[no-untyped-def]
        biases = _bias_nodes(graph)
        cam_pass = self._pass(
            graph, feed, image, [], selecting, extra=[image, *[n for n, _ in biases]]
        )
        x = feed[image]
        size = tuple(x.shape[2:])
        grads = cam_pass.grads
        terms = [_channels_scaled((x * grads[0].detach()).abs(), size)]
        for (_, bias), grad in zip(biases, grads[1:], strict=True):
            term = (bias[None, :, None, None] * grad.detach()).abs()
            terms.append(_channels_scaled(term, size).sum(dim=1, keepdim=True))
        stacked = torch.cat(terms, dim=1)
        if self.eigen_smooth:
            small = (size[0] // 8, size[1] // 8)
            projected = principal_projection(_channels_scaled(stacked, small))
            total = _channels_scaled(projected[:, None], size)
        else:
            total = stacked.sum(dim=1, keepdim=True)
        result = minmax(total) if self.normalize else total
        return result, cam_pass.selection

    def _layers_for(self, graph, feed, image):  # type: ignore[no-untyped-def]
        return []

    def plan(self, example_input: Any = None) -> CamPlan:
        """The bias layers read, for an example input (``print`` it)."""
        plan = super().plan(example_input)
        graph = self._engine.graph(self._inputs(example_input))
        names = [graph.infos[node].name for node, _ in _bias_nodes(graph)]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        note = f"the input gradient and {len(names)} bias layers ({shown})"
        return CamPlan(plan.method, plan.input_shape, (), note)


class _GuidedGradient(GuidedBackprop):
    """Guided backprop named as the method it serves (its messages say guided_grad_cam)."""

    name = "guided_grad_cam"


class GuidedGradCAM(ClassActivationMap):
    """Guided Grad-CAM (Selvaraju et al. 2017): the guided backprop gradient times the
    Grad-CAM map upsampled to the input, channel by channel: (N, C, H, W)."""

    name = "guided_grad_cam"
    title = "Guided Grad-CAM"
    summary = (
        "Guided backprop's sharp gradient masked by the Grad-CAM map: fine and class-specific."
    )
    paper = "Selvaraju et al. 2017, ICCV (arXiv 1610.02391)"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not self.upsample:
            raise OptionError(
                f"{self.name} multiplies a map at the input's resolution: upsample=True"
            )
        # From 1 at the explained output (grad-cam's GuidedBackpropReLUModel), not from its
        # value as iNNvestigate's guided backprop.
        self._guided = _GuidedGradient(
            model,
            start="ones",
            output=self.output,
            attribute_to=self.attribute_to,
            disable_model_checks=self.disable_model_checks,
        )

    def _explain(
        self, inputs: ModelInputs | torch.Tensor, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        inputs = self._inputs(inputs)
        name, maps, selection = self._run(inputs, neuron_selection, target)
        graph = self._guided.graph(inputs)
        guided = self._guided.explain_feed(graph, graph.feed(inputs.values), selection)
        combined = maps * guided.attributions[name]
        return Explanation(
            combined, selection.selected, selection.scores, attributions={name: combined}
        )


ANALYZERS = [ScoreCAM, AblationCAM, FullGrad, GuidedGradCAM]
