"""Class activation maps: grad-cam's catalogue (PyPI ``grad-cam`` 1.5.7) on the captured graph.

A class activation map weights the channels of one layer's output ``A`` (N, C, h, w) and
sums them: ``cam = sum_c w_c A_c`` (Grad-CAM, Selvaraju et al. 2017: ``w_c`` the spatial
mean of the gradient ``G = dy/dA``), or maps ``A`` and ``G`` element-wise (HiResCAM,
LayerCAM) or by a principal component (Eigen-CAM). The layer is read from the graph
(``cam_layers``): a convolutional map or a transformer's token sequence on its patch grid,
with no ``reshape_transform`` to write. As grad-cam does, the map of each layer is clamped
at 0, min-max normalised per image (``(m - min) / (max - min + 1e-7)``), upsampled
bilinearly to the input's size (half-pixel centres, as ``cv2.resize``), averaged over the
layers and normalised again; ``normalize=False`` gives the raw weighted sum instead and
``upsample=False`` the map at the layer's resolution. docs/cam.md lists each method and
every place innspect differs from grad-cam.

Maps come back with the input's shape and one channel, (N, 1, H, W) (grad-cam: (N, H, W)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from innspect.analyzers.api import Analyzer, Explanation
from innspect.analyzers.cam_layers import CamLayer, find_layers
from innspect.analyzers.gradient import GradientAnalyzer
from innspect.engine.forward import run_forward
from innspect.engine.inputs import ModelInputs
from innspect.engine.selection import OutputSelection, resolve
from innspect.errors import InputError, NeuronSelectionError, OptionError
from innspect.graph.graph import ModelGraph
from innspect.graph.lock import GRAPH_LOCK
from innspect.util.checks import check_flag, check_int, check_number

_MINMAX_EPS = 1e-7  # grad-cam's scale_cam_image: (m - min) / (1e-7 + max(m - min))

Augmentation = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _flipped_scaled(x: torch.Tensor, flip: bool, factor: float) -> torch.Tensor:
    return (x.flip(-1) if flip else x) * factor


def _unflipped(maps: torch.Tensor, flip: bool) -> torch.Tensor:
    return maps.flip(-1) if flip else maps


# grad-cam's default aug_smooth (ttach's HorizontalFlip x Multiply([0.9, 1, 1.1])): 6 passes,
# in ttach's order (flip first, then brightness; the map is flipped back).
_DEFAULT_AUGMENTATIONS: tuple[Augmentation, ...] = tuple(
    (partial(_flipped_scaled, flip=flip, factor=factor), partial(_unflipped, flip=flip))
    for flip in (False, True)
    for factor in (0.9, 1.0, 1.1)
)


def augmentations(transforms: Any) -> tuple[Augmentation, ...]:
    """``tta_transforms`` as (augment, deaugment) pairs: a sequence of pairs of callables,
    or of objects with ``augment_image`` and ``deaugment_mask`` (what iterating a
    ``ttach.Compose`` gives; ttach is not imported)."""
    if isinstance(transforms, torch.Tensor | str | bytes) or not hasattr(transforms, "__iter__"):
        raise OptionError(
            "tta_transforms must be a sequence of (augment, deaugment) pairs of callables "
            f"or a ttach.Compose, got {type(transforms).__name__}"
        )
    pairs = []
    for item in transforms:
        if callable(getattr(item, "augment_image", None)) and callable(
            getattr(item, "deaugment_mask", None)
        ):
            pairs.append((item.augment_image, item.deaugment_mask))
        elif isinstance(item, tuple | list) and len(item) == 2 and all(map(callable, item)):
            pairs.append((item[0], item[1]))
        else:
            raise OptionError(
                "each of tta_transforms must be an (augment, deaugment) pair of callables "
                "(image (N, C, H, W) -> augmented image; map (N, 1, H, W) -> map in the "
                f"input's frame) or a ttach transformer; got {item!r}"
            )
    if not pairs:
        raise OptionError("tta_transforms is empty: give at least one (augment, deaugment) pair")
    return tuple(pairs)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each image's map shifted to minimum 0 and divided by ``1e-7 + its maximum``
    (grad-cam's ``scale_cam_image``); ``maps`` (N, ...)."""
    flat = maps.reshape(maps.shape[0], -1)
    shifted = flat - flat.min(dim=1, keepdim=True).values
    return (shifted / (_MINMAX_EPS + shifted.max(dim=1, keepdim=True).values)).reshape(maps.shape)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, K, h, w) maps resized bilinearly to ``size`` with half-pixel centres and no
    antialiasing: what ``cv2.resize(..., INTER_LINEAR)`` computes (grad-cam's resize)."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def principal_projection(maps: torch.Tensor) -> torch.Tensor:
    """Each image's (C, h, w) map projected on its first principal component: positions are
    samples and channels features, centred per channel (Eigen-CAM, Muhammad & Yeasin 2020;
    grad-cam's ``get_2d_projection``). The component's sign is LAPACK's, as in grad-cam."""
    n, c = maps.shape[:2]
    flat = torch.nan_to_num(maps.reshape(n, c, -1).transpose(1, 2), nan=0.0)
    flat = flat - flat.mean(dim=1, keepdim=True)
    # The first right singular vector's sign is arbitrary: numpy's SVD (grad-cam's, on the
    # same values) picks the same one as grad-cam; torch's LAPACK may pick the other.
    _, _, vh = np.linalg.svd(flat.detach().cpu().numpy(), full_matrices=False)
    first = torch.as_tensor(vh[:, 0, :, None], dtype=flat.dtype, device=flat.device)
    return (flat @ first).reshape(n, *maps.shape[2:])


_KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def kernel_projection(maps: torch.Tensor, kernel: str, gamma: float | None) -> torch.Tensor:
    """Each image's map projected on the first kernel principal component (KPCA-CAM,
    Karmani et al. 2024), as scikit-learn's ``KernelPCA(n_components=1)`` computes it:
    centred kernel matrix of the positions, top eigenvector times the square root of its
    eigenvalue, signed so that its largest entry in magnitude is positive."""
    n, c = maps.shape[:2]
    x = torch.nan_to_num(maps.reshape(n, c, -1).transpose(1, 2), nan=0.0)
    x = x - x.mean(dim=1, keepdim=True)
    g = 1.0 / c if gamma is None else gamma
    dot = x @ x.transpose(1, 2)
    if kernel == "linear":
        k = dot
    elif kernel == "poly":
        k = (g * dot + 1.0) ** 3
    elif kernel == "sigmoid":
        k = torch.tanh(g * dot + 1.0)
    elif kernel == "rbf":
        sq = dot.diagonal(dim1=1, dim2=2)
        k = torch.exp(-g * (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp_min(0))
    else:  # cosine
        norm = x.norm(dim=2, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        k = (x / norm) @ (x / norm).transpose(1, 2)
    # KernelCenterer: K - row means - column means + overall mean
    k = (
        k
        - k.mean(dim=1, keepdim=True)
        - k.mean(dim=2, keepdim=True)
        + k.mean(dim=(1, 2), keepdim=True)
    )
    values, vectors = torch.linalg.eigh(k)
    top, vector = values[:, -1].clamp_min(0), vectors[:, :, -1]
    signs = torch.sign(vector.gather(1, vector.abs().argmax(dim=1, keepdim=True)))
    return (vector * signs * top.sqrt()[:, None]).reshape(n, *maps.shape[2:])


@dataclass
class CamPass:
    """What one forward (and gradient) pass gives every method: the graph and feed, the
    image input node, the explained selection, and per layer its output (raw), its map
    ``A`` (N, C, h, w) and gradient map ``G`` (None for gradient-free methods)."""

    graph: ModelGraph
    feed: dict[fx.Node, Any]
    image: fx.Node
    selection: OutputSelection
    raw: list[torch.Tensor]
    acts: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    raw_grads: list[torch.Tensor | None]
    output_dim: int
    kept: dict[fx.Node, Any]  # the values of ``_also_kept`` nodes from the same pass


@dataclass(frozen=True)
class CamPlan:
    """The layers a class activation map reads, for an input shape (``print`` it)."""

    method: str
    input_shape: tuple[int, ...]
    layers: tuple[CamLayer, ...]
    note: str = ""  # what a method reads instead of layers (FullGrad)

    def __str__(self) -> str:
        lines = [f"{self.method} on inputs of shape {self.input_shape}:"]
        lines += [f"  layer {layer.describe()}" for layer in self.layers]
        lines += [f"  {self.note}"] * bool(self.note)
        return "\n".join(lines)


class ClassActivationMap(Analyzer):
    """Grad-CAM (Selvaraju et al. 2017): the layer's channels weighted by their mean gradient.

    Parameters
    ----------
    layer
        The layer whose output is mapped: a node name or module path (``"layer4"``, the
        output of the module), or a list of them (their maps are averaged, as grad-cam's
        ``target_layers``). Default: the last spatial map or patch-token sequence that
        reaches the output (see ``innspect.analyzers.cam_layers``).
    upsample
        Resize the map to the input's height and width (bilinear, as grad-cam); False: the
        map at the layer's resolution.
    normalize
        grad-cam's output: clamped at 0 and min-max normalised per image (before and after
        averaging layers). False: the raw map (weighted sum, no clamp, no scaling).
    aug_smooth
        grad-cam's test-time augmentation: the mean of the maps of the augmented inputs,
        each brought back to the input's frame; by default the input flipped or not and
        scaled by 0.9, 1 and 1.1 (6 passes). The explained neuron is chosen once, on the
        input itself.
    tta_transforms
        The augmentations of ``aug_smooth`` (grad-cam's ``tta_transforms``): a sequence of
        ``(augment, deaugment)`` pairs of callables, ``augment`` taking the image
        (N, C, H, W) to an image of the same shape, ``deaugment`` taking the map of the
        augmented image (N, 1, H, W), or (N, 1, h, w) with ``upsample=False``, back to the
        input's frame; or a ``ttach.Compose`` (its transformers' ``augment_image`` and
        ``deaugment_mask``). None: the default above. Needs ``aug_smooth=True``.
    eigen_smooth
        Replace the sum over channels by the first principal component of the weighted
        channels (grad-cam's ``eigen_smooth``).
    """

    name = "cam.grad"
    family = "cam"
    title = "Grad-CAM"
    summary = (
        "The last feature map's channels weighted by the mean gradient of the score: a "
        "coarse map of where the class evidence is."
    )
    paper = "Selvaraju et al. 2017, ICCV (arXiv 1610.02391)"
    uses_gradients: ClassVar[bool] = True
    create_graph: bool = False  # second derivatives (Shapley-CAM, or Finer-CAM on it)
    takes_layer: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: str | Sequence[str] | None = None,
        upsample: bool = True,
        normalize: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        tta_transforms: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if layer is not None:
            if not self.takes_layer:
                raise OptionError(f"{self.name} reads every bias layer; it takes no layer=")
            names = [layer] if isinstance(layer, str) else list(layer)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise OptionError(
                    f"layer must be a node name or module path, or a non-empty list of them; "
                    f"got {layer!r}"
                )
            layer = names[0] if isinstance(layer, str) else names
        self.layer = layer
        self.upsample = check_flag("upsample", upsample)
        self.normalize = check_flag("normalize", normalize)
        self.aug_smooth = check_flag("aug_smooth", aug_smooth)
        self.eigen_smooth = check_flag("eigen_smooth", eigen_smooth)
        if tta_transforms is not None and not self.aug_smooth:
            raise OptionError("tta_transforms are the augmentations of aug_smooth=True; set it")
        self.tta_transforms = tta_transforms
        self._augmentations = (
            _DEFAULT_AUGMENTATIONS if tta_transforms is None else augmentations(tta_transforms)
        )
        # The engine's capture, input checks and output selection; batch norms stay nodes.
        self._engine = GradientAnalyzer(
            model,
            output=self.output,
            attribute_to=self.attribute_to,
            disable_model_checks=self.disable_model_checks,
        )
        self._layers: dict[Any, list[CamLayer]] = {}

    # -- which layers ---------------------------------------------------------------------
    def layers(self, X: Any) -> list[CamLayer]:
        """The layers read for inputs like ``X`` (found on first use for each input shape)."""
        inputs = self._inputs(X)
        graph = self._engine.graph(inputs)
        feed = graph.feed(inputs.values)
        return self._layers_for(graph, feed, self._image(graph, feed))

    def plan(self, example_input: Any = None) -> CamPlan:
        """The chosen layers and their grids, for an example input (``print`` it)."""
        if example_input is None:
            raise InputError(
                f"{self.name} chooses its layer for an input shape: pass an example input "
                "(innspect methods --plan ... --input-shape C,H,W)"
            )
        inputs = self._inputs(example_input)
        shape = tuple(inputs.values[0].shape)
        return CamPlan(self.name, shape, tuple(self.layers(inputs)))

    def _image(self, graph: ModelGraph, feed: dict[fx.Node, Any]) -> fx.Node:
        node = graph.source_nodes[0]
        if node not in feed or not isinstance(feed[node], torch.Tensor):
            raise InputError(
                f"{self.name} maps onto an image input; attribute_to names an inner node"
            )
        if feed[node].dim() != 4:
            raise InputError(
                f"{self.name} needs an image input (N, C, H, W); got shape "
                f"{tuple(feed[node].shape)}"
            )
        return node

    def _layers_for(
        self, graph: ModelGraph, feed: dict[fx.Node, Any], image: fx.Node
    ) -> list[CamLayer]:
        key = (id(graph), tuple(tuple(getattr(v, "shape", ()))[1:] for v in feed.values()))
        if key not in self._layers:
            names = self.layer
            if isinstance(names, str):
                names = [names]
            self._layers = {key: find_layers(graph, feed, feed[image], names)}
        return self._layers[key]

    # -- the analysis ---------------------------------------------------------------------
    def _explain(
        self, inputs: ModelInputs | torch.Tensor, neuron_selection: Any, target: Any = None
    ) -> Explanation:
        inputs = self._inputs(inputs)
        name, maps, selection = self._run(inputs, neuron_selection, target)
        return Explanation(maps, selection.selected, selection.scores, attributions={name: maps})

    def _run(
        self, inputs: ModelInputs, neuron_selection: Any, target: Any
    ) -> tuple[str, torch.Tensor, OutputSelection]:
        """The attributed input's name, the maps (N, 1, H, W) and the selection explained."""
        target = self._call_target(neuron_selection, target)
        graph = self._engine.graph(inputs)
        feed = graph.feed(inputs.values)
        self._engine._check_input_shapes(graph, feed)
        image = self._image(graph, feed)
        layers = self._layers_for(graph, feed, image)

        def selecting(output: torch.Tensor) -> OutputSelection:
            return self._selection(output, neuron_selection, target, inputs)

        if not self.aug_smooth:
            maps, selection = self._maps(graph, feed, image, layers, selecting)
        else:
            maps, selection = self._smoothed(graph, feed, image, layers, selecting)
        return graph.source_names[image], maps, selection

    def _selection(
        self, output: torch.Tensor, neuron_selection: Any, target: Any, inputs: ModelInputs
    ) -> OutputSelection:
        return self._resolve(output, neuron_selection, target, inputs)

    def _smoothed(
        self,
        graph: ModelGraph,
        feed: dict[fx.Node, Any],
        image: fx.Node,
        layers: list[CamLayer],
        selecting: Callable[[torch.Tensor], OutputSelection],
    ) -> tuple[torch.Tensor, OutputSelection]:
        """grad-cam's ``forward_augmentation_smoothing``: the mean of the maps of the
        augmented inputs, each brought back to the input's frame (``tta_transforms``)."""
        with GRAPH_LOCK.shared(), torch.no_grad():
            clean = graph.output_value(run_forward(graph, feed, keep=False).values)
        selection = selecting(clean)
        rows = torch.arange(clean.shape[0], device=clean.device)
        x = feed[image]
        total = None
        for augment, deaugment in self._augmentations:
            augmented = augment(x)
            if not isinstance(augmented, torch.Tensor) or augmented.shape != x.shape:
                got = tuple(augmented.shape) if isinstance(augmented, torch.Tensor) else augmented
                raise InputError(
                    f"a tta_transforms augmentation must return a tensor of the input's shape "
                    f"{tuple(x.shape)} (the layers are chosen for it); got {got!r}"
                )
            maps, _ = self._maps(
                graph,
                {**feed, image: augmented.to(x.dtype)},
                image,
                layers,
                lambda out: selection.rows(rows, out.dim()),
            )
            restored = deaugment(maps)
            if not isinstance(restored, torch.Tensor) or restored.shape != maps.shape:
                got = tuple(restored.shape) if isinstance(restored, torch.Tensor) else restored
                raise InputError(
                    f"a tta_transforms deaugmentation must return the map's shape "
                    f"{tuple(maps.shape)}; got {got!r}"
                )
            restored = restored.to(maps.dtype)
            total = restored if total is None else total + restored
        return total / len(self._augmentations), selection

    def _maps(
        self,
        graph: ModelGraph,
        feed: dict[fx.Node, Any],
        image: fx.Node,
        layers: list[CamLayer],
        selecting: Callable[[torch.Tensor], OutputSelection],
    ) -> tuple[torch.Tensor, OutputSelection]:
        cam_pass = self._pass(graph, feed, image, layers, selecting)
        cams = [self._layer_cam(cam_pass, i, layer) for i, layer in enumerate(layers)]
        return self._combine(cams, tuple(feed[image].shape[2:])), cam_pass.selection

    def _pass(
        self,
        graph: ModelGraph,
        feed: dict[fx.Node, Any],
        image: fx.Node,
        layers: list[CamLayer],
        selecting: Callable[[torch.Tensor], OutputSelection],
        extra: Sequence[fx.Node] = (),
    ) -> CamPass:
        """One forward pass keeping the layers' outputs, and (for gradient methods) one
        gradient of the explained score at them (and at the ``extra`` nodes, whose
        gradients follow the layers' in ``CamPass.grads``)."""
        nodes = [layer.node for layer in layers] + list(extra)
        also = self._also_kept(graph, layers)
        grad = self.uses_gradients
        if grad:
            # The image requires grad so that every value after it does, frozen weights too.
            feed = {**feed, image: feed[image].detach().requires_grad_(True)}
        with GRAPH_LOCK.shared(), torch.set_grad_enabled(grad):
            values = run_forward(graph, feed, keep={*nodes, *also}, global_autograd=grad).values
            output = graph.output_value(values)
        selection = selecting(output.detach())
        raw = [values[node] for node in nodes]
        kept = {node: values[node] for node in also}
        del values
        grads: list[torch.Tensor | None] = [None] * len(nodes)
        if grad and self.create_graph and callable(selection.target):
            # Second derivatives (Shapley-CAM) of a score computed from the output (Finer-CAM's,
            # a target= callable): the score's own curvature belongs to them, as in grad-cam,
            # so the score is differentiated whole rather than from its gradient held fixed.
            with torch.enable_grad():
                score = selection.target(output).sum()
                found = torch.autograd.grad(score, raw, allow_unused=True, create_graph=True)
        elif grad:
            start = selection.start(output, torch.ones_like)
            with torch.enable_grad():
                found = torch.autograd.grad(
                    output, raw, start, allow_unused=True, create_graph=self.create_graph
                )
        if grad:
            grads = [
                torch.zeros_like(r) if g is None else g for r, g in zip(raw, found, strict=True)
            ]
        maps = [layer.to_map(r.detach()) for layer, r in zip(layers, raw, strict=False)]
        grad_maps = [
            None if g is None else (layer.to_map(g) if i < len(layers) else g)
            for i, (layer, g) in enumerate(zip([*layers, *[None] * len(extra)], grads, strict=True))
        ]
        return CamPass(
            graph, feed, image, selection, raw, maps, grad_maps, grads, output.dim(), kept
        )

    def _also_kept(self, graph: ModelGraph, layers: list[CamLayer]) -> set[fx.Node]:
        """Nodes whose values a method reads after the pass besides the layers' (none)."""
        return set()

    # -- one layer ------------------------------------------------------------------------
    def _weights(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        """Per image and channel, the weight of the channel (N, C)."""
        return cam_pass.grads[index].detach().flatten(2).mean(dim=2)

    def _weighted(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        """The weighted channels (N, C, h, w) that are summed into the map."""
        weights = self._weights(cam_pass, index, layer)
        return weights[:, :, None, None] * cam_pass.acts[index]

    def _layer_cam(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        """The layer's raw map (N, h, w)."""
        weighted = self._weighted(cam_pass, index, layer)
        if self.eigen_smooth:
            return principal_projection(weighted)
        return weighted.sum(dim=1)

    def _combine(self, cams: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        """The layers' raw maps (N, h, w) as the method's output (N, 1, H, W): grad-cam's
        clamp, per-image scaling, resize and mean (or the raw mean)."""
        done = []
        for cam in cams:
            cam = cam.detach()
            if self.normalize:
                cam = minmax(cam.clamp_min(0))
            cam = cam[:, None]
            if self.upsample:
                cam = upsample(cam, size)
            done.append(cam)
        if len({tuple(c.shape) for c in done}) > 1:
            raise InputError(
                f"the layers' maps have different grids ({', '.join(str(tuple(c.shape[2:])) for c in done)}); "
                "upsample=False needs layers of one resolution"
            )
        result = torch.stack(done).mean(dim=0)
        if self.normalize and len(done) > 1:
            result = minmax(result.clamp_min(0))
        elif self.normalize:
            result = minmax(result)
        return result


class HiResCAM(ClassActivationMap):
    """HiResCAM (Draelos & Carin 2020): the element-wise product of gradient and activation,
    summed over channels; for a layer followed only by linear maps, the exact contribution
    of each position."""

    name = "cam.hires"
    title = "HiResCAM"
    summary = (
        "Gradient times activation element-wise, summed over channels: Grad-CAM without the "
        "spatial averaging of the gradient, faithful to the positions the model used."
    )
    paper = "Draelos & Carin 2020 (arXiv 2011.08891)"

    def _weighted(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return cam_pass.grads[index].detach() * cam_pass.acts[index]


class GradCAMElementWise(ClassActivationMap):
    """grad-cam's GradCAMElementWise: HiResCAM with each product clamped at 0."""

    name = "cam.grad_elementwise"
    title = "Grad-CAM element-wise"
    summary = "Gradient times activation element-wise, clamped at 0, summed over channels."
    paper = "grad-cam (Gildenblat et al.), GradCAMElementWise"

    def _weighted(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return (cam_pass.grads[index].detach() * cam_pass.acts[index]).clamp_min(0)


class GradCAMPlusPlus(ClassActivationMap):
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): weights from the positive gradients,
    scaled by ``g^2 / (2 g^2 + sum(A) g^3 + 1e-6)``, with grad-cam's exponential-free form."""

    name = "cam.grad_plus_plus"
    title = "Grad-CAM++"
    summary = "Grad-CAM with positive gradients weighted per position (better for several objects)."
    paper = "Chattopadhay et al. 2018, WACV (arXiv 1710.11063)"

    def _weights(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        g, a = cam_pass.grads[index].detach(), cam_pass.acts[index]
        g2 = g * g
        sums = a.flatten(2).sum(dim=2)[:, :, None, None]
        alpha = g2 / (2 * g2 + sums * g2 * g + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (g.clamp_min(0) * alpha).flatten(2).sum(dim=2)


class XGradCAM(ClassActivationMap):
    """XGrad-CAM (Fu et al. 2020): weights ``sum(G * A) / (sum(A) + 1e-7)`` per channel."""

    name = "cam.xgrad"
    title = "XGrad-CAM"
    summary = "Grad-CAM with the gradient averaged weighted by the normalised activation."
    paper = "Fu et al. 2020, BMVC (arXiv 2008.02312)"

    def _weights(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        g, a = cam_pass.grads[index].detach(), cam_pass.acts[index]
        sums = a.flatten(2).sum(dim=2)
        return (g * a).flatten(2).sum(dim=2) / (sums + 1e-7)


class LayerCAM(ClassActivationMap):
    """LayerCAM (Jiang et al. 2021): ``sum_c max(G, 0) * A`` element-wise."""

    name = "cam.layer"
    title = "LayerCAM"
    summary = "Activations weighted by their positive gradient, position by position."
    paper = "Jiang et al. 2021, IEEE TIP 30"

    def _weighted(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return cam_pass.grads[index].detach().clamp_min(0) * cam_pass.acts[index]


class EigenCAM(ClassActivationMap):
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the activations;
    no gradient, no class (every target gives the same map)."""

    name = "cam.eigen"
    title = "Eigen-CAM"
    summary = "The first principal component of the feature map: class-agnostic, gradient-free."
    paper = "Muhammad & Yeasin 2020, IJCNN (arXiv 2008.00299)"
    uses_gradients = False

    def _layer_cam(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return principal_projection(cam_pass.acts[index])


class EigenGradCAM(ClassActivationMap):
    """Eigen-Grad-CAM (grad-cam): the first principal component of ``G * A``."""

    name = "cam.eigen_grad"
    title = "Eigen-Grad-CAM"
    summary = "The first principal component of gradient times activation: class-specific."
    paper = "grad-cam (Gildenblat et al.), after Muhammad & Yeasin 2020"

    def _layer_cam(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return principal_projection(cam_pass.grads[index].detach() * cam_pass.acts[index])


class KPCACAM(ClassActivationMap):
    """KPCA-CAM (Karmani et al. 2024): the first kernel principal component of the
    activations (scikit-learn's ``KernelPCA``, computed here in torch).

    Parameters
    ----------
    kernel
        "sigmoid" (default, grad-cam's), "linear", "poly" (degree 3), "rbf" or "cosine".
    gamma
        The kernel coefficient; None: 1 / channels (scikit-learn's default).
    """

    name = "cam.kpca"
    title = "KPCA-CAM"
    summary = "The first kernel principal component of the feature map: class-agnostic."
    paper = "Karmani et al. 2024 (arXiv 2410.00267)"
    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        *,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if kernel not in _KERNELS:
            raise OptionError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
        self.kernel = kernel
        self.gamma = None if gamma is None else check_number("gamma", gamma, minimum=0.0)

    def _layer_cam(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return kernel_projection(cam_pass.acts[index], self.kernel, self.gamma)


class ShapleyCAM(ClassActivationMap):
    """Shapley-CAM (Cai 2025): weights the spatial mean of ``G - H A / 2`` (``H A`` the
    Hessian-vector product of the score at the layer with its activation), a second-order
    estimate of each channel's Shapley value."""

    name = "cam.shapley"
    title = "Shapley-CAM"
    summary = "Grad-CAM with a second-order (Hessian-vector) correction of the gradient."
    paper = "Cai 2025 (arXiv 2501.06261)"
    create_graph = True

    def _weights(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        grad, raw = cam_pass.raw_grads[index], cam_pass.raw[index]
        hvp = None
        if grad.requires_grad:  # else the score is linear in the layer's output: H = 0
            with torch.enable_grad():
                (hvp,) = torch.autograd.grad(grad, raw, raw.detach(), allow_unused=True)
        grad = cam_pass.grads[index].detach()
        if hvp is not None:
            grad = grad - 0.5 * layer.to_map(hvp)
        return grad.flatten(2).mean(dim=2)


class FinerCAM(ClassActivationMap):
    """Finer-CAM (Zhang et al. 2025): Grad-CAM of the explained class's score minus the
    scores of the classes closest to it, weighted by their softmax probabilities:
    ``t = sum_k p_k (y_c - alpha y_k) / (sum_k p_k + 1e-9)`` (grad-cam's
    ``FinerWeightedTarget``), so the map shows what tells the class from its neighbours.

    Parameters
    ----------
    alpha
        Strength of the comparison (1: the difference of the scores).
    comparison_categories
        Which neighbours, by rank of ``|y_k - y_c|`` (0 is the class itself): default
        (1, 2, 3), the three closest classes.
    base_method
        The map computed for that score (grad-cam's ``base_method``): one of the methods
        that weight channels by the score's gradient, ``FINER_BASES`` (default Grad-CAM).
    """

    name = "cam.finer"
    title = "Finer-CAM"
    summary = "Grad-CAM of the class's score against its closest classes: fine-grained differences."
    paper = "Zhang et al. 2025, CVPR (arXiv 2501.11309)"

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float = 1.0,
        comparison_categories: Sequence[int] = (1, 2, 3),
        base_method: str = "cam.grad",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        bases = {cls.name: cls for cls in FINER_BASES}
        if base_method not in bases:
            raise OptionError(
                f"base_method must be one of {', '.join(bases)} (a map of the score's "
                f"gradient: Eigen-CAM and KPCA-CAM ignore the score); got {base_method!r}"
            )
        self.base_method = base_method
        self._base: type[ClassActivationMap] = bases[base_method]
        # Shapley-CAM's Hessian-vector product needs the gradient's own graph.
        self.create_graph = self._base.create_graph
        self.alpha = check_number("alpha", alpha)
        ranks = [check_int("comparison_categories", r, 1) for r in comparison_categories]
        if not ranks:
            raise OptionError("comparison_categories must name at least one rank (e.g. (1, 2, 3))")
        self.comparison_categories = tuple(ranks)
        if self.neuron_selection_mode == "all":
            raise NeuronSelectionError(f"{self.name} explains one class per sample, not 'all'")

    def _selection(
        self, output: torch.Tensor, neuron_selection: Any, target: Any, inputs: ModelInputs
    ) -> OutputSelection:
        if target is not None:  # the user's target as given (grad-cam: explicit targets)
            return self._resolve(output, neuron_selection, target, inputs)
        y = output.detach().reshape(output.shape[0], -1)
        main = self._resolve(output, neuron_selection, None, inputs).selected
        ranks = [r for r in self.comparison_categories if r < y.shape[1]]
        if not ranks:
            return self._resolve(output, neuron_selection, None, inputs)
        order = (y - y.gather(1, main[:, None])).abs().argsort(dim=1, stable=True)
        others = order[:, ranks]
        alpha = self.alpha

        def finer(out: torch.Tensor) -> torch.Tensor:
            flat = out.reshape(out.shape[0], -1)
            prob = flat.softmax(dim=-1)
            weights = prob.gather(1, others)
            main_score = flat.gather(1, main[:, None])
            numerator = (weights * (main_score - alpha * flat.gather(1, others))).sum(dim=1)
            return numerator / (weights.sum(dim=1) + 1e-9)

        chosen = resolve(output, "max_activation", None, finer)
        return OutputSelection(main, chosen.scores, chosen.target, chosen.target_grad)

    # The base method's weighting, run on this analyzer (its options and the finer score);
    # each step calls the next through ``self``, so a base that overrides one step keeps it.
    def _weights(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return self._base._weights(self, cam_pass, index, layer)

    def _weighted(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return self._base._weighted(self, cam_pass, index, layer)

    def _layer_cam(self, cam_pass: CamPass, index: int, layer: CamLayer) -> torch.Tensor:
        return self._base._layer_cam(self, cam_pass, index, layer)


ANALYZERS = [
    ClassActivationMap,
    HiResCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    XGradCAM,
    LayerCAM,
    EigenCAM,
    EigenGradCAM,
    KPCACAM,
    ShapleyCAM,
    FinerCAM,
]

# Finer-CAM's base methods: those whose map depends on the explained score's gradient.
FINER_BASES = tuple(cls for cls in ANALYZERS if cls not in (EigenCAM, KPCACAM, FinerCAM))
