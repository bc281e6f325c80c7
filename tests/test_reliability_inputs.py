"""Bad input to the library gets a clear innspect error naming what was wrong and what to do;
results are never NaN silently; a softmax is found wherever the output passes through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import innspect
from innspect.errors import OutputActivationError

GRADIENT_FAMILY = ["gradient", "input_t_gradient", "integrated_gradients", "smoothgrad"]


class _ScaledSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 100 * F.softmax(self.fc(x), dim=1)


class _SlicedSoftmax(_ScaledSoftmax):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), dim=-1)[:, :2].reshape(x.shape[0], -1) / 2 + 1


@pytest.mark.parametrize("name", [*GRADIENT_FAMILY, "lrp.z", "deconvnet"])
@pytest.mark.parametrize("make", ["flatten", "scaled", "sliced", "log_softmax_dropout"])
def test_a_softmax_behind_shape_and_scaling_nodes_is_refused_by_every_analyzer(
    name: str, make: str
) -> None:
    model = {
        "flatten": lambda: nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1), nn.Flatten()),
        "scaled": _ScaledSoftmax,
        "sliced": _SlicedSoftmax,
        "log_softmax_dropout": lambda: nn.Sequential(
            nn.Linear(4, 3), nn.LogSoftmax(dim=1), nn.Dropout(0.1)
        ),
    }[make]()
    with pytest.raises(OutputActivationError, match="model_wo_softmax"):
        innspect.create_analyzer(name, model).analyze(torch.randn(2, 4))


def test_a_softmax_inside_the_model_is_not_an_output_activation() -> None:
    # Attention-like: softmax weights multiply another signal, then a linear layer.
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.softmax(self.fc(x), dim=1) * x)

    innspect.create_analyzer("gradient", Inner()).analyze(torch.randn(2, 4))
