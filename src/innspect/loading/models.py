"""Models from what users name: a TorchScript file, ``torchvision:NAME`` or
``package.module:factory``, with a state dict file of weights; ``ModelSpec`` is that pair in
a form Ray workers build the model from. Every failure is a ``LoadingError`` whose one-line
message says what was wrong.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import os
import pickle
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.errors import InputError, LoadingError, OutputActivationError, first_line
from innspect.graph.strip import model_wo_softmax
from innspect.graph.torchscript import torchscript_to_fx
from innspect.loading.keras import load_keras


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

    ``spec`` is a TorchScript file, ``keras:FILE`` (a Keras ``.h5`` / ``.keras`` model read
    by ``load_keras``, inputs in Keras's layout; a bare path ending in ``.h5`` or ``.keras``
    too), ``torchvision:NAME`` or ``package.module:factory`` (a callable returning the
    nn.Module, importable from the installed packages or the current folder); ``weights`` a
    state dict file loaded with ``torch.load(weights_only=True)``.
    TorchScript is converted to a torch.fx graph (innspect analyzes graphs, and TorchScript
    cannot be traced), which needs ``example``. ``seed`` seeds the random initial weights;
    ``strip_softmax`` removes a final softmax / log-softmax (``model_wo_softmax``).
    Class names come from torchvision's weight metadata when weights are loaded.
    """
    if seed is not None:
        torch.manual_seed(seed)
    class_names = None
    keras_file = _keras_path(spec)
    if keras_file is not None:
        model = load_keras(keras_file)
    elif os.path.isfile(spec):
        model = _load_torchscript(Path(spec), example)
    elif spec.startswith("torchvision:"):
        model, class_names = _torchvision_model(spec.split(":", 1)[1])
    elif ":" in spec:
        model = _factory_model(spec)
    else:
        raise LoadingError(
            f"model file not found: {spec} (give a TorchScript file, keras:FILE.h5, "
            "torchvision:NAME or package.module:factory)"
        )
    random_weights = weights is None and not os.path.isfile(spec) and keras_file is None
    if weights is not None:
        load_weights(model, weights)
    if random_weights:
        class_names = None  # names of a trained model's classes mean nothing here
    model = model.eval()
    if strip_softmax:
        try:
            model = model_wo_softmax(model)
        except OutputActivationError as error:
            raise LoadingError(f"--strip-softmax: {error}") from error
    return LoadedModel(model, class_names, random_weights)


def _keras_path(spec: str) -> str | None:
    """The Keras file ``spec`` names (``keras:FILE``, or a path ending in .h5 / .keras)."""
    if spec.startswith("keras:"):
        return spec.split(":", 1)[1]
    if spec.lower().endswith((".h5", ".hdf5", ".keras")) and os.path.exists(spec):
        return spec
    return None


