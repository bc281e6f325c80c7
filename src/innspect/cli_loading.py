"""Loading what ``innspect analyze`` is given: models (TorchScript, torchvision, factories),
state dicts and inputs (PNG/JPEG images, .npy arrays). Every failure is a ``CLIError`` with a
one-line message saying what was wrong.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("imagenet", "none")


class CLIError(Exception):
    """Bad input from the command line; the message is shown as one line, exit status 2."""


# -- inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """How a model input was cut from the user's image: resized, then cropped.

    The image of ``original`` (width, height) pixels was resized to ``resized`` (width, height)
    and the box ``crop`` (left, top, width, height) of the resized image is the model input.
    Without preprocessing both are the identity.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]

    @staticmethod
    def identity(width: int, height: int) -> Geometry:
        """The model input is the image as it is."""
        return Geometry((width, height), (width, height), (0, 0, width, height))

    def crop_in_original(self) -> tuple[float, float, float, float]:
        """The crop box (left, top, right, bottom) in the original image's pixel coordinates."""
        sx = self.original[0] / self.resized[0]
        sy = self.original[1] / self.resized[1]
        left, top, width, height = self.crop
        return left * sx, top * sy, (left + width) * sx, (top + height) * sy

    def to_original(self, values: np.ndarray) -> np.ndarray:
        """Map a (height, width) map over the model input back onto the original image.

        Each original pixel centre is carried through the resize and the crop and the map is
        sampled there bilinearly (pixel centres at half-integers, as in PIL's resize); pixels
        that fall outside the crop are NaN.
        """
        left, top, width, height = self.crop
        if values.shape != (height, width):
            raise ValueError(f"map of shape {values.shape} for a crop of {width} x {height}")
        out_w, out_h = self.original
        xs = (np.arange(out_w) + 0.5) * self.resized[0] / out_w - left
        ys = (np.arange(out_h) + 0.5) * self.resized[1] / out_h - top
        grid_x = torch.as_tensor(xs / width * 2 - 1, dtype=torch.float64)
        grid_y = torch.as_tensor(ys / height * 2 - 1, dtype=torch.float64)
        gy, gx = torch.meshgrid(grid_y, grid_x, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        source = torch.as_tensor(values, dtype=torch.float64)[None, None]
        sampled = F.grid_sample(
            source, grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0, 0].numpy()
        inside = (gx.abs() <= 1) & (gy.abs() <= 1)
        return np.where(inside.numpy(), sampled, np.nan)


@dataclass
class LoadedInput:
    """One input sample (no batch axis), the picture it came from and how it was cut."""

    path: Path
    tensor: torch.Tensor
    picture: np.ndarray | None  # (H, W, 3) float in [0, 1] as the user gave it, if an image
    geometry: Geometry | None


def input_files(paths: list[str]) -> tuple[list[Path], bool]:
    """The files named on the command line, a directory standing for the inputs in it.

    Returns the files and whether a directory was given.
    """
    files: list[Path] = []
    any_directory = False
    for name in paths:
        path = Path(name)
        if path.is_dir():
            any_directory = True
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
            )
            if not found:
                raise CLIError(
                    f"no inputs in folder {path}: it has no {', '.join(INPUT_SUFFIXES)} files"
                )
            files.extend(found)
        elif not path.is_file():
            raise CLIError(f"input file not found: {path}")
        else:
            files.append(path)
    return files, any_directory


def load_input(path: str | os.PathLike, preprocess: str) -> LoadedInput:
    """One input sample from an image or an .npy file.

    Images: with ``preprocess="imagenet"`` resized (shorter side 256), centre-cropped to
    224 x 224, RGB and normalised with ImageNet's mean and std; with "none" only scaled to
    [0, 1] as (1, H, W) for greyscale or (3, H, W) for colour (16-bit images keep their 16
    bits; an alpha channel is dropped). ``.npy``: the array as it is.
    """
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"input file not found: {file}")
    suffix = file.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except Exception as error:  # noqa: BLE001 - any decoding failure is bad input
            raise CLIError(f"cannot read {file} as a .npy array: {_one_line(error)}") from error
        if array.dtype.kind not in "fiub":
            raise CLIError(f"{file} holds {array.dtype} values; a numeric array is needed")
        tensor = torch.as_tensor(array.astype(np.float32))
        picture, geometry = _array_picture(array)
        return LoadedInput(file, tensor, picture, geometry)
    if suffix in IMAGE_SUFFIXES:
        return _load_image(file, preprocess)
    raise CLIError(
        f"unsupported input {file}: use PNG/JPEG images or .npy arrays "
        f"({', '.join(INPUT_SUFFIXES)})"
    )


