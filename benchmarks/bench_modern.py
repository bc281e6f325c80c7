"""The `--only modern` group of benchmarks/run.py (issue 16, "Speed").

``lrp.attn`` and ``lrp.cp`` against the plain forward+gradient pass (paired, as every table
of run.py) on a ViT-B/16-sized model (torchvision ``vit_b_16``, random weights, 224x224)
and a BERT-base-sized encoder (``nn.TransformerEncoder``: 12 layers, width 768, 12 heads,
128 tokens), batch 4. Target: <= 1.5x.

Beside them, LXT 2.1 (AttnLRP's implementation, efficient mode: gradient x input of the
patched model) on the models it patches: torchvision's ViT-B/16 (its CP-LRP patch) and a
Hugging Face BERT-base encoder (its AttnLRP patch), with innspect's ``lrp.cp`` /
``lrp.attn`` on the same models. LXT patches classes for the whole process (``nn.LayerNorm``
among them), so it runs in a subprocess of its own: there the plain forward+gradient pass
is timed first, then LXT after the patch, and the row gives the ratio of their medians (not
paired, unlike the others).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
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


class HfBertBase(nn.Module):
    """Hugging Face BERT-base (random weights, eager attention, as LXT's patch needs) on
    embedded tokens, a head on the first token."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False)
        self.head = nn.Linear(768, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bert(inputs_embeds=x).last_hidden_state[:, 0])


def _lxt_model(case: str, batch: int, tokens: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if case == "vit":
        vit = torchvision.models.vit_b_16().eval()
        nn.init.normal_(vit.heads.head.weight, std=0.02)
        return vit, torch.randn(batch, 3, 224, 224)
    return HfBertBase().eval(), torch.randn(batch, tokens, 768)


def lxt_subprocess(case: str, batch: int, tokens: int, repeats: int) -> dict[str, float]:
    """Run in its own process: medians of the plain forward+gradient, then of LXT."""
    from lxt.efficient import monkey_patch

    model, x = _lxt_model(case, batch, tokens)

    def gradient_x_input() -> object:
        leaf = x.clone().requires_grad_(True)
        output = model(leaf)
        (grad,) = torch.autograd.grad(output.max(dim=1).values.sum(), leaf)
        return grad * leaf

    def median_time(run: object) -> float:
        run()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    plain = median_time(gradient_x_input)
    if case == "vit":
        from lxt.efficient.models import vit_torch

        monkey_patch(vit_torch.vision_transformer, patch_map=vit_torch.cp_LRP, verbose=False)
    else:
        from lxt.efficient.models import bert

        monkey_patch(bert.modeling_bert, patch_map=bert.attnLRP, verbose=False)
    return {"plain": plain, "lxt": median_time(gradient_x_input)}


def lxt_line(case: str, batch: int, tokens: int, repeats: int) -> str:
    """LXT's table row, measured by ``lxt_subprocess`` in a fresh interpreter."""
    command = [sys.executable, str(Path(__file__)), "--lxt", case]
    command += [str(batch), str(tokens), str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    label = "LXT 2.1 cp_LRP" if case == "vit" else "LXT 2.1 attnLRP"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"| {label} | - | - | - | - | - (failed: {reason[:100]}) |"
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return (
        f"| {label} (own process) | {times['lxt']:.3f} | {times['lxt'] / times['plain']:.2f} "
        f"(to that process's fwd+grad, {times['plain']:.3f} s; medians, not paired) | | - | - |"
    )


def section(bench: ModuleType, batch: int, repeats: int, tokens: int = 128) -> str:
    """The markdown of the group: one table per model."""
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16().eval()
    nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision starts it at zero
    parts = ["## Transformers: lrp.attn / lrp.cp against forward+gradient (target <= 1.5x)\n"]
    print("vit_b_16:", flush=True)
    rows = modern_rows(bench, vit, torch.randn(batch, 3, 224, 224), repeats)
    parts.append(bench.render_model_table("vit_b_16", batch, 224, rows))
    parts[-1] += lxt_line("vit", batch, tokens, repeats) + "\n"
    print("bert-base-sized encoder:", flush=True)
    bert = BertBase().eval()
    rows = modern_rows(bench, bert, torch.randn(batch, tokens, 768), repeats)
    table = bench.render_model_table("BERT-base-sized encoder", batch, tokens, rows)
    parts.append(table.replace(f"{tokens}x{tokens}", f"{tokens} tokens"))
    print("Hugging Face BERT-base:", flush=True)
    model, x = _lxt_model("bert", batch, tokens)
    rows = modern_rows(bench, model, x, repeats)
    table = bench.render_model_table("Hugging Face BERT-base", batch, tokens, rows)
    table = table.replace(f"{tokens}x{tokens}", f"{tokens} tokens, eager attention")
    parts.append(table + lxt_line("bert", batch, tokens, repeats) + "\n")
    return "\n".join(parts)


if __name__ == "__main__" and sys.argv[1:2] == ["--lxt"]:
    case, batch, tokens, repeats = sys.argv[2], *map(int, sys.argv[3:6])
    print(json.dumps(lxt_subprocess(case, batch, tokens, repeats)))