def read_labels(path: str) -> list[str]:
    """Class names from a text file (one per line, in output order) or a JSON list."""
    file = Path(path)
    if not file.is_file():
        raise LoadingError(f"labels file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LoadingError(f"cannot read labels {file}: {first_line(error)}") from error
    if text.lstrip().startswith("["):
        import json

        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise LoadingError(f"labels {file} is not a JSON list: {error}") from error
        if not isinstance(names, list):
            raise LoadingError(f"labels {file} must hold a JSON list of names")
        return [str(name) for name in names]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise LoadingError(f"labels file {file} is empty: give one class name per line")
    return names


def _torchvision_model(name: str) -> tuple[nn.Module, list[str] | None]:
    try:
        import torchvision
    except ImportError as error:
        raise LoadingError(
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
        raise LoadingError(f"unknown torchvision model '{name}'; {hint}")
    builder = torchvision.models.get_model_builder(name)
    options: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        # Detection and segmentation builders download ImageNet backbone weights by default.
        options["weights_backbone"] = None
    try:
        model = builder(**options)
    except Exception as error:  # noqa: BLE001 - e.g. a builder that needs more arguments
        raise LoadingError(f"cannot build torchvision:{name}: {first_line(error)}") from error
    try:
        categories = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")
    except (ValueError, AttributeError, KeyError):
        categories = None
    return model, (list(categories) if categories else None)


def _factory_model(spec: str) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise LoadingError(f"model spec '{spec}' must look like package.module:factory")
    # `python -m` puts the current folder on the path, the installed `innspect` script does
    # not: a user's own mynet.py next to them must import either way.
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise LoadingError(
            f"cannot import module '{module_name}' (looked in the installed packages and the "
            f"current folder {here}): {first_line(error)}"
        ) from error
    except Exception as error:  # noqa: BLE001 - the user's module failed while importing
        raise LoadingError(
            f"importing '{module_name}' failed: {type(error).__name__}: {first_line(error)}"
        ) from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise LoadingError(f"module '{module_name}' has no callable '{attribute}'")
    try:
        model = factory()
    except Exception as error:  # noqa: BLE001 - the user's factory is user input
        raise LoadingError(
            f"calling {spec}() failed: {type(error).__name__}: {first_line(error)} (the factory "
            "must build the model without arguments)"
        ) from error
    if not isinstance(model, nn.Module):
        raise LoadingError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict into ``model``; keys and shapes must match exactly."""
    if not os.path.isfile(path):
        raise LoadingError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise LoadingError(
            f"cannot read weights {path}: it holds Python objects other than tensors (e.g. a "
            "whole model saved with torch.save(model)), which innspect does not unpickle "
            "because that can run arbitrary code; save model.state_dict() instead"
        ) from error
    except Exception as error:  # noqa: BLE001 - any other reading failure is bad input
        raise LoadingError(f"cannot read weights {path}: {first_line(error)}") from error
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]  # a training checkpoint: take its model part
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise LoadingError(f"{path} is not a state dict (a mapping of names to tensors)")
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
        raise LoadingError(f"weights {path} do not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _load_torchscript(path: Path, example: torch.Tensor | None) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001
        raise LoadingError(
            f"cannot load {path} as a TorchScript model: {first_line(error)}"
        ) from error
    if example is None:
        raise LoadingError("a TorchScript model needs an input to be converted")
    return torchscript_to_fx(scripted, example)


def _few(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


# -- models ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """How a worker builds the model: ``spec`` as ``innspect analyze --model`` takes it
    (a TorchScript file, ``keras:FILE``, ``torchvision:NAME`` or ``package.module:factory``;
    workers read a Keras file themselves) plus a state
    dict file loaded with ``weights_only=True``. Never a pickled module."""

    spec: str
    weights: str | None = None
    seed: int = 0

    def load(self, example: torch.Tensor | None = None) -> nn.Module:
        """Build the model in eval mode (seeded, so random weights are the same everywhere)."""
        return load_model(self.spec, self.weights, example=example, seed=self.seed).module


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class name and its state dict (names, dtypes, shapes, bytes)."""
    # The class by its name: a TorchScript file of the model loads as a GraphModule of the
    # same name (its __qualname__ is fx's own), and must give the same fingerprint.
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(array.numpy().tobytes() if array.dtype != torch.bfloat16 else b"bf16")
    return digest.hexdigest()


def checked_model_spec(
    model: nn.Module, model_spec: ModelSpec | str | Any, example: np.ndarray
) -> tuple[ModelSpec, str]:
    """The ModelSpec workers build ``model`` from, checked to give ``model``'s weights, and
    the model's fingerprint."""
    if isinstance(model_spec, str):
        model_spec = ModelSpec(model_spec)
    if not isinstance(model_spec, ModelSpec):
        raise InputError(
            "backend='ray' builds the model on each worker: give model_spec=ModelSpec("
            "'package.module:factory' | 'torchvision:NAME' | TorchScript file, weights='state.pt')"
        )
    fingerprint = model_fingerprint(model)
    if model_fingerprint(model_spec.load(torch.as_tensor(example))) != fingerprint:
        raise InputError(
            f"model_spec {model_spec.spec} (weights {model_spec.weights}) does not build this "
            "model: its weights differ; save model.state_dict() and give that file as weights"
        )
    return model_spec, fingerprint
