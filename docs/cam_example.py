"""README "Class activation maps": Grad-CAM of a vision transformer, with no reshape code.

A small torchvision ``VisionTransformer`` (32x32 images, 4x4 patches: an 8x8 grid and a class
token) is trained on the spot on synthetic pictures: a noisy background with one shape, a
cross (class 0) or a ring (class 1), at a random place. innspect finds the last token
sequence that maps onto the patch grid and its class token by itself; the script checks that
where each map's hottest pixel falls (on the shape or not) and prints the share, and draws
the figure with HiResCAM beside Grad-CAM. Nothing is downloaded. Run: python docs/cam_example.py
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.models import VisionTransformer  # noqa: E402

import innspect  # noqa: E402
from innspect.viz.overlay import overlay_rgb  # noqa: E402

SIZE, SHAPE = 32, 9  # picture and shape sizes in pixels


def _shape(kind: int) -> np.ndarray:
    """A 9x9 cross (0) or ring (1) of ones."""
    grid = np.zeros((SHAPE, SHAPE), dtype=np.float32)
    centre = SHAPE // 2
    if kind == 0:
        grid[centre - 1 : centre + 2, :] = grid[:, centre - 1 : centre + 2] = 1.0
    else:
        yy, xx = np.mgrid[:SHAPE, :SHAPE] - centre
        radius = np.sqrt(yy**2 + xx**2)
        grid[(radius > 2.5) & (radius < 4.5)] = 1.0
    return grid


def pictures(count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Noisy grey pictures with one shape each; labels; each shape's box (top, left)."""
    images = rng.normal(0.3, 0.15, (count, 1, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, 2, count)
    boxes = []
    for image, label in zip(images, labels, strict=True):
        top, left = rng.integers(0, SIZE - SHAPE, 2)
        image[0, top : top + SHAPE, left : left + SHAPE] += _shape(int(label))
        boxes.append((int(top), int(left)))
    rgb = np.repeat(images, 3, axis=1)
    return torch.from_numpy(rgb), torch.from_numpy(labels), boxes


def train(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=SIZE, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64,
        mlp_dim=128, num_classes=2,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(600):
        x, y, _ = pictures(64, rng)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def main(path: str = "docs/images/vit_grad_cam.png") -> None:
    model = train()
    x, y, boxes = pictures(200, np.random.default_rng(1))
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    # No layer and no reshape function: innspect picks the last token sequence on the grid.
    maps = {
        name: innspect.create_analyzer(name, model).analyze(x)[:, 0].numpy()
        for name in ("cam.grad", "cam.hires")
    }
    for name, cams in maps.items():
        hits = 0
        for cam, (top, left) in zip(cams, boxes, strict=True):
            row, col = np.unravel_index(np.argmax(cam), cam.shape)
            hits += top - 2 <= row < top + SHAPE + 2 and left - 2 <= col < left + SHAPE + 2
        print(f"{name}: peak on the shape in {hits / len(boxes):.0%} of 200 pictures")
    print(f"accuracy {accuracy:.1%}")

    fig, axes = plt.subplots(3, 6, figsize=(9, 5))
    for k in range(6):
        picture = x[k].permute(1, 2, 0).clamp(0, 1).numpy()
        axes[0, k].imshow(picture)
        axes[0, k].set_title(["cross", "ring"][int(y[k])], fontsize=9)
        for row, (name, cams) in enumerate(maps.items(), start=1):
            axes[row, k].imshow(overlay_rgb(picture, cams[k], limit=1.0))
            if k == 0:
                axes[row, k].text(-3, SIZE / 2, name, rotation=90, va="center", ha="right")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("cam.grad and cam.hires on a ViT (8x8 patch grid + class token), no reshape code")
    fig.savefig(path, dpi=80, bbox_inches="tight")


if __name__ == "__main__":
    main()
