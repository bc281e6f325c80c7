"""Class activation maps against grad-cam 1.5.7 (a test dependency), in float64.

grad-cam returns float32 maps (its ``scale_cam_image`` and ``cv2.resize`` run in float32), so
agreement is to float32 rounding: relative L2 <= 1e-5. Same target layers on both sides;
grad-cam's ``reshape_transform`` is written here for each transformer's grid, innspect finds
the grid itself.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
import ttach as tta  # grad-cam's own dependency (its aug_smooth)
from pytorch_grad_cam import (
    KPCA_CAM,
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackpropReLUModel,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    ShapleyCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer
from transformers import ViTConfig, ViTForImageClassification

import innspect

TOLERANCE = 1e-5

GRADIENT_METHODS = {
    "cam.grad": GradCAM,
    "cam.hires": HiResCAM,
    "cam.grad_elementwise": GradCAMElementWise,
    "cam.grad_plus_plus": GradCAMPlusPlus,
    "cam.xgrad": XGradCAM,
    "cam.layer": LayerCAM,
    "cam.eigen": EigenCAM,
    "cam.eigen_grad": EigenGradCAM,
    "cam.kpca": KPCA_CAM,
}


def rel(ours: torch.Tensor | np.ndarray, theirs: np.ndarray) -> float:
    ours = torch.as_tensor(np.asarray(ours), dtype=torch.float64)
    theirs = torch.as_tensor(np.asarray(theirs), dtype=torch.float64)
    assert ours.shape == theirs.shape
    return float((ours - theirs).norm() / theirs.norm())


def theirs(cls, model, layers, x, targets=None, reshape=None, **options):
    with cls(model, layers, reshape_transform=reshape, **options) as cam:
        return cam(x, targets)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).double().eval()


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(1)
    model = torchvision.models.vgg11_bn(num_classes=10)
    # its classifier has 120M weights (1 GB in float64); the maps read the features
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(512 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    return model.double().eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(2)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts it at 0: no gradient
    return model.double().eval()


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(3)
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=10,
    )
    return model.double().eval()


def vit_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """grad-cam's reshape for this ViT: drop the class token, 4x4 grid (32 / 8)."""
    n, _, d = tokens.shape
    return tokens[:, 1:, :].reshape(n, 4, 4, d).permute(0, 3, 1, 2)


def swin_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """grad-cam's reshape for torchvision's Swin: (N, h, w, C) to channels first."""
    return tokens.permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
def test_resnet18_equals_grad_cam(resnet, name) -> None:
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ours = innspect.create_analyzer(name, resnet, layer="layer4").analyze(x)
    assert ours.shape == (2, 1, 96, 96)
    expected = theirs(GRADIENT_METHODS[name], resnet, [resnet.layer4[-1]], x)
    assert rel(ours[:, 0], expected) <= TOLERANCE
    if name not in ("cam.grad", "cam.grad_plus_plus", "cam.eigen_grad"):
        return
    # an explicit class, the same on both sides
    ours = innspect.create_analyzer(
        name, resnet, layer="layer4", neuron_selection_mode="index"
    ).analyze(x, neuron_selection=[3, 7])
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(7)]
    expected = theirs(GRADIENT_METHODS[name], resnet, [resnet.layer4[-1]], x, targets)
    assert rel(ours[:, 0], expected) <= TOLERANCE


@pytest.mark.parametrize("name", ["cam.grad", "cam.layer"])
def test_resnet18_eigen_smooth_and_two_layers(resnet, name) -> None:
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    cls = GRADIENT_METHODS[name]
    ours = innspect.create_analyzer(name, resnet, layer="layer3", eigen_smooth=True).analyze(x)
    with cls(resnet, [resnet.layer3[-1]]) as cam:
        expected = cam(x, None, eigen_smooth=True)
    assert rel(ours[:, 0], expected) <= TOLERANCE
    ours = innspect.create_analyzer(name, resnet, layer=["layer3", "layer4"]).analyze(x)
    expected = theirs(cls, resnet, [resnet.layer3[-1], resnet.layer4[-1]], x)
    assert rel(ours[:, 0], expected) <= TOLERANCE