def _array_picture(array: np.ndarray) -> tuple[np.ndarray | None, Geometry | None]:
    """An .npy array shaped like an image (C in 1, 3; H, W) as a picture to draw maps on."""
    if array.ndim != 3 or array.shape[0] not in (1, 3) or min(array.shape[1:]) < 2:
        return None, None
    values = np.moveaxis(array.astype(np.float64), 0, -1)
    low, high = float(values.min()), float(values.max())
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return values, Geometry.identity(array.shape[2], array.shape[1])


def _decode(file: Path) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise CLIError("reading images needs pillow: pip install 'innspect[vision]'") from error
    try:
        with warnings.catch_warnings():
            # Above this size PIL warns and, at twice it, refuses (a decompression bomb).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                opened.load()
                return opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise CLIError(
            f"image {file} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS} "
            "pixels); resize it first"
        ) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CLIError(f"cannot decode image {file}: {_one_line(error)}") from error


def _as_float_pixels(image: Any) -> np.ndarray:
    """(H, W) greyscale or (H, W, 3) colour pixels in [0, 1], keeping 16-bit precision."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale (PNG): PIL's convert("L") would keep only the top values.
        return np.asarray(image, dtype=np.float64) / 65535.0
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if mode in ("1", "L", "LA", "La", "P") and not _palette_has_colour(image):
        return np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _palette_has_colour(image: Any) -> bool:
    if image.mode != "P":
        return False
    rgb = np.asarray(image.convert("RGB"))
    return not (
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    )


def _load_image(file: Path, preprocess: str) -> LoadedInput:
    from PIL import Image

    image = _decode(file)
    pixels = _as_float_pixels(image)  # (H, W) or (H, W, 3)
    colour = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=-1)
    height, width = pixels.shape[:2]
    if preprocess == "imagenet":
        scale = 256 / min(width, height)
        resized = (max(224, round(width * scale)), max(224, round(height * scale)))
        rgb = Image.fromarray((colour * 255).round().astype(np.uint8), mode="RGB")
        rgb = rgb.resize(resized, Image.Resampling.BILINEAR)
        left, top = (resized[0] - 224) // 2, (resized[1] - 224) // 2
        rgb = rgb.crop((left, top, left + 224, top + 224))
        values = torch.as_tensor(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        geometry = Geometry((width, height), resized, (left, top, 224, 224))
        return LoadedInput(file, (values - mean) / std, colour, geometry)
    tensor = torch.as_tensor(pixels, dtype=torch.float32)
    tensor = tensor[None] if pixels.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
    return LoadedInput(file, tensor, colour, Geometry.identity(width, height))


def check_channels(model: nn.Module, sample: LoadedInput) -> None:
    """A clear message when a greyscale image meets a model whose first layer wants colour."""
    first = next((m for m in model.modules() if hasattr(m, "in_channels")), None)
    if first is None or sample.tensor.ndim != 3:
        return
    expected, given = int(first.in_channels), int(sample.tensor.shape[0])
    if expected != given and sample.path.suffix.lower() in IMAGE_SUFFIXES:
        kind = "greyscale (1 channel)" if given == 1 else f"{given} channels"
        raise CLIError(
            f"image {sample.path} is {kind} but the model's first layer takes {expected} "
            f"channel{'s' if expected != 1 else ''}; "
            + (
                "convert the image to RGB or use --preprocess imagenet (which does)"
                if given == 1
                else "convert the image to greyscale"
            )
        )


# -- models ------------------------------------------------------------------------------------
def default_preprocess(spec: str) -> str:
    """The preprocessing a model source expects: ImageNet's for torchvision, else none."""
    return "imagenet" if spec.startswith("torchvision:") else "none"


@dataclass
class LoadedModel:
    """The model to explain and what is known about it."""

    module: nn.Module
    class_names: list[str] | None  # names of the output neurons, when known
    random_weights: bool  # no --weights given: freshly initialised (seeded) weights


