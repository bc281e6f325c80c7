"""LRP and Deep Taylor against iNNvestigate's single-layer reference files.

The comparison is `innspect references check`'s (``innspect.conformance``): one row per
file, layer model and array, at iNNvestigate's tolerances.
"""

from __future__ import annotations

import pytest

from innspect.conformance.check import check_case, innspect_implementation
from innspect.conformance.files import read_reference_file
from innspect.conformance.names import INNVESTIGATE_METHODS
from tests.conftest import require_references

# The LRP and Deep Taylor files of test-data-innvestigate (REFERENCES.md A3).
CASES = sorted(
    [
        *(f"LRP{rule}" for rule in ("Z", "ZIgnoreBias", "ZPlus", "ZPlusFast", "Epsilon")),
        *("LRPEpsilonIgnoreBias", "LRPFlat", "LRPWSquare", "LRPAlpha1Beta0", "LRPAlpha2Beta1"),
        *("LRPAlpha1Beta0IgnoreBias", "LRPAlpha2Beta1IgnoreBias", "LRPZ_Flat_input_layer_rule"),
        *("LRPZ_boxed_input_layer_rule", "LRPSequentialPresetA", "LRPSequentialPresetB"),
        *("LRPSequentialPresetAFlat", "LRPSequentialPresetBFlat", "DeepTaylor"),
        "BoundedDeepTaylor",
    ]
)


def test_every_reference_file_is_covered() -> None:
    folder = require_references("innvestigate-2.1.2-layer")
    files = {p.stem for p in folder.glob("*.hdf5")}
    assert files <= set(INNVESTIGATE_METHODS)  # each file's analyzer has an innspect name
    assert {f for f in files if f.startswith("LRP") or "DeepTaylor" in f} == set(CASES)


@pytest.mark.parametrize("file_stem", CASES)
def test_matches_innvestigate_reference(file_stem: str) -> None:
    folder = require_references("innvestigate-2.1.2-layer")
    cases = read_reference_file(folder / f"{file_stem}.hdf5")
    assert len(cases) == 6
    for case in cases:
        for row in check_case(case, innspect_implementation):
            assert row.passed, f"{file_stem} {row.model} {row.node}: max abs err {row.max_abs:.3g}"
