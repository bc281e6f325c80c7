"""``innspect references generate``: reference data in test-data-innvestigate's layout.

Two sets (REFERENCES.md A5, A7):

- a model set: per analyzer one file ``<analyzer>.hdf5`` with ``input``, ``output``,
  ``attribution`` and ``layerwise_relevances/<node>`` (innspect's node names: the signal at
  each node's output, ``input`` being the attribution, and the start value under ``-1``
  as iNNvestigate stores its head);
- a layer set (``layers=True``): per analyzer one file with iNNvestigate's six
  ``Input(10, 10, 3) -> layer -> Flatten`` models, their weights in Keras layouts, so the
  files read exactly like iNNvestigate's. Unlike iNNvestigate's, the weights and biases are
  random and non-zero and the inputs signed, so the files also test biases and negative
  inputs.

Both record the analyzer's options as JSON and the innspect / torch versions. Generation is
deterministic: seeded inputs, weights and noise, so the same command writes the same data.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from innspect.analyzers.options import jsonable
from innspect.analyzers.registry import analyzer_class, list_analyzers
from innspect.conformance.check import innspect_implementation
from innspect.conformance.files import (
    GENERATOR,
    LAYERWISE,
    START_NODE,
    ReferenceDataError,
    build_model,
    weights_digest,
)
from innspect.conformance.layers import INPUT_SHAPE, LAYER_MODELS, random_layer_model
from innspect.errors import InnspectError, LoadingError
from innspect.loading.inputs import load_input
from innspect.util.files import atomic_path
from innspect.util.progress import progress
from innspect.util.version import VERSION

LAYER_BATCH = 8  # as test-data-innvestigate
# Tolerances written into the files: float64 layer models are reproducible to rounding;
# float32 models leave room for another machine's summation order.
LAYER_TOLERANCES = (1e-7, 1e-10)
MODEL_TOLERANCES = (1e-4, 1e-7)
# Options some analyzers need to run at all (the same choices as the demo).
NAMED_OPTIONS: dict[str, dict[str, Any]] = {
    # Flat on the first linear layer: every layer model has one (1 would be out of range on
    # the one-layer models, which the analyzer refuses).
    "lrp.sequential_preset_b_flat_until_idx": {"until_layer_idx": 0},
    "lrp.alpha_beta": {"alpha": 2.0, "beta": 1.0},
}


def _accepted(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= set(inspect.signature(init).parameters)
    return names


def method_options(
    name: str, value_range: tuple[float, float], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The options ``generate`` gives analyzer ``name``: a seed for random methods, the
    input's range as ``low`` / ``high`` for bounded rules, ``extra`` where accepted."""

    accepted = _accepted(analyzer_class(name))
    options: dict[str, Any] = {}
    if "seed" in accepted:
        options["seed"] = 0
    for key, value in zip(("low", "high"), value_range, strict=True):
        if key in accepted:
            options[key] = value
    options.update(NAMED_OPTIONS.get(name, {}))
    options.update({k: v for k, v in (extra or {}).items() if k in accepted})
    return options


def _versions() -> dict[str, str]:
    return {"innspect_version": VERSION, "torch_version": str(torch.__version__)}


def _write(group: h5py.Group, name: str, value: np.ndarray) -> None:
    # No timestamps, so the same data gives the same bytes.
    group.create_dataset(name, data=np.asarray(value), track_times=False)


def _config_json(name: str, options: dict[str, Any]) -> str:
    return json.dumps({"name": name, "options": jsonable(options)}, sort_keys=True)


def _select_methods(methods: Sequence[str] | None) -> list[str]:

    known = list_analyzers()
    if methods is None:
        return known
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ReferenceDataError(
            f"unknown analyzer(s) {', '.join(unknown)}; `innspect methods` lists them"
        )
    return list(methods)


