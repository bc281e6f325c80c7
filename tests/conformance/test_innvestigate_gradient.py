"""Gradient-family analyzers against iNNvestigate's single-layer reference files.

The comparison is `innspect references check`'s (``innspect.conformance``); SmoothGrad is
checked at iNNvestigate's noise tolerance (rtol=0.25, atol=0.20), the others at 1e-2 / 1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest

import innspect
from innspect.conformance.check import check_case, innspect_implementation
from innspect.conformance.files import read_reference_file
from innspect.conformance.names import INNVESTIGATE_TOLERANCES
from tests.conftest import require_references

FILES = [
    "Gradient",
    "InputTimesGradient",
    "Deconvnet",
    "GuidedBackprop",
    "IntegratedGradients",
    "SmoothGrad",
]


@pytest.mark.parametrize("file_stem", FILES)
def test_matches_innvestigate_reference(file_stem: str) -> None:
    folder = require_references("innvestigate-2.1.2-layer")
    for case in read_reference_file(folder / f"{file_stem}.hdf5"):
        if file_stem == "SmoothGrad":
            assert (case.rtol, case.atol) == (0.25, 0.20)
        else:
            assert (case.rtol, case.atol) == INNVESTIGATE_TOLERANCES
        for row in check_case(case, innspect_implementation):
            assert row.passed, f"{file_stem} {row.model} {row.node}: max abs err {row.max_abs:.3g}"


def test_deconvnet_and_guided_backprop_start_from_the_output_value() -> None:
    """iNNvestigate's data shows both start the walk from y, not from 1 (unlike gradient)."""
    folder = require_references("innvestigate-2.1.2-layer")
    cases = read_reference_file(folder / "Deconvnet.hdf5")
    case = next(c for c in cases if c.model_label == "Dense")  # no activation: a pure gradient
    explanation = innspect.create_analyzer("deconvnet", case.model).explain(case.input)
    gradient = innspect.create_analyzer("gradient", case.model).analyze(case.input)
    scores = explanation.scores.numpy()[:, None, None, None]
    np.testing.assert_allclose(explanation.attribution.numpy(), gradient * scores, rtol=1e-10)
    rtol, atol = INNVESTIGATE_TOLERANCES
    assert not np.allclose(gradient, case.expected["attribution"], rtol=rtol, atol=atol)
