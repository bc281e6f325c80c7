"""``innspect references check``: rerun every reference file and compare, node by node.

An *implementation* is any callable

    implementation(model, x, method, options) -> attribution | (attribution, relevances)

with ``model`` a ``torch.nn.Module`` (float64 for layer files), ``x`` the file's input as
a numpy array, ``method`` and ``options`` an innspect analyzer name and its options (the
iNNvestigate configuration translated, see ``names.py``). It returns the attribution as an
array shaped like ``x``, optionally with a dict of layer-wise relevances by node name
(innspect's node names, the start value under ``"-1"``). innspect's own analyzers are the
default (:func:`innspect_implementation`).

Each array is compared as iNNvestigate's tests do, ``np.allclose(actual, reference, rtol,
atol)`` at the file's tolerances (REFERENCES.md A8).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.analyzers.api import analyzer_parameters
from innspect.analyzers.registry import analyzer_class, create_analyzer
from innspect.conformance.files import (
    LAYERWISE,
    START_NODE,
    ReferenceCase,
    ReferenceDataError,
    read_reference_file,
)
from innspect.errors import first_line
from innspect.util.progress import progress

Implementation = Callable[[nn.Module, np.ndarray, str, dict[str, Any]], Any]


@dataclass
class Comparison:
    """One array of one reference file compared with an implementation's."""

    file: str
    model: str
    node: str
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    passed: bool
    note: str = ""


def innspect_implementation(
    model: nn.Module, x: np.ndarray, method: str, options: dict[str, Any]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """innspect's analyzer ``method``: the attribution and, where the analyzer walks the
    graph node by node, every node's relevance (``reverse_keep_tensors=True``)."""

    # Wrappers and methods without a reverse walk keep no relevances.
    keeps = "reverse_keep_tensors" in analyzer_parameters(analyzer_class(method))[0]
    keep = {"reverse_keep_tensors": True} if keeps else {}
    analyzer = create_analyzer(method, model, **keep, **options)
    if analyzer.is_trainable and "patterns" not in options:
        # pattern.net / pattern.attribution: patterns learned on the reference input itself,
        # so generating and checking a file learn the same ones.
        analyzer.fit(x)
    explanation = analyzer.explain(x)
    relevances = {
        name: value.detach().cpu().numpy() for name, value in explanation.relevances.items()
    }
    if relevances:
        # The walk starts at the output node (the first signal it keeps): its per-sample sum
        # is the start value (y for LRP, max(0, y) for Deep Taylor, 1 for gradients).
        first = next(iter(relevances.values()))
        relevances[START_NODE] = first.reshape(first.shape[0], -1).sum(axis=1)
    return explanation.attribution.detach().cpu().numpy(), relevances


def load_implementation(spec: str) -> Implementation:
    """The callable named ``module:function``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ReferenceDataError(f"--implementation must look like module:function, got '{spec}'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ReferenceDataError(f"cannot import '{module_name}': {error}") from error
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ReferenceDataError(f"module '{module_name}' has no callable '{attribute}'")
    return function


def compare(actual: np.ndarray, reference: np.ndarray, rtol: float, atol: float) -> tuple:
    """(max abs error, max relative error, allclose(actual, reference, rtol, atol))."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        return float("inf"), float("inf"), False
    error = np.abs(actual - reference)
    scale = np.abs(reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(scale > 0, error / scale, np.where(error > 0, np.inf, 0.0))
    max_abs = float(error.max()) if error.size else 0.0
    max_rel = float(relative.max()) if relative.size else 0.0
    passed = bool(np.allclose(actual, reference, rtol=rtol, atol=atol))
    return max_abs, max_rel, passed


def check_case(
    case: ReferenceCase,
    implementation: Implementation,
    rtol: float | None = None,
    atol: float | None = None,
) -> list[Comparison]:
    """Compare one rebuilt model's output, attribution and layer-wise relevances."""
    rtol = case.rtol if rtol is None else rtol
    atol = case.atol if atol is None else atol
    dtype = next((p.dtype for p in case.model.parameters()), torch.float64)
    x = case.input.astype(np.float64 if dtype == torch.float64 else np.float32)
    try:
        with torch.no_grad():
            output = case.model(torch.as_tensor(x)).detach().cpu().numpy()
    except (RuntimeError, ValueError, IndexError) as error:
        # The file's model rebuilt fine: its input is what does not fit it.
        raise ReferenceDataError(
            f"{case.file}: model {case.model_label!r} cannot take the file's input of shape "
            f"{x.shape} ({first_line(error)}); the file is damaged or was edited"
        ) from error
    result = implementation(case.model, x, case.method, dict(case.options))
    attribution, relevances = result if isinstance(result, tuple) else (result, {})
    actual = {"output": output, "attribution": np.asarray(attribution)}
    for key, value in relevances.items():
        actual[f"{LAYERWISE}/{key}"] = np.asarray(value)
    comparisons = []
    for key, reference in case.expected.items():
        node = key.removeprefix(f"{LAYERWISE}/")
        if key not in actual:
            missing = "the implementation gives no layer-wise relevances"
            if relevances:
                missing = f"the implementation has no node '{node}'"
            comparisons.append(
                Comparison(
                    str(case.file),
                    case.model_label,
                    node,
                    np.inf,
                    np.inf,
                    rtol,
                    atol,
                    False,
                    missing,
                )
            )
            continue
        max_abs, max_rel, passed = compare(actual[key], reference, rtol, atol)
        note = (
            ""
            if actual[key].shape == reference.shape
            else (f"shape {actual[key].shape} != {reference.shape}")
        )
        comparisons.append(
            Comparison(
                str(case.file), case.model_label, node, max_abs, max_rel, rtol, atol, passed, note
            )
        )
    return comparisons


def reference_files(folder: str | Path) -> list[Path]:
    """The ``*.hdf5`` files of a folder, sorted (an error if there are none)."""
    path = Path(folder)
    if not path.is_dir():
        raise ReferenceDataError(f"reference folder not found: {path}")
    files = sorted(path.glob("*.hdf5"))
    if not files:
        raise ReferenceDataError(f"no *.hdf5 reference files in {path}")
    return files


def check_folder(
    folder: str | Path,
    implementation: Implementation | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    verbose: bool = False,
) -> list[Comparison]:
    """Check every reference file of ``folder``; see the module docstring.

    Parameters
    ----------
    rtol, atol
        Override the files' tolerances.
    verbose
        Show a progress bar over the files.

    Raises
    ------
    ReferenceDataError
        A file lacks a dataset or its model cannot be rebuilt (the message names both).
    """

    implementation = implementation or innspect_implementation
    comparisons: list[Comparison] = []
    files = reference_files(folder)
    models: dict[tuple, Any] = {}
    for file in progress(files, verbose, total=len(files), desc="reference files"):
        for case in read_reference_file(file, models):
            comparisons.extend(check_case(case, implementation, rtol, atol))
    return comparisons


def format_table(comparisons: Iterable[Comparison]) -> str:
    """One line per file, model and node: errors and PASS/FAIL."""
    rows = [("file", "model", "node", "max abs err", "max rel err", "rtol", "atol", "result")]
    for c in comparisons:
        result = "PASS" if c.passed else "FAIL" + (f" ({c.note})" if c.note else "")
        rows.append(
            (
                Path(c.file).name,
                c.model,
                c.node,
                f"{c.max_abs:.3g}",
                f"{c.max_rel:.3g}",
                f"{c.rtol:g}",
                f"{c.atol:g}",
                result,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(lines)
