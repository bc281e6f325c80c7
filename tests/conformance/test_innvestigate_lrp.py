"""LRP and Deep Taylor against iNNvestigate's single-layer reference files."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import innspect
from tests.conformance.innvestigate_layers import ATOL, RTOL, load_cases
from tests.conftest import require_references

# iNNvestigate class name (file name) -> (innspect analyzer name, options)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "LRPZ": ("lrp.z", {}),
    "LRPZIgnoreBias": ("lrp.z_IB", {}),
    "LRPEpsilon": ("lrp.epsilon", {}),
    "LRPEpsilonIgnoreBias": ("lrp.epsilon_IB", {}),
    "LRPWSquare": ("lrp.w_square", {}),
    "LRPFlat": ("lrp.flat", {}),
    "LRPAlpha2Beta1": ("lrp.alpha_2_beta_1", {}),
    "LRPAlpha2Beta1IgnoreBias": ("lrp.alpha_2_beta_1_IB", {}),
    "LRPAlpha1Beta0": ("lrp.alpha_1_beta_0", {}),
    "LRPAlpha1Beta0IgnoreBias": ("lrp.alpha_1_beta_0_IB", {}),
    "LRPZPlus": ("lrp.z_plus", {}),
    "LRPZPlusFast": ("lrp.z_plus_fast", {}),
    "LRPSequentialPresetA": ("lrp.sequential_preset_a", {}),
    "LRPSequentialPresetB": ("lrp.sequential_preset_b", {}),
    "LRPSequentialPresetAFlat": ("lrp.sequential_preset_a_flat", {}),
    "LRPSequentialPresetBFlat": ("lrp.sequential_preset_b_flat", {}),
    "LRPZ_boxed_input_layer_rule": ("lrp.z", {"input_layer_rule": (-10, 10)}),
    "LRPZ_Flat_input_layer_rule": ("lrp.z", {"input_layer_rule": "Flat"}),
    "DeepTaylor": ("deep_taylor", {}),
    "BoundedDeepTaylor": ("deep_taylor.bounded", {"low": -128, "high": 128}),
}


def test_every_lrp_and_deep_taylor_reference_file_is_covered() -> None:
    folder = require_references("innvestigate-2.1.2-layer")
    files = {
        p.stem for p in folder.glob("*.hdf5") if p.stem.startswith("LRP") or "DeepTaylor" in p.stem
    }
    assert files == set(CASES)


@pytest.mark.parametrize("file_stem", sorted(CASES))
def test_matches_innvestigate_reference(file_stem: str) -> None:
    folder = require_references("innvestigate-2.1.2-layer")
    name, options = CASES[file_stem]
    for case in load_cases(folder / f"{file_stem}.hdf5"):
        analyzer = innspect.create_analyzer(name, case.model, **options)
        result = analyzer.analyze(case.input)
        np.testing.assert_allclose(
            result, case.attribution, rtol=RTOL, atol=ATOL, err_msg=f"{file_stem} {case.layer_name}"
        )