def load_model(
    spec: str,
    weights: str | None,
    example: torch.Tensor | None = None,
    seed: int | None = None,
    strip_softmax: bool = False,
) -> LoadedModel:
    """The model named by ``spec``, in eval mode.

    ``spec`` is a TorchScript file, ``torchvision:NAME`` or ``package.module:factory`` (a
    callable returning the nn.Module, importable from the installed packages or the current
    folder); ``weights`` a state dict file loaded with ``torch.load(weights_only=True)``.
    TorchScript is converted to a torch.fx graph (innspect analyzes graphs, and TorchScript
    cannot be traced), which needs ``example``. ``seed`` seeds the random initial weights;
    ``strip_softmax`` removes a final softmax / log-softmax (``model_wo_softmax``).
    Class names come from torchvision's weight metadata when weights are loaded.
    """
    if seed is not None:
        torch.manual_seed(seed)
    class_names = None
    if os.path.isfile(spec):
        model = _load_torchscript(Path(spec), example)
    elif spec.startswith("torchvision:"):
        model, class_names = _torchvision_model(spec.split(":", 1)[1])
    elif ":" in spec:
        model = _factory_model(spec)
    else:
        raise CLIError(
            f"model file not found: {spec} (give a TorchScript file, torchvision:NAME or "
            "package.module:factory)"
        )
    random_weights = weights is None and not os.path.isfile(spec)
    if weights is not None:
        load_weights(model, weights)
    if random_weights:
        class_names = None  # names of a trained model's classes mean nothing here
    model = model.eval()
    if strip_softmax:
        from innspect.errors import OutputActivationError
        from innspect.model_utils import model_wo_softmax

        try:
            model = model_wo_softmax(model)
        except OutputActivationError as error:
            raise CLIError(f"--strip-softmax: {error}") from error
    return LoadedModel(model, class_names, random_weights)


def read_labels(path: str) -> list[str]:
    """Class names from a text file (one per line, in output order) or a JSON list."""
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"labels file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read labels {file}: {_one_line(error)}") from error
    if text.lstrip().startswith("["):
        import json

        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise CLIError(f"labels {file} is not a JSON list: {error}") from error
        if not isinstance(names, list):
            raise CLIError(f"labels {file} must hold a JSON list of names")
        return [str(name) for name in names]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise CLIError(f"labels file {file} is empty: give one class name per line")
    return names


def _torchvision_model(name: str) -> tuple[nn.Module, list[str] | None]:
    try:
        import torchvision
    except ImportError as error:
        raise CLIError(
            "torchvision models need torchvision: pip install 'innspect[vision]'"
        ) from error
    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name.lower(), available, n=3)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else "e.g. " + ", ".join(sorted(available)[:8])
        )
        raise CLIError(f"unknown torchvision model '{name}'; {hint}")
    builder = torchvision.models.get_model_builder(name)
    options: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        # Detection and segmentation builders download ImageNet backbone weights by default.
        options["weights_backbone"] = None
    try:
        model = builder(**options)
    except Exception as error:  # noqa: BLE001 - e.g. a builder that needs more arguments
        raise CLIError(f"cannot build torchvision:{name}: {_one_line(error)}") from error
    try:
        categories = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")
    except (ValueError, AttributeError, KeyError):
        categories = None
    return model, (list(categories) if categories else None)