def test_resnet18_shapley_finer_full_grad(resnet) -> None:
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    layer = [resnet.layer4[-1]]
    ours = innspect.create_analyzer("cam.shapley", resnet, layer="layer4").analyze(x)
    assert rel(ours[:, 0], theirs(ShapleyCAM, resnet, layer, x)) <= TOLERANCE
    ours = innspect.create_analyzer("cam.finer", resnet, layer="layer4").analyze(x)
    with FinerCAM(resnet, layer) as cam:
        assert rel(ours[:, 0], cam(x)) <= TOLERANCE
    ours = innspect.create_analyzer("cam.full_grad", resnet).analyze(x)
    assert rel(ours[:, 0], theirs(FullGrad, resnet, [], x)) <= TOLERANCE


@pytest.mark.parametrize(
    ("base", "cls"),
    [("cam.hires", HiResCAM), ("cam.grad_plus_plus", GradCAMPlusPlus), ("cam.shapley", ShapleyCAM)],
)
def test_resnet18_finer_on_other_base_methods(resnet, base, cls) -> None:
    # layer3: at layer4, before the pooling and the classifier, the gradient is the same at
    # every position and HiResCAM is Grad-CAM
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    analyzer = innspect.create_analyzer("cam.finer", resnet, layer="layer3", base_method=base)
    with FinerCAM(resnet, [resnet.layer3[-1]], base_method=cls) as cam:
        expected = cam(x)
    assert rel(analyzer.analyze(x)[:, 0], expected) <= TOLERANCE
    # and not the Grad-CAM base's map (the option is read)
    grad_based = innspect.create_analyzer("cam.finer", resnet, layer="layer3").analyze(x)
    assert rel(grad_based[:, 0], expected) > 1e-3


def test_resnet18_aug_smooth(resnet) -> None:
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    analyzer = innspect.create_analyzer(
        "cam.grad", resnet, layer="layer4", aug_smooth=True, neuron_selection_mode="index"
    )
    ours = analyzer.analyze(x, neuron_selection=[1, 2])
    with GradCAM(resnet, [resnet.layer4[-1]]) as cam:
        expected = cam(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(2)], aug_smooth=True)
    assert rel(ours[:, 0], expected) <= TOLERANCE


def test_resnet18_guided_grad_cam(resnet) -> None:
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    ours = innspect.create_analyzer("guided_grad_cam", resnet, layer="layer4").analyze(x)
    cam = theirs(GradCAM, resnet, [resnet.layer4[-1]], x)
    # grad-cam's guided backprop swaps the model's ReLU modules (and back): give it a copy
    guided = GuidedBackpropReLUModel(copy.deepcopy(resnet), device="cpu")(x)  # (H, W, C)
    expected = cam[0][None] * guided.transpose(2, 0, 1)
    assert rel(ours[0], expected) <= TOLERANCE


@pytest.mark.parametrize("name", ["cam.score", "cam.ablation"])
def test_resnet18_score_and_ablation(resnet, name) -> None:
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ours = innspect.create_analyzer(name, resnet, layer="layer1", batch_size=32).analyze(x)
    cls = {"cam.score": ScoreCAM, "cam.ablation": AblationCAM}[name]
    with cls(resnet, [resnet.layer1[-1]]) as cam:
        cam.batch_size = 32
        expected = cam(x, None)
    assert rel(ours[:, 0], expected) <= TOLERANCE


