"""Loading what ``innspect analyze`` is given: models (TorchScript, torchvision, factories),
state dicts and inputs (PNG/JPEG images, .npy arrays). Every failure is a ``CLIError`` with a
one-line message saying what was wrong.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("imagenet", "none")


class CLIError(Exception):
    """Bad input from the command line; the message is shown as one line, exit status 2."""


# -- inputs ------------------------------------------------------------------------------------
def load_input(path: str | os.PathLike, preprocess: str) -> torch.Tensor:
    """One input sample (no batch axis) from an image or an .npy file.

    Images: with ``preprocess="imagenet"`` resized (shorter side 256), centre-cropped to
    224 x 224, RGB and normalised with ImageNet's mean and std; with "none" only scaled to
    [0, 1] as (1, H, W) for grayscale or (3, H, W) for colour. ``.npy``: the array as it is.
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
        return torch.as_tensor(array.astype(np.float32))
    if suffix in IMAGE_SUFFIXES:
        return _load_image(file, preprocess)
    raise CLIError(
        f"unsupported input {file}: use PNG/JPEG images or .npy arrays "
        f"({', '.join(IMAGE_SUFFIXES)}, .npy)"
    )


def _load_image(file: Path, preprocess: str) -> torch.Tensor:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise CLIError("reading images needs pillow: pip install 'innspect[vision]'") from error
    try:
        with Image.open(file) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise CLIError(f"cannot decode image {file}: {_one_line(error)}") from error
    if preprocess == "imagenet":
        image = image.convert("RGB")
        width, height = image.size
        scale = 256 / min(width, height)
        image = image.resize(
            (max(224, round(width * scale)), max(224, round(height * scale))),
            Image.Resampling.BILINEAR,
        )
        width, height = image.size
        left, top = (width - 224) // 2, (height - 224) // 2
        image = image.crop((left, top, left + 224, top + 224))
        pixels = torch.as_tensor(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        return (pixels - mean) / std
    gray = image.mode in ("1", "L", "I", "I;16", "F")
    image = image.convert("L" if gray else "RGB")
    pixels = torch.as_tensor(np.asarray(image, dtype=np.float32) / 255.0)
    return pixels[None] if gray else pixels.permute(2, 0, 1)


# -- models ------------------------------------------------------------------------------------
def load_model(spec: str, weights: str | None, example: torch.Tensor | None = None) -> nn.Module:
    """The model named by ``spec``, in eval mode.

    ``spec`` is a TorchScript file, ``torchvision:NAME`` or ``package.module:factory`` (a
    callable returning the nn.Module); ``weights`` a state dict file loaded with
    ``torch.load(weights_only=True)``. TorchScript is converted to a torch.fx graph (innspect
    analyzes graphs, and TorchScript cannot be traced), which needs ``example``.
    """
    if os.path.isfile(spec):
        model = _load_torchscript(Path(spec), example)
    elif spec.startswith("torchvision:"):
        model = _torchvision_model(spec.split(":", 1)[1])
    elif ":" in spec:
        model = _factory_model(spec)
    else:
        raise CLIError(
            f"model file not found: {spec} (give a TorchScript file, torchvision:NAME or "
            "package.module:factory)"
        )
    if weights is not None:
        load_weights(model, weights)
    elif not os.path.isfile(spec):
        print(
            f"innspect: warning: no --weights given; {spec} has freshly initialised weights",
            file=sys.stderr,
        )
    return model.eval()


def _torchvision_model(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError as error:
        raise CLIError(
            "torchvision models need torchvision: pip install 'innspect[vision]'"
        ) from error
    available = torchvision.models.list_models()
    if name not in available:
        raise CLIError(
            f"unknown torchvision model '{name}'; e.g. {', '.join(sorted(available)[:8])}, ..."
        )
    return torchvision.models.get_model(name, weights=None)


def _factory_model(spec: str) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"model spec '{spec}' must look like package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CLIError(f"cannot import module '{module_name}': {_one_line(error)}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CLIError(f"module '{module_name}' has no callable '{attribute}'")
    model = factory()
    if not isinstance(model, nn.Module):
        raise CLIError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict into ``model``; keys and shapes must match exactly."""
    if not os.path.isfile(path):
        raise CLIError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is bad input
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
    """Turn ``F.linear`` / ``F.convNd`` calls on stored weights into nn.Linear / nn.ConvNd.

    innspect's LRP rules work on layer modules; the new modules share the stored tensors.
    """
    convolutions = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
    for index, node in enumerate(list(module.graph.nodes)):
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


def _attribute(module: nn.Module, target: str) -> torch.Tensor:
    return functools.reduce(getattr, target.split("."), module)


def _is_attr(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _few(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
