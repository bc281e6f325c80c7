"""benchmarks/model_coverage.py's conservation check on LeViT, whose attention biases timm
caches per device after an eval forward: the bias-free copy must start without that cache
(it could not be deep-copied, and would keep the biases the copy zeroes), and lrp.cp then
conserves the logit on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def coverage():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import model_coverage

        yield model_coverage
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_levit_bias_free_copy_leaves_the_cache_out_and_conserves(coverage) -> None:
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, num_classes=5).double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    model(x).sum().backward()  # an eval forward with autograd fills the cache (non-leaf)
    caches = [m for m in model.modules() if getattr(m, "attention_bias_cache", None)]
    assert caches, "timm's LeViT no longer caches its attention biases: revisit this test"
    free = coverage._bias_free(model)
    assert all(m.attention_bias_cache for m in caches)  # the user's model keeps its cache
    assert not any(getattr(m, "attention_bias_cache", None) for m in free.modules())
    assert all(float(p.abs().sum()) == 0 for n, p in free.named_parameters() if "bias" in n)
    what, failure = coverage.check("lrp.cp", None, free, x, {}, None)
    assert (what, failure) == ("conserves", "")
