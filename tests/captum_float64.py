"""Captum's occlusion in float64 for bit-for-bit comparisons (tests/test_occlusion.py,
tests/test_deeplift_inputs.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from captum.attr._core import feature_ablation


@contextlib.contextmanager
def captum_keeps_float64() -> Iterator[None]:
    """Captum's last step is ``total.float() / counts``: float32 whatever the input. The same
    step without ``.float()`` keeps its float64 sums for a bit-for-bit comparison."""
    original = feature_ablation.format_result

    def format_result(total_attrib, weights, is_inputs_tuple, use_weights):
        attrib = tuple(t / w for t, w in zip(total_attrib, weights, strict=True))
        return attrib if is_inputs_tuple else attrib[0]

    feature_ablation.format_result = format_result
    try:
        yield
    finally:
        feature_ablation.format_result = original
