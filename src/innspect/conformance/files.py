"""Reading reference files: iNNvestigate's (test-data-innvestigate) and innspect's own.

Two layouts, both HDF5 (REFERENCES.md A5, A7):

- layer files: ``input`` (channels last) and one group per layer model with ``weights/0..``
  (Keras layouts), ``output`` and ``attribution``. Made by iNNvestigate 1.0.9 or by
  ``innspect references generate --layers``.
- model files (``innspect references generate --model``): ``input``, ``output``,
  ``attribution`` and ``layerwise_relevances/<node>``; the model is rebuilt from the spec,
  seed and weights named in the attributes, and its weights' digest is checked.

A file made by innspect carries ``generator = "innspect"`` and the analyzer's name and
options as JSON; an iNNvestigate file names the analyzer by its iNNvestigate key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from innspect.conformance.layers import build_layer_model
from innspect.conformance.names import innvestigate_method, innvestigate_tolerances
from innspect.errors import InnspectError, LoadingError, first_line
from innspect.loading.models import load_model

GENERATOR = "innspect"
LAYERWISE = "layerwise_relevances"
START_NODE = "-1"  # the start value, under iNNvestigate's node id of the head


class ReferenceDataError(InnspectError, ValueError):
    """A reference file is missing data, or its model cannot be rebuilt."""


@dataclass
class ReferenceCase:
    """One model of one reference file, with what it must reproduce.

    Attributes
    ----------
    expected
        ``"output"``, ``"attribution"`` and ``"layerwise_relevances/<node>"`` arrays.
    """

    file: Path
    model_label: str
    model: nn.Module
    method: str
    options: dict[str, Any]
    input: np.ndarray
    expected: dict[str, np.ndarray]
    rtol: float
    atol: float
    node_order: list[str] = field(default_factory=list)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names and values), to recognise the same weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _dataset(f: h5py.File, path: str, file: Path) -> np.ndarray:
    if path not in f or not isinstance(f[path], h5py.Dataset):
        raise ReferenceDataError(f"{file}: missing dataset '{path}'")
    return np.asarray(f[path])


def _attr(f: h5py.File | h5py.Group, key: str, file: Path) -> Any:
    if key not in f.attrs:
        raise ReferenceDataError(f"{file}: missing attribute '{key}' on '{f.name}'")
    value = f.attrs[key]
    return value.decode() if isinstance(value, bytes) else value


def _method_and_tolerances(
    f: h5py.File, file: Path
) -> tuple[str, dict[str, Any], float, float, bool]:
    """(analyzer name, options, rtol, atol, made by innspect)."""
    key = str(_attr(f, "analyzer_name", file))
    if f.attrs.get("generator") == GENERATOR:
        try:
            config = json.loads(str(_attr(f, "analyzer_config", file)))
        except ValueError as error:
            raise ReferenceDataError(
                f"{file}: attribute 'analyzer_config' is not JSON ({first_line(error)})"
            ) from error
        options = config.get("options", {}) if isinstance(config, dict) else None
        if not isinstance(options, dict):
            raise ReferenceDataError(
                f"{file}: attribute 'analyzer_config' must be an object with 'options'"
            )
        if isinstance(options.get("input_layer_rule"), list):
            options["input_layer_rule"] = tuple(options["input_layer_rule"])
        return key, options, float(_attr(f, "rtol", file)), float(_attr(f, "atol", file)), True
    try:
        name, options = innvestigate_method(key)
    except KeyError as error:
        raise ReferenceDataError(f"{file}: {error.args[0]}") from error
    rtol, atol = innvestigate_tolerances(key)
    return name, options, rtol, atol, False


def read_reference_file(
    path: str | Path, models: dict[tuple, nn.Module] | None = None
) -> list[ReferenceCase]:
    """Every model of one reference file, rebuilt, with its expected arrays.

    ``models``: a cache of rebuilt models by (spec, weights, seed), shared over the files
    of a folder (a generated set has one file per analyzer, all for the same model).
    """
    file = Path(path)
    try:
        f = h5py.File(file, "r")
    except OSError as error:
        raise ReferenceDataError(f"{file}: not a readable HDF5 file ({error})") from error
    with f:
        method, options, rtol, atol, ours = _method_and_tolerances(f, file)
        x = _dataset(f, "input", file)
        if ours and f.attrs.get("kind") == "model":
            return [_model_case(f, file, method, options, x, rtol, atol, models)]
        cases = []
        layer_names = [k for k in f if isinstance(f[k], h5py.Group) and "weights" in f[k]]
        if not layer_names:
            raise ReferenceDataError(
                f"{file}: no layer model groups (a group with 'weights', 'output', "
                "'attribution') and no model-file attributes"
            )
        for layer_name in layer_names:
            group = f[layer_name]
            weights_group = group["weights"]
            weights = [np.asarray(weights_group[str(i)]) for i in range(len(weights_group))]
            try:
                model = build_layer_model(layer_name, weights)
            except (ValueError, KeyError) as error:
                raise ReferenceDataError(
                    f"{file}: layer model '{layer_name}' cannot be rebuilt: {error}"
                ) from error
            expected = {
                "output": _dataset(f, f"{layer_name}/output", file),
                "attribution": _dataset(f, f"{layer_name}/attribution", file),
            }
            cases.append(
                ReferenceCase(file, layer_name, model, method, options, x, expected, rtol, atol)
            )
        return cases


def _model_case(
    f: h5py.File,
    file: Path,
    method: str,
    options: dict[str, Any],
    x: np.ndarray,
    rtol: float,
    atol: float,
    models: dict[tuple, nn.Module] | None = None,
) -> ReferenceCase:
    spec = str(_attr(f, "model_name", file))
    weights = str(f.attrs.get("weights_file", "")) or None
    seed = int(_attr(f, "model_seed", file))
    models = {} if models is None else models
    key = (spec, weights, seed)
    if key not in models:
        model = build_model(spec, weights, seed, example=torch.as_tensor(x[:1]))
        models[key] = model
        models[key + ("digest",)] = weights_digest(model)  # type: ignore[assignment]
    model = models[key]
    digest = str(_attr(f, "weights_sha256", file))
    if models[key + ("digest",)] != digest:
        raise ReferenceDataError(
            f"{file}: the model rebuilt from '{spec}' (seed {seed}, weights {weights}) has "
            "other weights than the one the file was made with; rebuild it the same way "
            "(same torch version and weights file)"
        )
    expected = {
        "output": _dataset(f, "output", file),
        "attribution": _dataset(f, "attribution", file),
    }
    order: list[str] = []
    if LAYERWISE in f:
        order = json.loads(str(f[LAYERWISE].attrs.get("node_order", "[]"))) or list(f[LAYERWISE])
        for node in order:
            expected[f"{LAYERWISE}/{node}"] = _dataset(f, f"{LAYERWISE}/{node}", file)
    return ReferenceCase(file, spec, model, method, options, x, expected, rtol, atol, order)


def build_model(
    spec: str, weights: str | None, seed: int, example: torch.Tensor | None = None
) -> nn.Module:
    """The model ``spec`` (as ``innspect analyze --model``) built after ``torch.manual_seed(seed)``,
    in eval mode; the seed fixes randomly initialised weights."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        loaded = load_model(spec, weights, example=example)
    except LoadingError as error:
        raise ReferenceDataError(f"cannot build model '{spec}': {error}") from error
    finally:
        torch.random.set_rng_state(state)
    return loaded.module.eval()
