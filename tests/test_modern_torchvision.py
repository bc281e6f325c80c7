"""torchvision's modern families (small random configurations) run with the relevance methods.

EfficientNet, MobileNetV3 and RegNetY (squeeze-excitation gates, SiLU / Hardswish,
stochastic depth), ConvNeXt (LayerNorm, layer scale, stochastic depth), ViT
(nn.MultiheadAttention), Swin (shifted-window attention, relative position bias, patch
merging; V2's cosine attention) and MaxViT (block / grid attention) under lrp.attn, lrp.cp, lrp.epsilon, an
iNNvestigate preset and a Zennit composite: finite results with relevance reaching the
input. Deep Taylor refuses them with its clear error.
"""

from __future__ import annotations

import pytest
import torch
import torchvision  # the test extra installs it: missing, the suite fails
from torchvision.models import convnext_tiny, efficientnet_b0, mobilenet_v3_small
from torchvision.models.maxvit import MaxVit
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)
from torchvision.models.vision_transformer import VisionTransformer

import innspect
from innspect.errors import UnsupportedNodeError
from innspect.graph.graph import ModelGraph


def _regnet_y() -> torch.nn.Module:
    params = BlockParams.from_init_params(
        depth=2, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25
    )
    return RegNet(params, num_classes=5, stem_width=8)


def _swin(**version: type) -> torch.nn.Module:
    """A two-stage Swin (V1, or V2 with its block and patch merging)."""
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[2, 2],
        num_heads=[1, 2],
        window_size=[2, 2],
        num_classes=5,
        **version,
    )


FAMILIES = {
    "efficientnet": lambda: efficientnet_b0(num_classes=5),
    "mobilenet_v3": lambda: mobilenet_v3_small(num_classes=5),
    "regnet_y": _regnet_y,
    "convnext": lambda: convnext_tiny(num_classes=5),
    "vit": lambda: VisionTransformer(
        image_size=32,
        patch_size=16,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
        num_classes=5,
    ),
    "swin": lambda: _swin(),
    "swin_v2": lambda: _swin(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2),
    "maxvit": lambda: MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8],
        block_layers=[1],
        head_dim=4,
        stochastic_depth_prob=0.1,
        num_classes=5,
    ),
}
METHODS = [
    ("lrp.attn", {}),
    ("lrp.cp", {}),
    ("lrp.epsilon", {}),
    ("lrp.sequential_preset_a", {}),
    ("lrp.epsilon_plus", {}),
]


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    built = {name: build().eval() for name, build in FAMILIES.items()}
    calibration = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for model in built.values():  # ViT's head starts at zero: no relevance to explain
        for parameter in model.parameters():
            if parameter.dim() > 1 and not bool(parameter.any()):
                torch.nn.init.normal_(parameter, std=0.5)
        # Batch-norm statistics of the data, so activations do not vanish (EfficientNet's
        # output is ~1e-14 with the initial statistics).
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 1.0
        with torch.no_grad():
            model.train()(calibration)
        model.eval()
    return built


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_modern_family_runs_with_the_relevance_methods(family: str, models) -> None:
    model = models[family]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # the captured (decomposed) graph computes what the model computes
    torch.testing.assert_close(ModelGraph(model).module(x), model(x), rtol=1e-4, atol=1e-5)
    for name, options in METHODS:
        attribution = innspect.create_analyzer(name, model, **options).analyze(x)
        attribution = torch.as_tensor(attribution)
        assert attribution.shape == x.shape, name
        assert bool(torch.isfinite(attribution).all()), f"{name} on {family}"
        assert float(attribution.abs().sum()) > 0, f"{name} on {family}: no relevance"
    with pytest.raises(UnsupportedNodeError, match="deep_taylor"):
        innspect.create_analyzer("deep_taylor", model).analyze(x)


def test_zennit_composites_map_the_written_out_attention_with_relevance_rules(models) -> None:
    """Attention innspect writes out (Swin's qkv / proj as F.linear on the modules'
    weights, the cosine attention's logit scale) gets Epsilon and pass-through under the
    Zennit-style composites; the gradient there let relevance overflow on Swin V2
    (non-finite under lrp.epsilon_plus). A scaling in the user's own code keeps Zennit's
    gradient (test_lrp_analyzer.py::test_scaling_by_a_constant_passes_relevance_through)."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    analyzer = innspect.create_analyzer("lrp.epsilon_plus", models["swin_v2"])
    graph = analyzer.graph(x)
    rules = analyzer.plan(x).rules
    dense = [
        i.name
        for i in graph.nodes
        if i.module is None and i.operation == "linear" and i.depends_on_input
    ]
    assert dense, "the written-out attention has functional projections"
    assert all(repr(rules[name]).startswith("Epsilon(") for name in dense), {
        name: rules[name] for name in dense
    }
    scales = [i.name for i in graph.nodes if i.kind.name == "SCALE" and i.depends_on_input]
    assert scales and all(repr(rules[name]) == "PassThrough()" for name in scales), {
        name: rules[name] for name in scales
    }


@pytest.mark.parametrize("method", ["lrp.epsilon_plus", "lrp.epsilon_gamma_box"])
def test_swin_v2_relevance_stays_finite_under_the_zennit_composites(method: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.swin_v2_s(weights=None).eval()  # 18 blocks: _t passed before
    options = {"low": -3.0, "high": 3.0} if method.endswith("box") else {}
    relevance = innspect.create_analyzer(method, model, **options).analyze(
        torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    )
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
