"""Batch norms folded by what the graph computes (issue 25 item 1).

The same function spelt two ways must get the same relevance: a plain ``nn.BatchNorm2d``
and timm's ``BatchNormAct2d`` (its forward reads ``x.ndim``, a second, metadata-only user
of the convolution's output), an ``nn.Conv3d`` and torchvision's ``Conv3DSimple`` (an
``nn.Conv3d`` subclass traced through to ``F.conv3d``). And on piecewise-linear models
``lrp.z`` is input x gradient (Bach et al. 2015; Ancona et al. 2018) only where every batch
norm is folded into the layer before it, so that test catches a fold that was missed.
"""

from __future__ import annotations

import copy

import pytest
import timm  # the test extra installs it: missing, the suite fails loudly
import torch
import torchvision
from torch import nn

import innspect
from innspect.graph.graph import ModelGraph

PRESETS = [
    "lrp.z",
    "lrp.epsilon",
    "lrp.epsilon_plus",
    "lrp.epsilon_plus_flat",
    "lrp.alpha_2_beta_1",
    "lrp.alpha_1_beta_0",
    "lrp.z_plus",
    "lrp.w_square",
    "lrp.flat",
    "lrp.sequential_preset_a",
    "lrp.sequential_preset_b",
    "deep_taylor",
]


def _randomise_batchnorms(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so that a batch norm
    left unfolded changes the relevance visibly."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                for tensor, low in (
                    (module.running_mean, -0.5),
                    (module.running_var, 0.5),
                    (module.weight, 0.5),
                    (module.bias, -0.5),
                ):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + low)
    return model


def _explain(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(innspect.create_analyzer(name, model).analyze(x))


def _assert_same(name: str, a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-8) -> None:
    scale = float(a.abs().max())
    difference = float((a - b).abs().max()) / scale
    assert difference <= tolerance, f"{name}: the two spellings differ by {difference:.3g}"


def _assert_z_is_input_times_gradient(model: nn.Module, x: torch.Tensor) -> None:
    z = _explain("lrp.z", model, x)
    reference = _explain("input_t_gradient", model, x)
    _assert_same("lrp.z vs input x gradient", z, reference)


def _sequential_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )
    plain = _randomise_batchnorms(plain).double().eval()
    fused = timm.layers.BatchNormAct2d(8, act_layer=nn.ReLU).double()
    fused.load_state_dict(plain[1].state_dict())
    timm_model = nn.Sequential(plain[0], fused, plain[3], plain[4], plain[5]).eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(timm_model(x), plain(x), rtol=0, atol=0)
    return plain, timm_model, x


def test_batchnormact2d_reading_ndim_is_folded() -> None:
    _, timm_model, x = _sequential_pair()
    graph = ModelGraph(timm_model, x, fuse_batchnorm=True)
    operations = [i.operation for i in graph.nodes]
    assert not any("batch_norm" in o.lower() for o in operations), operations
    # The metadata reader (x.ndim) still reads the (now folded) convolution's output.
    torch.testing.assert_close(graph.module(x), timm_model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_agree_on_batchnorm_and_batchnormact2d(preset: str) -> None:
    plain, timm_model, x = _sequential_pair()
    _assert_same(preset, _explain(preset, plain, x), _explain(preset, timm_model, x))


def test_lrp_z_is_input_times_gradient_with_batchnormact2d() -> None:
    _, timm_model, x = _sequential_pair()
    _assert_z_is_input_times_gradient(timm_model, x)


class _Conv3DSimple(nn.Conv3d):
    """Like torchvision's ``Conv3DSimple``: an nn.Conv3d subclass defined outside torch.nn,
    traced through to ``F.conv3d`` on its own weight."""


class _Video(nn.Module):
    def __init__(self, conv: type[nn.Conv3d]) -> None:
        super().__init__()
        self.conv1 = conv(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(6)
        self.conv2 = conv(6, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3, 4)))


def _video_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    plain = _randomise_batchnorms(_Video(nn.Conv3d)).double().eval()
    subclassed = _Video(_Conv3DSimple).double().eval()
    subclassed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 3, 6, 6, dtype=torch.float64)
    return plain, subclassed, x


