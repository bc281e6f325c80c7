"""README "Transformers and modern CNNs": a ViT heatmap and a BERT-like token print-out.

Random weights (no download): the pictures show that the methods run and what they return,
not what a trained model attends to. Run: python docs/modern_example.py
"""

from __future__ import annotations

import torch
from torch import nn

import innspect


class TinyBert(nn.Module):
    """Token embeddings, two post-LN encoder layers (nn.MultiheadAttention), a classifier
    on the first token."""

    def __init__(self, vocabulary: list[str], width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(vocabulary), width)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "attn": nn.MultiheadAttention(width, 2, batch_first=True),
                    "norm1": nn.LayerNorm(width),
                    "mlp": nn.Sequential(
                        nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
                    ),
                    "norm2": nn.LayerNorm(width),
                }
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width, 2)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        x = embedded
        for layer in self.layers:
            x = layer["norm1"](x + layer["attn"](x, x, x, need_weights=False)[0])
            x = layer["norm2"](x + layer["mlp"](x))
        return self.head(x[:, 0])


def tokens() -> None:
    words = "[CLS] the movie was not bad at all".split()
    torch.manual_seed(0)
    model = TinyBert(words).eval()
    # Relevance is explained for the embedded tokens (the embedding lookup is not
    # differentiable in its indices): sum over the embedding axis per token.
    embedded = model.embed(torch.arange(len(words)))[None].detach()
    for method in ("lrp.attn", "lrp.cp"):
        relevance = innspect.create_analyzer(method, model).analyze(embedded).sum(-1)[0]
        cells = "  ".join(f"{w} {float(r):+.2f}" for w, r in zip(words, relevance, strict=True))
        print(f"{method:<9} {cells}")


def heatmap(path: str = "docs/images/vit_lrp_attn.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=64,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    ).eval()
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts it at zero
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    image = torch.stack([x, y, (x**2 + y**2 < 0.4).float()])[None]
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    axes[0].imshow(image[0].permute(1, 2, 0).clamp(0, 1))
    axes[0].set_title("input")
    for ax, method in zip(axes[1:], ("lrp.attn", "lrp.cp", "lrp.epsilon"), strict=True):
        relevance = innspect.create_analyzer(method, model).analyze(image).sum(1)[0]
        bound = float(relevance.abs().max())
        ax.imshow(relevance, cmap="seismic", vmin=-bound, vmax=bound)
        ax.set_title(method)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("torchvision ViT, random weights", fontsize=9)
    fig.savefig(path, dpi=80, bbox_inches="tight")


if __name__ == "__main__":
    tokens()
    heatmap()
