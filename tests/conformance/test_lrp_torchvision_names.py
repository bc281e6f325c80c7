"""Every LRP / Deep Taylor name on torchvision architectures, with conservation checks.

Random weights, eval mode, float32, batch 1 at the smallest size each model takes. Each
model is made bias-free (biases, BatchNorm shifts and running means set to 0; BatchNorm
variances set from one batch so activations keep a sane scale), so that on these ReLU
networks the conservative rules must give attributions summing to the explained output:
a rule applied at the wrong place, a relevance split twice or dropped would show.

Where a rule is not conservative on an architecture by its definition, the test asserts
the direction of the deviation that the stated mechanism implies instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import innspect

SIZES = {"vgg16": 32, "resnet50": 32, "densenet121": 32, "mobilenet_v2": 32, "inception_v3": 75}
BOX = (-4.0, 4.0)
REQUIRED_OPTIONS: dict[str, dict[str, Any]] = {
    "lrp.alpha_beta": {"alpha": 3},
    "lrp.epsilon_gamma_box": {"low": BOX[0], "high": BOX[1]},
    "deep_taylor.bounded": {"low": BOX[0], "high": BOX[1]},
    "lrp.sequential_preset_b_flat_until_idx": {"until_layer_idx": 3},
}
NAMES = sorted(n for n in innspect.list_analyzers() if n.startswith(("lrp", "deep_taylor")))

# Largest |sum(attribution) - y| / |y| on the bias-free models (float32 rounding over
# 50..170 layers; the Zennit composites also lose ~1e-6 / |z| per division to their
# stabiliser; the alpha-beta rules subtract two sums of the size of R).
CONSERVATIVE: dict[str, float] = {
    "lrp": 5e-4,
    "lrp.z": 5e-4,
    "lrp.z_IB": 5e-4,
    "lrp.epsilon": 5e-4,
    "lrp.epsilon_IB": 5e-4,
    "lrp.z_plus": 5e-4,
    "lrp.z_plus_fast": 5e-4,
    "lrp.alpha_1_beta_0": 5e-4,
    "lrp.alpha_1_beta_0_IB": 5e-4,
    "deep_taylor": 5e-4,
    "deep_taylor.bounded": 5e-4,
    "lrp.alpha_2_beta_1": 1e-3,
    "lrp.alpha_2_beta_1_IB": 1e-3,
    "lrp.alpha_beta": 1e-3,
    "lrp.epsilon_plus": 1e-3,
    "lrp.epsilon_plus_flat": 1e-3,
    "lrp.epsilon_gamma_box": 1e-3,
    "lrp.epsilon_alpha2_beta1": 1e-3,
    "lrp.epsilon_alpha2_beta1_flat": 1e-3,
    # AttnLRP / CP-LRP (issue 16): on ReLU CNNs, epsilon 1e-6 on every layer and sum.
    "lrp.attn": 1e-3,
    "lrp.cp": 1e-3,
}
# Not conservative by definition: Epsilon(0.1) on dense layers absorbs relevance (presets);
# Flat / w^2 send relevance to inputs that are zero, which max pooling and the z-rule at
# average pooling then drop.
NOT_CONSERVATIVE = {
    "lrp.flat",
    "lrp.w_square",
    "lrp.sequential_preset_a",
    "lrp.sequential_preset_a_flat",
    "lrp.sequential_preset_b",
    "lrp.sequential_preset_b_flat",
    "lrp.sequential_preset_b_flat_until_idx",
}
_ALPHA_BETA_WITH_BETA = {
    "lrp.alpha_2_beta_1",
    "lrp.alpha_2_beta_1_IB",
    "lrp.alpha_beta",
    "lrp.epsilon_alpha2_beta1",
    "lrp.epsilon_alpha2_beta1_flat",
}
_ZENNIT_COMPOSITES = {
    "lrp.epsilon_plus",
    "lrp.epsilon_plus_flat",
    "lrp.epsilon_gamma_box",
    "lrp.epsilon_alpha2_beta1",
    "lrp.epsilon_alpha2_beta1_flat",
}
# (model, name) -> ("gains" | "loses", why). Checked: 0 < sum < y for "loses", |sum| > y for
# "gains" (all these start from y > 0; with alpha > 2 and signed inputs the sign may flip).
EXCEPTIONS: dict[tuple[str, str], tuple[str, str]] = {
    **{
        ("mobilenet_v2", name): (
            "gains",
            # At 32x32 the last blocks run on 1x1 maps: a 3x3 depthwise convolution then
            # has one input per output, so either the positive or the negative part is
            # empty and alpha * R passes instead of R, block after block.
            "alpha-beta on one-input neurons",
        )
        for name in _ALPHA_BETA_WITH_BETA
    },
    ("inception_v3", "deep_taylor"): (
        "loses",
        # Deep Taylor takes the gradient at average pooling (iNNvestigate's reference data);
        # inception's F.avg_pool2d(3, padding=1) counts the padding, whose share is lost.
        "gradient at padded average pooling",
    ),
    ("inception_v3", "deep_taylor.bounded"): ("loses", "gradient at padded average pooling"),
    **{
        ("inception_v3", name): (
            "loses",
            # Zennit hooks modules only: the functional F.avg_pool2d gets the gradient,
            # with the same loss to the padding (Zennit does the same).
            "gradient at padded functional average pooling",
        )
        for name in _ZENNIT_COMPOSITES
    },
}


def _bias_free(name: str) -> nn.Module:
    """The torchvision model with random weights, made bias-free with BatchNorm scales set."""
    torch.manual_seed(0)
    options = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    model = getattr(torchvision.models, name)(weights=None, num_classes=10, **options)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for module in batchnorms:
        module.reset_running_stats()
        module.momentum = None  # one forward sets the statistics of that batch
    if batchnorms:
        size = SIZES[name]
        batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(5))
        model.train()
        with torch.no_grad():
            model(batch)
    model.eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.bias.zero_()
            elif isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None:
                module.bias.zero_()
    return model


@pytest.fixture(scope="module")
def cases() -> Callable[[str], tuple[nn.Module, torch.Tensor]]:
    """Builds each architecture once for the whole module."""
    built: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def get(name: str) -> tuple[nn.Module, torch.Tensor]:
        if name not in built:
            size = SIZES[name]
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
            built[name] = (_bias_free(name), x.clamp(*BOX))
        return built[name]

    return get


def test_every_name_has_an_expectation() -> None:
    """A new LRP name must be classified here before it is tested on these models."""
    assert set(NAMES) == set(CONSERVATIVE) | NOT_CONSERVATIVE
    assert not set(CONSERVATIVE) & NOT_CONSERVATIVE
    assert {name for _, name in EXCEPTIONS} <= set(CONSERVATIVE)
    assert len(NAMES) == 28  # 26 + lrp.attn, lrp.cp (issue 16)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_name", sorted(SIZES))
def test_name_runs_on_torchvision_and_conserves(cases, model_name: str, name: str) -> None:
    model, x = cases(model_name)
    explanation = innspect.create_analyzer(name, model, **REQUIRED_OPTIONS.get(name, {})).explain(x)
    attribution = explanation.attribution
    assert attribution.shape == x.shape
    assert bool(torch.isfinite(attribution).all())
    assert bool((attribution != 0).any())
    if name in NOT_CONSERVATIVE:
        return
    score = float(explanation.scores[0])
    assert score > 0  # Deep Taylor starts from max(0, y): an explained output must be > 0
    total = float(attribution.double().sum())
    exception = EXCEPTIONS.get((model_name, name))
    if exception is None:
        error = abs(total - score) / abs(score)
        assert error <= CONSERVATIVE[name], f"sum {total:.6g} vs output {score:.6g}: {error:.2e}"
    elif exception[0] == "loses":
        assert 0 < total < score * (1 - 1e-2), f"{exception[1]}: sum {total} vs {score}"
    else:
        assert abs(total) > score * (1 + 1e-2), f"{exception[1]}: sum {total} vs {score}"
