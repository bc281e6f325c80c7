"""One LXT 2.1 comparison per process (LXT's monkey_patch changes model classes for good).

``python -m tests.lxt_cases CASE...`` prints, per case, the relative L2 distance between innspect's
attribution and LXT's (efficient mode: gradient x input after ``monkey_patch``) on a small
random model. Cases: llama-attn, llama-cp, bert-attn (Hugging Face, eager attention) and
vit-cp (torchvision ViT, LXT's CP-LRP setting). Used by tests/test_modern_lxt.py.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import innspect


class _Embedded(nn.Module):
    """A Hugging Face model on ``inputs_embeds``, explaining one output row."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        if self.kind == "llama":
            return self.model(inputs_embeds=embedded).logits[:, -1]
        return self.model(inputs_embeds=embedded).last_hidden_state[:, 0]


def build(case: str) -> tuple[nn.Module, torch.Tensor, object, dict]:
    """(model, input, the module LXT patches, its patch map)."""
    torch.manual_seed(0)
    if case.startswith("llama"):
        from lxt.efficient.models import llama as lxt_llama
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            attn_implementation="eager",
        )
        model = _Embedded(LlamaForCausalLM(config).eval().double(), "llama")
        patch = lxt_llama.cp_LRP if case.endswith("cp") else lxt_llama.attnLRP
        return model, torch.randn(2, 6, 16, dtype=torch.float64), lxt_llama.modeling_llama, patch
    if case == "bert-attn":
        from lxt.efficient.models import bert as lxt_bert
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            attn_implementation="eager",
        )
        model = _Embedded(BertModel(config).eval().double(), "bert")
        return (
            model,
            torch.randn(2, 6, 16, dtype=torch.float64),
            lxt_bert.modeling_bert,
            lxt_bert.attnLRP,
        )
    if case == "vit-cp":
        from lxt.efficient.models import vit_torch
        from torchvision.models.vision_transformer import VisionTransformer

        model = VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
            num_classes=5,
        )
        nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        return model.eval().double(), x, vit_torch.vision_transformer, vit_torch.cp_LRP
    raise SystemExit(f"unknown case {case!r}")


def distance(case: str) -> float:
    from lxt.efficient import monkey_patch

    model, x, module, patch_map = build(case)
    method = "lrp.cp" if case.endswith("cp") else "lrp.attn"
    ours = torch.as_tensor(innspect.create_analyzer(method, model, epsilon=1e-12).analyze(x))
    monkey_patch(module, patch_map=patch_map, verbose=False)
    leaf = x.clone().requires_grad_(True)
    output = model(leaf)
    output.gather(1, output.argmax(1)[:, None]).sum().backward()
    reference = (leaf * leaf.grad).detach()
    return float((ours - reference).norm() / reference.norm())


if __name__ == "__main__":
    # Several cases in one process when they patch different modules (saves the imports).
    for name in sys.argv[1:]:
        print(f"{name} {distance(name):.6e}", flush=True)
