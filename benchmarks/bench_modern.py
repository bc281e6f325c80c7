"""The `--only modern` group of benchmarks/run.py (issue 16, "Speed").

``lrp.attn`` and ``lrp.cp`` against the plain forward+gradient pass (paired, as every table
of run.py) on a ViT-B/16-sized model (torchvision ``vit_b_16``, random weights, 224x224)
and a BERT-base-sized encoder (``nn.TransformerEncoder``: 12 layers, width 768, 12 heads,
128 tokens), batch 4. Target: <= 1.5x. LXT is not timed here: it patches Hugging Face
classes and needs transformers, which the test environment does not install.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torchvision
from torch import nn

import innspect


class BertBase(nn.Module):
    """BERT-base's encoder shape over embedded tokens, a head on the first token."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(768, 12, 3072, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
        self.head = nn.Linear(768, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[:, 0])


def modern_rows(bench: ModuleType, model: nn.Module, x: torch.Tensor, repeats: int) -> list:
    """Paired rows: lrp.attn and lrp.cp against forward+gradient."""
    _, reference = bench.plain_runs(model, x)
    subjects = []
    for name in ("lrp.attn", "lrp.cp"):
        analyzer = innspect.create_analyzer(name, model)
        subjects.append(bench.Subject(f"innspect {name}", lambda a=analyzer: a.analyze(x)))
    reference_row = bench.measure_paired(subjects, reference, repeats)
    return [reference_row, *(s.row() for s in subjects)]


def section(bench: ModuleType, batch: int, repeats: int, tokens: int = 128) -> str:
    """The markdown of the group: one table per model."""
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16().eval()
    nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision starts it at zero
    parts = ["## Transformers: lrp.attn / lrp.cp against forward+gradient (target <= 1.5x)\n"]
    print("vit_b_16:", flush=True)
    rows = modern_rows(bench, vit, torch.randn(batch, 3, 224, 224), repeats)
    parts.append(bench.render_model_table("vit_b_16", batch, 224, rows))
    print("bert-base-sized encoder:", flush=True)
    bert = BertBase().eval()
    rows = modern_rows(bench, bert, torch.randn(batch, tokens, 768), repeats)
    table = bench.render_model_table("BERT-base-sized encoder", batch, tokens, rows)
    parts.append(table.replace(f"{tokens}x{tokens}", f"{tokens} tokens"))
    return "\n".join(parts)
