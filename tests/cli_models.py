"""Model factories the CLI tests load as ``tests.cli_models:NAME`` (importable from the repo)."""

from __future__ import annotations

from torch import nn


def small_cnn() -> nn.Module:
    """A small CNN for (1, 12, 12) inputs with 5 outputs (the weights come from a file)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


def other_cnn() -> nn.Module:
    """An architecture whose state dict does not fit ``small_cnn``."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten())


def rgb_cnn() -> nn.Module:
    """A small CNN for 3-channel images of any size (ImageNet-style 224 x 224 included)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )


def softmax_cnn() -> nn.Module:
    """``small_cnn`` with a final softmax (to be stripped with --strip-softmax)."""
    return nn.Sequential(small_cnn(), nn.Softmax(dim=1))


def needs_arguments(width: int) -> nn.Module:
    """A factory the CLI cannot call (it needs an argument)."""
    return nn.Linear(width, 2)


def raises() -> nn.Module:
    """A factory that fails."""
    raise RuntimeError("this factory is broken on purpose")


class ResidualNet(nn.Module):
    """Conv + BatchNorm + in-place ReLU, a residual `out += identity`, pooling modules: what
    TorchScript'd torchvision ResNets contain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        identity = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(identity))
        out += identity
        out = self.pool(self.relu(out))
        return self.fc(self.avg(out).flatten(1))


def residual_net() -> nn.Module:
    """A ``ResidualNet`` with non-trivial BatchNorm statistics."""
    model = ResidualNet()
    for layer in (model.bn1, model.bn2):
        layer.running_mean.uniform_(-0.3, 0.3)
        layer.running_var.uniform_(0.5, 1.5)
        nn.init.uniform_(layer.weight, 0.5, 1.5)
    return model.eval()


class _DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        return {"scores": self.net(x)}


def dict_output() -> nn.Module:
    """A model whose output is a dict, as detection models' are."""
    return _DictOutput()
