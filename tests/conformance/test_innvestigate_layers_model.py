"""The rebuilt layer models reproduce the outputs stored in iNNvestigate's files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from innspect.conformance.files import read_reference_file
from tests.conftest import require_references


@pytest.mark.parametrize("file_name", ["Gradient.hdf5", "LRPZ.hdf5"])
def test_rebuilt_models_reproduce_reference_outputs(file_name: str) -> None:
    folder = require_references("innvestigate-2.1.2-layer")
    for case in read_reference_file(folder / file_name):
        with torch.no_grad():
            output = case.model(torch.from_numpy(case.input)).numpy()
        np.testing.assert_allclose(
            output, case.expected["output"], rtol=1e-5, atol=1e-6, err_msg=case.model_label
        )