def test_conv3d_subclass_is_a_conv_layer_with_its_batchnorm_folded() -> None:
    _, subclassed, x = _video_pair()
    graph = ModelGraph(subclassed, x, fuse_batchnorm=True)
    operations = [i.operation for i in graph.nodes]
    assert operations.count("Conv3d") == 2 and "BatchNorm3d" not in operations, operations
    torch.testing.assert_close(graph.module(x), subclassed(x), rtol=1e-12, atol=1e-12)
    # The graph's layers share the model's parameters: an update is seen (refresh).
    with torch.no_grad():
        subclassed.conv1.weight.mul_(2.0)
    graph.refresh()
    torch.testing.assert_close(graph.module(x), subclassed(x), rtol=1e-12, atol=1e-12)


class _FunctionalVideo(nn.Module):
    """``F.conv3d`` on a module's own weight, then a BatchNorm3d module."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3, 3) * 0.3)
        self.bn = nn.BatchNorm3d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(torch.nn.functional.conv3d(x, self.weight, padding=1)))
        return self.fc(x.mean(dim=(2, 3, 4)))


def test_batchnorm_module_after_functional_conv3d_is_folded() -> None:
    torch.manual_seed(0)
    model = _randomise_batchnorms(_FunctionalVideo()).double().eval()
    x = torch.randn(2, 3, 3, 6, 6, dtype=torch.float64)
    graph = ModelGraph(model, x, fuse_batchnorm=True)
    operations = [i.operation for i in graph.nodes]
    assert "conv3d" in operations and "BatchNorm3d" not in operations, operations
    torch.testing.assert_close(graph.module(x), model(x), rtol=1e-12, atol=1e-12)
    _assert_z_is_input_times_gradient(model, x)


@pytest.mark.parametrize("preset", ["lrp.epsilon_plus", "lrp.alpha_2_beta_1", "lrp.z_plus"])
def test_presets_agree_on_module_and_functional_conv3d(preset: str) -> None:
    plain, subclassed, x = _video_pair()
    _assert_same(preset, _explain(preset, plain, x), _explain(preset, subclassed, x))


def test_lrp_z_is_input_times_gradient_on_r3d_18() -> None:
    torch.manual_seed(0)
    model = _randomise_batchnorms(torchvision.models.video.r3d_18(num_classes=4))
    model = model.double().eval()
    x = torch.randn(1, 3, 4, 16, 16, dtype=torch.float64)
    _assert_z_is_input_times_gradient(model, x)
    # The same network with the Conv3DSimple layers as plain nn.Conv3d modules.
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if type(module).__name__ == "Conv3DSimple":
            module.__class__ = nn.Conv3d
    _assert_same(
        "lrp.epsilon_plus r3d_18",
        _explain("lrp.epsilon_plus", plain, x),
        _explain("lrp.epsilon_plus", model, x),
    )


def _unfused(model: nn.Module) -> nn.Module:
    """``model`` with each timm ``BatchNormAct2d`` spelt as BatchNorm2d, drop, activation."""
    for name, child in list(model.named_children()):
        if isinstance(child, timm.layers.BatchNormAct2d):
            bn = nn.BatchNorm2d(child.num_features, eps=child.eps).double().eval()
            bn.load_state_dict(child.state_dict())
            setattr(model, name, nn.Sequential(bn, child.drop, child.act))
        else:
            _unfused(child)
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "piecewise_linear"),
    [("resnet10t", True), ("mobilenetv3_small_050", False), ("efficientnet_b0", False)],
)
def test_timm_families_fold_their_batchnorms(name: str, piecewise_linear: bool) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5)
    model = _randomise_batchnorms(model).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    if piecewise_linear:
        _assert_z_is_input_times_gradient(model, x)
    else:
        plain = _unfused(copy.deepcopy(model))
        assert any(isinstance(m, timm.layers.BatchNormAct2d) for m in model.modules())
        torch.testing.assert_close(plain(x), model(x), rtol=1e-12, atol=1e-12)
        _assert_same(
            f"lrp.epsilon_plus {name}",
            _explain("lrp.epsilon_plus", plain, x),
            _explain("lrp.epsilon_plus", model, x),
        )
