"""iNNvestigate 1.0.9's analyzer configurations (test-data-innvestigate's ``METHODS``) as
innspect analyzers, and the tolerances its test suites use (REFERENCES.md A3, A8)."""

from __future__ import annotations

from typing import Any

# File name (iNNvestigate key) -> (innspect analyzer name, options).
INNVESTIGATE_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "InputTimesGradient": ("input_t_gradient", {}),
    "Gradient": ("gradient", {}),
    "Deconvnet": ("deconvnet", {}),
    "GuidedBackprop": ("guided_backprop", {}),
    "IntegratedGradients": ("integrated_gradients", {}),
    # Random noise in iNNvestigate too: only its loose tolerance can be checked.
    "SmoothGrad": ("smoothgrad", {"seed": 1}),
    "LRPZ": ("lrp.z", {}),
    "LRPZ_Flat_input_layer_rule": ("lrp.z", {"input_layer_rule": "Flat"}),
    "LRPZ_boxed_input_layer_rule": ("lrp.z", {"input_layer_rule": [-10, 10]}),
    "LRPZIgnoreBias": ("lrp.z_IB", {}),
    "LRPZPlus": ("lrp.z_plus", {}),
    "LRPZPlusFast": ("lrp.z_plus_fast", {}),
    "LRPAlpha1Beta0": ("lrp.alpha_1_beta_0", {}),
    "LRPAlpha1Beta0IgnoreBias": ("lrp.alpha_1_beta_0_IB", {}),
    "LRPAlpha2Beta1": ("lrp.alpha_2_beta_1", {}),
    "LRPAlpha2Beta1IgnoreBias": ("lrp.alpha_2_beta_1_IB", {}),
    "LRPEpsilon": ("lrp.epsilon", {}),
    "LRPEpsilonIgnoreBias": ("lrp.epsilon_IB", {}),
    "LRPFlat": ("lrp.flat", {}),
    "LRPWSquare": ("lrp.w_square", {}),
    "LRPSequentialPresetA": ("lrp.sequential_preset_a", {}),
    "LRPSequentialPresetB": ("lrp.sequential_preset_b", {}),
    "LRPSequentialPresetAFlat": ("lrp.sequential_preset_a_flat", {}),
    "LRPSequentialPresetBFlat": ("lrp.sequential_preset_b_flat", {}),
    "DeepTaylor": ("deep_taylor", {}),
    "BoundedDeepTaylor": ("deep_taylor.bounded", {"low": -128, "high": 128}),
}

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
