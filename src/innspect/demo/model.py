"""The demo's model: a small CNN for 32 x 32 digits, trained in seconds on a CPU."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from innspect.util.progress import progress

N_CLASSES = 10


def digits_cnn() -> nn.Sequential:
    """Three conv/ReLU/max-pool stages and two dense layers; outputs logits (no softmax)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, N_CLASSES),
    )


@dataclass
class TrainingReport:
    """What training achieved."""

    epochs: int
    seconds: float
    test_accuracy: float


class _Adam:
    """Adam (Kingma & Ba 2015) for plain parameters.

    Written out because torch.optim imports torch._dynamo on first use, which alone costs
    1-2 s of the demo's time budget on a small CPU.
    """

    def __init__(self, parameters: list[nn.Parameter], lr: float) -> None:
        self.parameters = parameters
        self.lr, self.beta1, self.beta2, self.eps = lr, 0.9, 0.999, 1e-8
        self.first = [torch.zeros_like(p) for p in parameters]
        self.second = [torch.zeros_like(p) for p in parameters]
        self.steps = 0

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        correction1 = 1 - self.beta1**self.steps
        correction2 = 1 - self.beta2**self.steps
        for parameter, first, second in zip(self.parameters, self.first, self.second, strict=True):
            grad = parameter.grad
            first.mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
            second.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denominator = (second / correction2).sqrt_().add_(self.eps)
            parameter.addcdiv_(first, denominator, value=-self.lr / correction1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y``."""
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    epochs: int,
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = True,
) -> TrainingReport:
    """Train with Adam and cross-entropy; returns the test accuracy. The model ends in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = _Adam(list(model.parameters()), lr=2e-3)
    loss_function = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in progress(range(epochs), verbose, total=epochs, desc="training"):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            optimizer.zero_grad()
            loss = loss_function(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    return TrainingReport(epochs, seconds, accuracy(model, x_test, y_test))