def generate_model_references(
    model_spec: str,
    out: str | Path,
    x: np.ndarray,
    input_name: str,
    methods: Sequence[str] | None = None,
    weights: str | None = None,
    model_seed: int = 0,
    extra_options: dict[str, Any] | None = None,
    verbose: bool = False,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write one reference file per analyzer for the model ``model_spec``.

    Parameters
    ----------
    model_spec
        As ``innspect analyze --model``: TorchScript file, ``torchvision:NAME`` or
        ``package.module:factory``; built after ``torch.manual_seed(model_seed)``.
    x
        The input batch.
    methods
        Analyzer names (default: every registered analyzer that runs on the model).

    Returns
    -------
    The files written, and (analyzer, reason) for each analyzer that could not run.
    """

    names = _select_methods(methods)
    model = build_model(model_spec, weights, model_seed, example=torch.as_tensor(x[:1]))
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    x = np.asarray(x, dtype=np.float64 if dtype == torch.float64 else np.float32)
    with torch.no_grad():
        output = model(torch.as_tensor(x)).detach().cpu().numpy()
    value_range = (float(x.min()), float(x.max()))
    digest = weights_digest(model)
    written, skipped = [], []
    for name in progress(names, verbose, total=len(names), desc="analyzers"):
        options = method_options(name, value_range, extra_options)
        try:
            attribution, relevances = innspect_implementation(model, x, name, options)
        except (InnspectError, TypeError, ValueError) as error:
            if methods is not None:  # asked for by name: its failure is the user's to see
                raise
            skipped.append((name, " ".join(str(error).split())))
            continue
        path = Path(out) / f"{name}.hdf5"
        details = {
            "model_name": model_spec,
            "model_seed": model_seed,
            "weights_file": weights or "",
            "weights_sha256": digest,
            "input_name": input_name,
        }
        with _reference_file(path, "model", name, options, details, MODEL_TOLERANCES) as f:
            _write(f, "input", x)
            _write(f, "output", output)
            _write(f, "attribution", attribution)
            if relevances:
                group = f.create_group(LAYERWISE)
                order = [START_NODE] + [k for k in relevances if k != START_NODE]
                group.attrs["node_order"] = json.dumps(order)
                for node in order:
                    _write(group, node, relevances[node])
        written.append(path)
    return written, skipped


def generate_layer_references(
    out: str | Path,
    methods: Sequence[str] | None = None,
    seed: int = 0,
    extra_options: dict[str, Any] | None = None,
    verbose: bool = False,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write the layer set: per analyzer a file with the six layer models of REFERENCES.md A5.

    Each analyzer file draws its own weights from ``seed`` and the analyzer's name (as
    iNNvestigate's files have their own), the input ``(8, 10, 10, 3)`` is standard normal
    from ``seed``: a subset of methods writes the same files as the whole set.
    """

    names = _select_methods(methods)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((LAYER_BATCH, *INPUT_SHAPE), generator=generator, dtype=torch.float64).numpy()
    value_range = (float(x.min()), float(x.max()))
    written, skipped = [], []
    for name in progress(names, verbose, total=len(names), desc="analyzers"):
        options = method_options(name, value_range, extra_options)
        # Weights from the seed and the analyzer's name, not its position in the list
        # (iNNvestigate's depend on the position, REFERENCES.md A5).
        layer_generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
        results = {}
        try:
            for layer_name in LAYER_MODELS:
                model, weights = random_layer_model(layer_name, layer_generator)
                with torch.no_grad():
                    output = model(torch.as_tensor(x)).numpy()
                attribution, _ = innspect_implementation(model, x, name, options)
                results[layer_name] = (weights, output, attribution)
        except (InnspectError, TypeError, ValueError) as error:
            if methods is not None:
                raise
            skipped.append((name, " ".join(str(error).split())))
            continue
        path = Path(out) / f"{name}.hdf5"
        details = {"input_name": f"torch.randn seed {seed}"}
        with _reference_file(path, "layer", name, options, details, LAYER_TOLERANCES) as f:
            _write(f, "input", x)
            for layer_name, (weights, output, attribution) in results.items():
                group = f.create_group(layer_name)
                group.attrs["layer_name"] = layer_name
                _write(group, "attribution", attribution)
                _write(group, "output", output)
                weight_group = group.create_group("weights")
                for i, w in enumerate(weights):
                    _write(weight_group, str(i), w)
        written.append(path)
    return written, skipped


@contextlib.contextmanager
def _reference_file(
    path: Path,
    kind: str,
    name: str,
    options: dict[str, Any],
    details: dict[str, Any],
    tolerances: tuple[float, float],
) -> Iterator[h5py.File]:
    """A reference file written atomically, its header attributes (generator, kind, analyzer
    and its configuration, ``details``, tolerances, versions) already set."""

    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        f.attrs.update(
            {
                "generator": GENERATOR,
                "kind": kind,
                "analyzer_name": name,
                "analyzer_config": _config_json(name, options),
                **details,
                "rtol": tolerances[0],
                "atol": tolerances[1],
                **_versions(),
            }
        )
        yield f


def reference_input(
    files: Sequence[str] | None, random: int | None, shape: Sequence[int] | None, seed: int
) -> tuple[np.ndarray, str]:
    """The input batch of ``generate``: files (one sample each, as ``innspect analyze``) or
    ``random`` standard normal samples of ``shape`` drawn from ``seed``."""
    if files:
        try:
            loaded = [load_input(path, "none") for path in files]
        except LoadingError as error:
            raise ReferenceDataError(str(error)) from error
        samples = [item.tensor.numpy() for item in loaded]
        if len({s.shape for s in samples}) != 1:
            raise ReferenceDataError("the --input files have different shapes; give one shape")
        return np.stack(samples), ",".join(Path(p).name for p in files)
    if random is None or shape is None:
        raise ReferenceDataError("give --input FILE... or --random N with --shape C,H,W")
    if random < 1:
        raise ReferenceDataError(f"--random needs at least 1 sample, got {random}")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((random, *shape), generator=generator).numpy()
    return x, f"torch.randn seed {seed}"
