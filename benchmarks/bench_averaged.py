"""``python benchmarks/run.py --only averaged``: integrated gradients' integral approximations.

On resnet50 (random weights, float32, ``--batch`` images), each row is one integration
method and number of steps. The batch norms get random running statistics and affine
parameters (seeded): with torchvision's initial ones (mean 0, variance 1, no shift) and no
biases before the classifier, the network is positively homogeneous, its gradient along the
path is constant but at 0 itself, and the left Riemann sum's error is exactly 1 / steps,
which says nothing about a trained model. Per row: its completeness error, ``|sum(attribution) - (f(x) - f(0))|``
relative to ``|f(x) - f(0)|`` per image (mean and max over the batch: how far the
attributions are from summing to the output difference the method promises), and its time
in forward+gradient passes (run.py's paired measurement). Gauss-Legendre with 8 points
against the left Riemann sum (iNNvestigate's and innspect's default) with 8, 32 and 128.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torchvision

import innspect

ROWS = (("gausslegendre", 8), ("riemann_left", 8), ("riemann_left", 32), ("riemann_left", 128))


def completeness(model: torch.nn.Module, x: torch.Tensor, method: str, steps: int) -> tuple:
    """(mean, max) over the batch of the relative completeness error, and the classes."""
    analyzer = innspect.create_analyzer(
        "integrated_gradients", model, method=method, steps=steps, batch_size=64
    )
    explanation = analyzer.explain(x)
    with torch.no_grad():
        rows = torch.arange(x.shape[0])
        at_zero = model(torch.zeros_like(x))[rows, explanation.selected]
    delta = explanation.scores - at_zero
    total = explanation.attribution.flatten(1).sum(dim=1)
    error = ((total - delta).abs() / delta.abs()).double()
    return float(error.mean()), float(error.max())


def resnet50_with_batch_norm_statistics() -> torch.nn.Module:
    """resnet50 with random weights and random (seeded) batch-norm statistics and affine
    parameters, so that its output is not positively homogeneous along a path from 0."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
    return model


def section(run: ModuleType, batch: int, size: int, repeats: int) -> str:
    model = resnet50_with_batch_norm_statistics()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    _, reference = run.plain_runs(model, x)
    errors: dict[tuple[str, int], tuple[float, float]] = {}

    def measured(method: str, steps: int) -> None:  # the warm-up call: completeness
        errors[(method, steps)] = completeness(model, x, method, steps)

    subjects = [
        run.Subject(
            f"{method}, {steps} steps",
            lambda method=method, steps=steps: innspect.create_analyzer(
                "integrated_gradients", model, method=method, steps=steps, batch_size=64
            ).analyze(x),
            warmup=lambda method=method, steps=steps: measured(method, steps),
        )
        for method, steps in ROWS
    ]
    print("resnet50 integrated gradients:", flush=True)
    reference_row = run.measure_paired(subjects, reference, repeats)
    lines = [
        f"## Integrated gradients: completeness by integral approximation (resnet50, random "
        f"weights and batch-norm statistics, batch {batch}, {size}x{size}, float32)\n",
        "Completeness error: |sum of the attributions - (f(x) - f(0))| / |f(x) - f(0)| per "
        "image, for the explained (top) class. Time: seconds of one call, and its ratio to a "
        f"plain forward+gradient pass ({reference_row.seconds:.3f} s here), median of paired "
        "runs.\n",
        "| method | steps | completeness error, mean | max | seconds | x forward+gradient |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (method, steps), subject in zip(ROWS, subjects, strict=True):
        row = subject.row()
        mean, worst = errors[(method, steps)]
        lines.append(
            f"| {method} | {steps} | {mean:.2e} | {worst:.2e} | {row.seconds:.2f} | "
            f"{row.ratio:.1f} |"
        )
    left = {steps: errors[("riemann_left", steps)][0] for _, steps in ROWS[1:]}
    gauss = errors[("gausslegendre", 8)][0]
    better = [steps for steps, error in left.items() if gauss <= error]
    verdict = (
        f"Gauss-Legendre with 8 points is at least as complete as the left Riemann sum with "
        f"{max(better)} points"
        if better
        else "Gauss-Legendre with 8 points is less complete than the left Riemann sum with 8"
    )
    lines.append(f"\n{verdict} on this model (mean errors above).\n")
    return "\n".join(lines)