def test_resnet18_ablation_ratio_channels_to_ablate(resnet) -> None:
    """grad-cam's experimental pruning: the same channels ablated (ties among the many
    channels scoring exactly 1 broken by numpy's argsort on both sides), the others weight 0.
    Below ratio 0.5 no channel is listed twice, so grad-cam's scores are assembled right."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    full = innspect.create_analyzer("cam.ablation", resnet, layer="layer1").analyze(x)
    for ratio in (0.1, 0.25):  # 2 * 6 and 2 * 16 of the 64 channels
        ours = innspect.create_analyzer(
            "cam.ablation", resnet, layer="layer1", ratio_channels_to_ablate=ratio
        ).analyze(x)
        with AblationCAM(resnet, [resnet.layer1[-1]], ratio_channels_to_ablate=ratio) as cam:
            expected = cam(x, None)
        assert rel(ours[:, 0], expected) <= TOLERANCE
        assert rel(ours, full.numpy()) > 0.01  # the pruning changed the map
    # from 0.5 on the highest and lowest int(64 * ratio) cover every channel: all ablated once
    ours = innspect.create_analyzer(
        "cam.ablation", resnet, layer="layer1", ratio_channels_to_ablate=0.75
    ).analyze(x[:1])
    torch.testing.assert_close(ours, full[:1])


def test_grad_cam_ablation_assembly_drops_channels_after_a_duplicate() -> None:
    """What docs/cam.md says of grad-cam 1.5.7 above ratio 0.5: its channel list repeats the
    middle channels, and ``assemble_ablation_scores`` stops matching at the first repeat,
    so every later channel gets the unablated score (weight 0) though it was ablated."""
    ablated = np.array([3, 0, 1, 2, 1, 2])  # high + low for C = 4, k = 3: 1 and 2 twice
    scores = [13.0, 10.0, 11.0, 12.0, 11.0, 12.0]  # channel c ablated scores 10 + c
    assembled = AblationCAM.assemble_ablation_scores(None, scores, 99.0, ablated, 4)
    assert list(np.float32(assembled)) == [10.0, 11.0, 99.0, 99.0]  # 2 and 3 lost


def test_resnet18_tta_transforms(resnet) -> None:
    """grad-cam's ``tta_transforms`` (a ttach Compose): innspect takes the same Compose, or
    the same augmentations as (augment, deaugment) pairs written by hand."""
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    compose = tta.Compose(
        [tta.VerticalFlip(), tta.Rotate90(angles=[0, 90]), tta.Multiply(factors=[0.8])]
    )
    with GradCAM(resnet, [resnet.layer4[-1]]) as cam:
        cam.tta_transforms = compose  # GradCAM's constructor does not pass it to BaseCAM
        expected = cam(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(2)], aug_smooth=True)

    def pair(flip: bool, turns: int, factor: float):
        def augment(image: torch.Tensor) -> torch.Tensor:
            return torch.rot90(image.flip(2) if flip else image, turns, (2, 3)) * factor

        def deaugment(maps: torch.Tensor) -> torch.Tensor:
            maps = torch.rot90(maps, -turns, (2, 3))
            return maps.flip(2) if flip else maps

        return augment, deaugment

    pairs = [pair(f, t, 0.8) for f in (False, True) for t in (0, 1)]
    for transforms in (compose, pairs):
        ours = innspect.create_analyzer(
            "cam.grad",
            resnet,
            layer="layer4",
            aug_smooth=True,
            tta_transforms=transforms,
            neuron_selection_mode="index",
        ).analyze(x, neuron_selection=[1, 2])
        assert rel(ours[:, 0], expected) <= TOLERANCE


def test_vgg11_bn_equals_grad_cam(vgg) -> None:
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    for name in ("cam.grad", "cam.grad_plus_plus", "cam.eigen"):
        analyzer = innspect.create_analyzer(name, vgg)
        # the default layer is grad-cam's documented choice for VGG, features[-1]
        assert [layer.name for layer in analyzer.layers(x)] == ["features.28"]
        expected = theirs(GRADIENT_METHODS[name], vgg, [vgg.features[-1]], x)
        assert rel(analyzer.analyze(x)[:, 0], expected) <= TOLERANCE


VIT_METHODS = [*GRADIENT_METHODS, "cam.score", "cam.ablation", "cam.finer"]


@pytest.mark.parametrize("name", VIT_METHODS)
def test_vit_equals_grad_cam_without_reshape(vit, name) -> None:
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    layer = vit.encoder.layers[-1].ln_1
    options = {"batch_size": 1} if name == "cam.ablation" else {}
    analyzer = innspect.create_analyzer(name, vit, **options)
    (found,) = analyzer.layers(x)  # no layer given: grad-cam's choice for a ViT, found
    assert (found.name, found.grid, found.extra_tokens) == (
        "encoder.layers.encoder_layer_1.ln_1",
        (4, 4),
        1,
    )
    ours = analyzer.analyze(x)
    if name == "cam.finer":
        with FinerCAM(vit, [layer], reshape_transform=vit_reshape) as cam:
            expected = cam(x)
    elif name == "cam.ablation":
        # grad-cam ablates one channel per pass here: batched, its AblationLayerVit lowers
        # the ablation value by 1e7 for each row of a batch (innspect uses min - 1e7)
        cam = AblationCAM(
            vit, [layer], vit_reshape, ablation_layer=AblationLayerVit(), batch_size=1
        )
        expected = cam(x, None)
    else:
        cls = {**GRADIENT_METHODS, "cam.score": ScoreCAM}[name]
        expected = theirs(cls, vit, [layer], x, reshape=vit_reshape)
    assert rel(ours[:, 0], expected) <= TOLERANCE


@pytest.mark.parametrize("name", ["cam.grad", "cam.hires", "cam.layer", "cam.eigen", "cam.score"])
def test_swin_equals_grad_cam_without_reshape(swin, name) -> None:
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    analyzer = innspect.create_analyzer(name, swin)
    (found,) = analyzer.layers(x)
    assert (found.name, found.layout, found.grid) == ("norm", "channels_last", (4, 4))
    cls = {**GRADIENT_METHODS, "cam.score": ScoreCAM}[name]
    expected = theirs(cls, swin, [swin.norm], x, reshape=swin_reshape)
    assert rel(analyzer.analyze(x)[:, 0], expected) <= TOLERANCE


def test_timm_vit_with_register_tokens_equals_grad_cam() -> None:
    """A timm ViT with a class token and 4 register tokens: innspect finds the 5 leading
    tokens and the 4x4 grid; grad-cam's reshape must drop them by hand."""
    torch.manual_seed(13)
    model = (
        TimmViT(
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_classes=5,
            reg_tokens=4,
        )
        .double()
        .eval()
    )
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    analyzer = innspect.create_analyzer("cam.grad", model)
    (found,) = analyzer.layers(x)
    assert (found.module, found.grid, found.extra_tokens) == ("blocks.1.norm1", (4, 4), 5)
    assert "blocks.1.norm1" in str(analyzer.plan(x))

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        n, _, d = tokens.shape
        return tokens[:, 5:, :].reshape(n, 4, 4, d).permute(0, 3, 1, 2)

    expected = theirs(GradCAM, model, [model.blocks[-1].norm1], x, reshape=reshape)
    assert rel(analyzer.analyze(x)[:, 0], expected) <= TOLERANCE
    by_path = innspect.create_analyzer("cam.grad", model, layer="blocks.1.norm1").analyze(x)
    torch.testing.assert_close(by_path, analyzer.analyze(x))


@pytest.mark.slow
def test_hugging_face_vit_equals_grad_cam() -> None:
    """A Hugging Face ViT (captured by torch.export, a dict output): innspect picks the last
    layer's ``layernorm_before``, grad-cam is given it, a reshape and a logits wrapper."""
    torch.manual_seed(15)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    model = ViTForImageClassification(config).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    analyzer = innspect.create_analyzer("cam.grad", model)
    (found,) = analyzer.layers(x)
    assert found.module == "vit.encoder.layer.1.layernorm_before"
    assert (found.grid, found.extra_tokens) == ((4, 4), 1)
    ours = analyzer.analyze(x)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.inner(pixels).logits

    layer = model.vit.encoder.layer[-1].layernorm_before
    expected = theirs(GradCAM, Logits(), [layer], x, reshape=vit_reshape)
    assert rel(ours[:, 0], expected) <= TOLERANCE
