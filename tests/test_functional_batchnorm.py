"""Functional batch norm (timm's BatchNormAct2d, torch.export's ATen ops) is folded and
mapped like nn.BatchNorm: the same relevances as the model written with nn.BatchNorm2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.graph.ops import Kind

METHODS = [
    "lrp.epsilon",
    "lrp.alpha_2_beta_1",
    "lrp.epsilon_plus",
    "deep_taylor",
    "guided_backprop",
]


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's pattern: a BatchNorm2d subclass calling F.batch_norm, then its activation."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps
        )
        return self.act(x)


class Net(nn.Module):
    """A batch norm before the first convolution (not foldable) and one after it."""

    def __init__(self, functional: bool) -> None:
        super().__init__()

        def block(n: int) -> nn.Module:
            return BatchNormAct2d(n) if functional else nn.Sequential(nn.BatchNorm2d(n), nn.ReLU())

        self.bn0, self.conv, self.bn, self.fc = (
            block(3),
            nn.Conv2d(3, 4, 3),
            block(4),
            nn.Linear(64, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn(self.conv(self.bn0(x))), 1))


class Exported(nn.Module):
    """Untraceable for torch.fx (a loop over a shape), so captured by torch.export."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(x.shape[0] - x.shape[0] + 1):
            x = self.net(x)
        return x


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    functional, plain = Net(True).double(), Net(False).double()
    for module in functional.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    state = functional.state_dict()
    plain.load_state_dict(
        {k.replace("bn0.", "bn0.0.").replace("bn.", "bn.0."): v for k, v in state.items()}
    )
    return functional.eval(), plain.eval()


def _batchnorm_nodes(analyzer, x) -> list[str]:
    return [info.operation for info in analyzer.graph(x).nodes if info.kind is Kind.BATCHNORM]


@pytest.mark.parametrize("method", METHODS)
def test_functional_batchnorm_equals_the_module(models, method: str) -> None:
    functional, plain = models
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(functional(x), plain(x))
    ours = innspect.create_analyzer(method, functional)
    # The batch norm after the convolution is folded; the one before it is mapped.
    assert _batchnorm_nodes(ours, x) == ["batch_norm"]
    expected = innspect.create_analyzer(method, plain).analyze(x)
    torch.testing.assert_close(ours.analyze(x), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.alpha_2_beta_1", "guided_backprop"])
def test_torch_export_batchnorm_is_folded_and_mapped(models, method: str) -> None:
    _, plain = models
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = innspect.create_analyzer(method, Exported(plain))
    graph = ours.graph(x)
    assert any("aten" in str(info.node.target) for info in graph.nodes)
    # One batch norm left to map (the other folded): as F.batch_norm, or as the module the
    # export fallback turns the layer's ATen call back into (capture._calls_as_model_layers).
    assert _batchnorm_nodes(ours, x) in (["batch_norm"], ["BatchNorm2d"])
    expected = innspect.create_analyzer(method, plain).analyze(x)
    torch.testing.assert_close(ours.analyze(x), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("exported", [False, True])
def test_functional_folds_follow_the_model_after_a_change(models, exported: bool) -> None:
    """F.batch_norm folds (fx and torch.export captures) are remade when the statistics or
    the convolution change, like module folds."""
    import copy

    functional = copy.deepcopy(models[0] if not exported else models[1])
    model = Exported(functional) if exported else functional
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    analyzer = innspect.create_analyzer("lrp.epsilon", model)
    before = analyzer.analyze(x)
    assert analyzer.graph(x).folds
    with torch.no_grad():
        functional.conv.weight.mul_(-1.5)
        for module in functional.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.mul_(3)
    after = analyzer.analyze(x)
    expected = innspect.create_analyzer("lrp.epsilon", model).analyze(x)
    torch.testing.assert_close(after, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(after, before)
