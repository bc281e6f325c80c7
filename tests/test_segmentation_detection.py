"""Segmentation models explain a region (``target=`` weights on the output map), detectors
are refused in one line (issue 25, item 9)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import innspect
from innspect.errors import NotAnalyzableModelError


@pytest.fixture(scope="module")
def fcn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=False
    )
    return model.eval().double()


def _region() -> torch.Tensor:
    weights = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    weights[0, 1, 4:12, 6:20] = 1.0  # class 1 inside a box of the first image
    weights[1, 2, 20:30, 0:8] = 1.0  # class 2 inside another box of the second
    return weights


def test_a_region_of_a_segmentation_map_is_explained(fcn) -> None:
    """The summed logits of a region: the gradient equals autograd's, and on this
    piecewise-linear model (ResNet backbone, FCN head, bilinear upsampling) lrp.z equals
    input x gradient."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaf = x.clone().requires_grad_(True)
    (fcn(leaf)["out"] * _region()).sum().backward()
    options = {"output": "out", "target": _region()}
    gradient = innspect.create_analyzer("gradient", fcn, **options).analyze(x)
    torch.testing.assert_close(gradient, leaf.grad, rtol=1e-9, atol=1e-12)
    z_rule = innspect.create_analyzer("lrp.z", fcn, **options).analyze(x)
    torch.testing.assert_close(z_rule, leaf.grad * x, rtol=1e-7, atol=1e-10)
    # Each image's relevance comes from its own region only: the other image's box is
    # zero in its target, so swapping the boxes changes the map.
    swapped = innspect.create_analyzer(
        "lrp.z", fcn, output="out", target=_region().flip(0)
    ).analyze(x)
    assert not torch.allclose(swapped, z_rule)


def test_a_detector_is_refused_in_one_line() -> None:
    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    with pytest.raises(NotAnalyzableModelError, match="object detector") as caught:
        innspect.create_analyzer("gradient", detector).analyze(torch.rand(1, 3, 64, 64))
    message = str(caught.value)
    assert "\n" not in message and "FasterRCNN" in message and "torch.fx" not in message
