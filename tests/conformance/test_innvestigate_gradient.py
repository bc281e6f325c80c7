"""Gradient-family analyzers against iNNvestigate's single-layer reference files."""

from __future__ import annotations

import numpy as np
import pytest

import innspect
from tests.conformance.innvestigate_layers import ATOL, RTOL, load_cases
from tests.conftest import require_references

EXACT_CASES = {
    "Gradient.hdf5": "gradient",
    "InputTimesGradient.hdf5": "input_t_gradient",
    "Deconvnet.hdf5": "deconvnet",
    "GuidedBackprop.hdf5": "guided_backprop",
    "IntegratedGradients.hdf5": "integrated_gradients",
}


@pytest.mark.parametrize("file_name", sorted(EXACT_CASES))
def test_matches_innvestigate_reference(file_name: str) -> None:
    folder = require_references("innvestigate-2.1.2-layer")
    for case in load_cases(folder / file_name):
        analyzer = innspect.create_analyzer(EXACT_CASES[file_name], case.model)
        result = analyzer.analyze(case.input)
        np.testing.assert_allclose(
            result, case.attribution, rtol=RTOL, atol=ATOL, err_msg=case.layer_name
        )


def test_smoothgrad_matches_innvestigate_reference_within_its_noise_tolerance() -> None:
    folder = require_references("innvestigate-2.1.2-layer")
    for case in load_cases(folder / "SmoothGrad.hdf5"):
        analyzer = innspect.create_analyzer("smoothgrad", case.model, seed=1)
        result = analyzer.analyze(case.input)
        np.testing.assert_allclose(
            result, case.attribution, rtol=0.25, atol=0.20, err_msg=case.layer_name
        )


def test_deconvnet_and_guided_backprop_start_from_the_output_value() -> None:
    """iNNvestigate's data shows both start the walk from y, not from 1 (unlike gradient)."""
    folder = require_references("innvestigate-2.1.2-layer")
    case = load_cases(folder / "Deconvnet.hdf5")[0]  # Dense without activation: a pure gradient
    explanation = innspect.create_analyzer("deconvnet", case.model).explain(case.input)
    gradient = innspect.create_analyzer("gradient", case.model).analyze(case.input)
    scores = explanation.scores.numpy()[:, None, None, None]
    np.testing.assert_allclose(explanation.attribution.numpy(), gradient * scores, rtol=1e-10)
    assert not np.allclose(gradient, case.attribution, rtol=RTOL, atol=ATOL)
