"""Small bias-free float64 models of modern architectures (issue 16's conservation tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

D = 8  # width
HEADS = 2


class ViTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(D, bias=False)
        self.attn = nn.MultiheadAttention(D, HEADS, bias=False, batch_first=True)
        self.norm2 = nn.LayerNorm(D, bias=False)
        self.fc1, self.fc2 = nn.Linear(D, 2 * D, bias=False), nn.Linear(2 * D, D, bias=False)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding, two pre-LN blocks, mean pooling, head (ViT-style, bias-free)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, D, 4, stride=4, bias=False)
        self.blocks = nn.Sequential(ViTBlock(), ViTBlock())
        self.norm = nn.LayerNorm(D, bias=False)
        self.head = nn.Linear(D, 3, bias=False)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(1))


class BertLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, bias=False, batch_first=True)
        self.norm1 = nn.LayerNorm(D, bias=False)
        self.fc1, self.fc2 = nn.Linear(D, 2 * D, bias=False), nn.Linear(2 * D, D, bias=False)
        self.norm2 = nn.LayerNorm(D, bias=False)

    def forward(self, x, padding):
        x = self.norm1(x + self.attn(x, x, x, key_padding_mask=padding, need_weights=False)[0])
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class Bert(nn.Module):
    """Two post-LN encoder layers over embedded tokens, the last two positions padded."""

    def __init__(self, batch: int = 2, length: int = 6) -> None:
        super().__init__()
        padding = torch.zeros(batch, length, dtype=torch.bool)
        padding[:, -2:] = True  # True: not attended (nn.MultiheadAttention's convention)
        self.register_buffer("padding", padding)
        self.layer1, self.layer2 = BertLayer(), BertLayer()
        self.head = nn.Linear(D, 3, bias=False)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(x, self.padding), self.padding)[:, 0])


class Decoder(nn.Module):
    """A LLaMA-style block: RMSNorm, causal scaled_dot_product_attention, SwiGLU."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(D, eps=1e-6), nn.RMSNorm(D, eps=1e-6)
        nn.init.normal_(self.norm1.weight)
        nn.init.normal_(self.norm2.weight)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(D, 2 * D, bias=False), nn.Linear(D, 2 * D, bias=False)
        self.w2 = nn.Linear(2 * D, D, bias=False)
        self.head = nn.Linear(D, 3, bias=False)

    def forward(self, x):
        h = self.norm1(x)
        q, k, v = (
            p(h).unflatten(-1, (HEADS, -1)).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(attended.transpose(1, 2).flatten(-2))
        h = self.norm2(x)
        x = x + self.w2(F.silu(self.w1(h)) * self.w3(h))
        return self.head(x[:, -1])


class SE(nn.Module):
    """A conv block with squeeze-excitation (a sigmoid gate), pooled, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, D, 3, padding=1, bias=False)
        self.squeeze, self.excite = nn.Conv2d(D, 4, 1, bias=False), nn.Conv2d(4, D, 1, bias=False)
        self.head = nn.Linear(D, 3, bias=False)

    def forward(self, x):
        h = F.relu(self.conv(x))
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(h.mean((2, 3), keepdim=True)))))
        return self.head((h * gate).mean((2, 3)))


class ConvNeXt(nn.Module):
    """A ConvNeXt block (depthwise conv, channels-last LayerNorm, MLP, layer scale,
    stochastic depth) between a stem and a head."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import StochasticDepth

        self.stem = nn.Conv2d(3, D, 2, stride=2, bias=False)
        self.dwconv = nn.Conv2d(D, D, 7, padding=3, groups=D, bias=False)
        self.norm = nn.LayerNorm(D, bias=False)
        self.fc1, self.fc2 = nn.Linear(D, 4 * D, bias=False), nn.Linear(4 * D, D, bias=False)
        self.gamma = nn.Parameter(torch.full((D,), 0.5))
        self.drop = StochasticDepth(0.1, "row")
        self.head = nn.Linear(D, 3, bias=False)

    def forward(self, x):
        x = self.stem(x)
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.gamma * self.fc2(F.gelu(self.fc1(self.norm(h))))
        x = x + self.drop(h.permute(0, 3, 1, 2))
        return self.head(x.mean((2, 3)))


MODELS = {"vit": ViT, "bert": Bert, "decoder": Decoder, "se": SE, "convnext": ConvNeXt}
INPUTS = {
    "vit": (2, 3, 8, 8),
    "bert": (2, 6, D),
    "decoder": (2, 5, D),
    "se": (2, 3, 6, 6),
    "convnext": (2, 3, 8, 8),
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().double().eval()


def inputs(name: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(INPUTS[name], dtype=torch.float64, generator=generator)