def _factory_model(spec: str) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"model spec '{spec}' must look like package.module:factory")
    # `python -m` puts the current folder on the path, the installed `innspect` script does
    # not: a user's own mynet.py next to them must import either way.
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CLIError(
            f"cannot import module '{module_name}' (looked in the installed packages and the "
            f"current folder {here}): {_one_line(error)}"
        ) from error
    except Exception as error:  # noqa: BLE001 - the user's module failed while importing
        raise CLIError(
            f"importing '{module_name}' failed: {type(error).__name__}: {_one_line(error)}"
        ) from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CLIError(f"module '{module_name}' has no callable '{attribute}'")
    try:
        model = factory()
    except Exception as error:  # noqa: BLE001 - the user's factory is user input
        raise CLIError(
            f"calling {spec}() failed: {type(error).__name__}: {_one_line(error)} (the factory "
            "must build the model without arguments)"
        ) from error
    if not isinstance(model, nn.Module):
        raise CLIError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict into ``model``; keys and shapes must match exactly."""
    if not os.path.isfile(path):
        raise CLIError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CLIError(
            f"cannot read weights {path}: it holds Python objects other than tensors (e.g. a "
            "whole model saved with torch.save(model)), which innspect does not unpickle "
            "because that can run arbitrary code; save model.state_dict() instead"
        ) from error
    except Exception as error:  # noqa: BLE001 - any other reading failure is bad input
        raise CLIError(f"cannot read weights {path}: {_one_line(error)}") from error
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]  # a training checkpoint: take its model part
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CLIError(f"{path} is not a state dict (a mapping of names to tensors)")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if mismatched:
        problems.append(f"shapes differ (file vs model): {_few(mismatched)}")
    if problems:
        raise CLIError(f"weights {path} do not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _load_torchscript(path: Path, example: torch.Tensor | None) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001
        raise CLIError(f"cannot load {path} as a TorchScript model: {_one_line(error)}") from error
    if example is None:
        raise CLIError("a TorchScript model needs an input to be converted")
    return torchscript_to_fx(scripted, example)


# aten operations of a converted TorchScript graph -> the torch functions innspect classifies.
# Each pair takes the same positional arguments.
_ATEN_TO_TORCH: dict[Any, Callable[..., Any]] = {
    torch.ops.aten.conv1d.default: F.conv1d,
    torch.ops.aten.conv2d.default: F.conv2d,
    torch.ops.aten.conv3d.default: F.conv3d,
    torch.ops.aten.linear.default: F.linear,
    torch.ops.aten.relu.default: torch.relu,
    # In-place forms (TorchScript's `out += identity`, `relu_`): innspect keeps every recorded
    # value as it was produced, so they become their out-of-place twins.
    torch.ops.aten.relu_.default: torch.relu,
    torch.ops.aten.add_.Tensor: torch.add,
    torch.ops.aten.max_pool2d.default: F.max_pool2d,
    torch.ops.aten.avg_pool2d.default: F.avg_pool2d,
    torch.ops.aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    torch.ops.aten.flatten.using_ints: torch.flatten,
    torch.ops.aten.view.default: torch.reshape,
    torch.ops.aten.reshape.default: torch.reshape,
    torch.ops.aten.add.Tensor: torch.add,
    torch.ops.aten.cat.default: torch.cat,
    torch.ops.aten.mean.dim: torch.mean,
    torch.ops.aten.dropout.default: F.dropout,
}


def torchscript_to_fx(scripted: torch.jit.ScriptModule, example: torch.Tensor) -> fx.GraphModule:
    """Convert a TorchScript module to a plain torch.fx GraphModule innspect can analyze.

    Uses torch's TorchScript-to-export converter (``torch._export.converter``, a private API
    of the pinned torch), drops its shape guards, returns a single output tensor instead of a
    1-tuple, and maps the common aten operations back to the torch functions innspect's
    graph classifier knows (so ReLUs stay ReLUs for deconvnet, guided backprop and LRP).
    """
    try:
        from torch._export.converter import TS2EPConverter

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = TS2EPConverter(scripted, (example,)).convert().module()
    except Exception as error:  # noqa: BLE001
        raise CLIError(
            f"cannot convert the TorchScript model to a graph: {_one_line(error)}; pass the "
            "model as package.module:factory with --weights instead"
        ) from error
    graph = fx.Graph()
    output = graph.graph_copy(exported.graph, {})
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
        elif node.op == "call_function" and node.target in _ATEN_TO_TORCH:
            node.target = _ATEN_TO_TORCH[node.target]
    if isinstance(output, tuple | list) and len(output) == 1:
        output = output[0]
    graph.output(output)
    module = fx.GraphModule(exported, graph, class_name=type(scripted).__name__ or "Scripted")
    _layers_as_modules(module)
    return module


def _layers_as_modules(module: fx.GraphModule) -> None:
    """Turn ``F.linear`` / ``F.convNd`` / eval-mode ``batch_norm`` calls on stored tensors
    into nn.Linear / nn.ConvNd / nn.BatchNormNd modules.

    innspect's LRP rules work on layer modules; the new modules share the stored tensors.
    """
    convolutions = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
    for index, node in enumerate(list(module.graph.nodes)):
        if node.op == "call_function" and node.target is torch.ops.aten.batch_norm.default:
            _batch_norm_as_module(module, node, f"layer_{index}")
            continue
        if node.op == "call_function" and node.target in _POOLING:
            _pooling_as_module(module, node, f"layer_{index}")
            continue
        if node.op != "call_function" or node.target not in (F.linear, *convolutions):
            continue
        args = list(node.args) + [None] * 7
        weight_node, bias_node = args[1], args[2]
        if not _is_attr(weight_node) or not (bias_node is None or _is_attr(bias_node)):
            continue
        weight = _attribute(module, weight_node.target)
        bias = None if bias_node is None else _attribute(module, bias_node.target)
        if node.target is F.linear:
            layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            stride, padding, dilation = args[3] or 1, args[4] or 0, args[5] or 1
            groups = args[6] or 1
            layer = convolutions[node.target](
                weight.shape[1] * groups,
                weight.shape[0],
                tuple(weight.shape[2:]),
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=bias is not None,
            )
        layer.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
        name = f"layer_{index}"
        module.add_submodule(name, layer)
        with module.graph.inserting_before(node):
            replacement = module.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        module.graph.erase_node(node)
    module.graph.eliminate_dead_code()
    module.recompile()


def _max_pool(kernel, stride=(), padding=0, dilation=1, ceil_mode=False) -> nn.Module:
    return nn.MaxPool2d(kernel, tuple(stride) or kernel, padding, dilation, ceil_mode=ceil_mode)


def _avg_pool(
    kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor=None
) -> nn.Module:
    return nn.AvgPool2d(
        kernel, tuple(stride) or kernel, padding, ceil_mode, count_include_pad, divisor
    )


# Pooling calls become modules too: Zennit's composites, which innspect follows, treat pooling
# modules (z-rule for averages) and functional pooling (the gradient) differently.
_POOLING: dict[Any, Callable[..., nn.Module]] = {
    F.max_pool2d: _max_pool,
    F.avg_pool2d: _avg_pool,
    F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
}


def _pooling_as_module(module: fx.GraphModule, node: fx.Node, name: str) -> None:
    if node.kwargs or any(isinstance(a, fx.Node) for a in node.args[1:]):
        return  # arguments computed in the graph: keep the call
    module.add_submodule(name, _POOLING[node.target](*node.args[1:]))
    with module.graph.inserting_before(node):
        replacement = module.graph.call_module(name, (node.args[0],))
    node.replace_all_uses_with(replacement)
    module.graph.erase_node(node)


def _batch_norm_as_module(module: fx.GraphModule, node: fx.Node, name: str) -> None:
    """An eval-mode ``aten.batch_norm`` on stored tensors as an nn.BatchNormNd module, which
    the relevance methods fold into the convolution before it."""
    args = list(node.args) + [None] * 9
    source, weight, bias, mean, var, training, _, eps = args[:8]
    if training or not all(_is_attr(a) or a is None for a in (weight, bias)):
        return
    if not (_is_attr(mean) and _is_attr(var)):
        return
    running_mean = _attribute(module, mean.target)
    value = source.meta.get("val") if isinstance(source, fx.Node) else None
    rank = value.dim() if isinstance(value, torch.Tensor) else 4
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 5: nn.BatchNorm3d}.get(rank, nn.BatchNorm2d)
    layer = kind(
        running_mean.shape[0],
        eps=float(eps if eps is not None else 1e-5),
        affine=weight is not None,
    )
    if weight is not None:
        layer.weight = nn.Parameter(_attribute(module, weight.target).detach())
    if bias is not None:
        layer.bias = nn.Parameter(_attribute(module, bias.target).detach())
    layer.running_mean = running_mean.detach().clone()
    layer.running_var = _attribute(module, var.target).detach().clone()
    layer.eval()
    module.add_submodule(name, layer)
    with module.graph.inserting_before(node):
        replacement = module.graph.call_module(name, (source,))
    node.replace_all_uses_with(replacement)
    module.graph.erase_node(node)


def _attribute(module: nn.Module, target: str) -> torch.Tensor:
    return functools.reduce(getattr, target.split("."), module)


def _is_attr(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _few(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _one_line(error: BaseException) -> str:
    text = _ANSI.sub("", str(error)).strip().splitlines()
    return text[0] if text else type(error).__name__
