"""iNNvestigate 1.0.9's analyzer configurations (test-data-innvestigate's ``METHODS``) as
innspect analyzers, and the tolerances its test suites use (REFERENCES.md A3, A8)."""

from __future__ import annotations

from typing import Any

from innspect.analyzers.registry import analyzer_class, registered

# test-data-innvestigate's configurations that are not an analyzer with its default
# options: iNNvestigate key -> (innspect analyzer name, options).
CONFIGURED_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "LRPZ_Flat_input_layer_rule": ("lrp.z", {"input_layer_rule": "Flat"}),
    "LRPZ_boxed_input_layer_rule": ("lrp.z", {"input_layer_rule": [-10, 10]}),
    # Random noise in iNNvestigate too: only its loose tolerance can be checked.
    "SmoothGrad": ("smoothgrad", {"seed": 1}),
    "BoundedDeepTaylor": ("deep_taylor.bounded", {"low": -128, "high": 128}),
}


def _innvestigate_methods() -> dict[str, tuple[str, dict[str, Any]]]:
    """iNNvestigate key -> (innspect analyzer name, options): every analyzer that names its
    iNNvestigate counterpart (``Analyzer.innvestigate``, default options), then the
    configured ones."""
    methods: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in registered():
        key = analyzer_class(name).__dict__.get("innvestigate", "")  # its own, not inherited
        if key:
            methods[key] = (name, {})
    methods.update(CONFIGURED_METHODS)
    return methods


INNVESTIGATE_METHODS = _innvestigate_methods()
"""File name (iNNvestigate key) -> (innspect analyzer name, options)."""

# iNNvestigate 2.1.2's tests of these files: np.allclose(actual, reference, rtol, atol).
INNVESTIGATE_TOLERANCES = (1e-2, 1e-8)
# SmoothGrad's noise is not seeded in iNNvestigate: its test allows this much.
INNVESTIGATE_NOISY_TOLERANCES = {"SmoothGrad": (0.25, 0.20)}


def innvestigate_method(key: str) -> tuple[str, dict[str, Any]]:
    """(innspect analyzer name, options) for an iNNvestigate file's ``analyzer_name``."""
    if key not in INNVESTIGATE_METHODS:
        raise KeyError(
            f"unknown iNNvestigate analyzer '{key}'; innspect knows "
            f"{', '.join(sorted(INNVESTIGATE_METHODS))}"
        )
    name, options = INNVESTIGATE_METHODS[key]
    options = dict(options)
    if "input_layer_rule" in options and isinstance(options["input_layer_rule"], list):
        options["input_layer_rule"] = tuple(options["input_layer_rule"])
    return name, options


def innvestigate_tolerances(key: str) -> tuple[float, float]:
    """(rtol, atol) iNNvestigate's tests use for the file of analyzer ``key``."""
    return INNVESTIGATE_NOISY_TOLERANCES.get(key, INNVESTIGATE_TOLERANCES)
