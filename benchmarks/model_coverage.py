"""Coverage table: which model each method explains.

(Not named coverage.py: run.py's folder is first on sys.path, and numba, which UMAP in
``--only introspect`` imports, imports the coverage package.)

Every classification model of ``torchvision.models.list_models(module=torchvision.models)``,
a fixed list of timm models, and Hugging Face BERT / ViT / GPT-2 / LLaMA in tiny random
configurations (random weights, never downloaded). For every relevance method and the
gradient family, one explanation of one random input: "ok" with finite results (and the
time), or the refusal message. Writes docs/coverage.md. ``make coverage`` runs it (not part
of ``make test``).

    python benchmarks/model_coverage.py [--models vit_b_16 timm:levit_128s hf:bert] [--size 64]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import innspect
from innspect.errors import InnspectError, NonFiniteRelevanceError
from innspect.util.files import write_text

METHODS = {
    "gradient": {},
    "input_t_gradient": {},
    "smoothgrad": {"augment_by_n": 4},
    "integrated_gradients": {"steps": 4},
    "guided_backprop": {},
    "deconvnet": {},
    "lrp.epsilon": {},
    "lrp.z": {},
    "lrp.attn": {},
    "lrp.cp": {},
    "lrp.alpha_2_beta_1": {},
    "lrp.sequential_preset_a": {},
    "lrp.sequential_preset_b": {},
    "lrp.epsilon_plus": {},
    "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
    "deep_taylor": {},
}
# torchvision models whose input size is fixed by their position embeddings / partitions,
# or that need more than 64 pixels (Inception v3: 75 at least).
FIXED_SIZE = ("vit_", "maxvit", "swin_v2", "inception")
TIMM_MODELS = (
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "convnext_atto",
    "efficientnet_b0",
    "mobilenetv3_small_050",
    "regnetx_002",
    "repvgg_a0",
    "ghostnet_100",
    "mobilevitv2_050",
    "levit_128s",
    "coat_lite_tiny",
    "poolformer_s12",
    "dla34",
    "resnet18d",
)
HF_MODELS = ("bert", "vit", "gpt2", "llama")


@dataclass
class Case:
    """One model of the table: how to build it and what to explain."""

    source: str  # "torchvision" | "timm" | "hf"
    name: str
    build: Callable[[], tuple[torch.nn.Module, Any]]  # (model in eval mode, one input)
    options: dict[str, Any] = field(default_factory=dict)  # attribute_to, output...


def torchvision_case(name: str, size: int) -> Case:
    import torchvision

    def build() -> tuple[torch.nn.Module, Any]:
        model = torchvision.models.get_model(name, weights=None).eval()
        side = 224 if name.startswith(FIXED_SIZE) else size
        return model, torch.randn(1, 3, side, side)

    return Case("torchvision", name, build)


def timm_case(name: str) -> Case:
    def build() -> tuple[torch.nn.Module, Any]:
        import timm

        model = timm.create_model(name, pretrained=False).eval()
        _, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
        return model, torch.randn(1, 3, height, width)

    return Case("timm", name, build)


def hf_case(name: str) -> Case:
    """Tiny random configurations; text models explained at their token embeddings."""
    import transformers as hf

    tiny = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    ids = {
        "input_ids": torch.randint(0, 100, (1, 8)),
        "attention_mask": torch.ones(1, 8, dtype=torch.long),
    }
    last_token = {"output": lambda out: out.logits[:, -1], "attribute_sum_axis": -1}
    builders: dict[str, tuple[Callable[[], torch.nn.Module], Any, dict[str, Any]]] = {
        "bert": (
            lambda: hf.BertForSequenceClassification(
                hf.BertConfig(vocab_size=100, hidden_size=32, **tiny)
            ),
            ids,
            {"attribute_to": "bert.embeddings.word_embeddings", "attribute_sum_axis": -1},
        ),
        "vit": (
            lambda: hf.ViTForImageClassification(
                hf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, **tiny, num_labels=10)
            ),
            torch.randn(1, 3, 32, 32),
            {"output": "logits"},
        ),
        "gpt2": (
            lambda: hf.GPT2LMHeadModel(
                hf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=16)
            ),
            ids,
            {"attribute_to": "transformer.wte", **last_token},
        ),
        "llama": (
            lambda: hf.LlamaForCausalLM(
                hf.LlamaConfig(
                    vocab_size=100,
                    hidden_size=32,
                    **tiny,
                    num_key_value_heads=2,
                    max_position_embeddings=16,
                )
            ),
            ids,
            {"attribute_to": "model.embed_tokens", **last_token},
        ),
    }
    make, example, options = builders[name]
    return Case("hf", name, lambda: (make().eval(), example), options)


def cases(names: list[str] | None, size: int) -> list[Case]:
    """The table's rows: every model by default, else ``names`` (``timm:x``, ``hf:x``, ``x``)."""
    import torchvision

    if not names:
        names = [
            *torchvision.models.list_models(module=torchvision.models),
            *(f"timm:{n}" for n in TIMM_MODELS),
            *(f"hf:{n}" for n in HF_MODELS),
        ]
    built = []
    for name in names:
        source, _, model = name.rpartition(":")
        if source == "timm":
            built.append(timm_case(model))
        elif source == "hf":
            built.append(hf_case(model))
        else:
            built.append(torchvision_case(model, size))
    return built


def cell(model: torch.nn.Module, x: Any, name: str, options: dict[str, Any]) -> tuple[str, str]:
    """("ok 0.12 s" | "refused" | "error" | "non-finite", message)."""
    start = time.perf_counter()
    try:
        analyzer = innspect.create_analyzer(name, model, **METHODS[name], **options)
        result = analyzer.analyze(x)
    except NonFiniteRelevanceError as error:  # ran, but the values overflowed or are NaN
        return "non-finite", str(error).splitlines()[0][:200]
    except InnspectError as error:  # a clear refusal
        return "refused", str(error).splitlines()[0][:200]
    except Exception as error:  # noqa: BLE001 - the table reports any failure
        return "error", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    tensors = [t for t in (result if isinstance(result, tuple) else (result,)) if t is not None]
    if not all(bool(torch.isfinite(torch.as_tensor(t)).all()) for t in tensors):
        return "non-finite", ""
    return f"ok {time.perf_counter() - start:.2f} s", ""


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--size", type=int, default=64, help="image side (224 where fixed)")
    parser.add_argument("--out", default="docs/coverage.md")
    args = parser.parse_args()
    rows: dict[str, list[str]] = {}
    notes, counts = [], Counter()
    for case in tqdm(cases(args.models, args.size), desc="models", unit="model"):
        torch.manual_seed(0)
        try:
            model, x = case.build()
        except Exception as error:  # noqa: BLE001 - a model the installed library cannot build
            notes.append(f"- `{case.name}` ({case.source}) not built: {error}")
            continue
        cells = []
        for method in METHODS:
            status, message = cell(model, x, method, case.options)
            counts[status.split()[0]] += 1
            cells.append(status)
            if message:
                notes.append(f"- `{case.name}` ({case.source}) / `{method}`: {message}")
        rows.setdefault(case.source, []).append(f"| {case.name} | " + " | ".join(cells) + " |")
        tqdm.write(rows[case.source][-1])
    import timm
    import transformers

    header = ["| model | " + " | ".join(METHODS) + " |", "|" + " --- |" * (len(METHODS) + 1)]
    titles = {
        "torchvision": "torchvision classification models",
        "timm": "timm",
        "hf": "Hugging Face (tiny random configurations)",
    }
    tables = []
    for source, source_rows in rows.items():
        tables += [f"## {titles[source]}", "", *header, *source_rows, ""]
    text = "\n".join(
        [
            "# Coverage: which model each method explains",
            "",
            f"Generated by `benchmarks/model_coverage.py` (torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, timm {timm.__version__}, transformers "
            f"{transformers.__version__}): random weights, one input, CPU. torchvision: "
            f"{args.size}x{args.size} images (224 for ViT, MaxViT, Swin V2, Inception v3); timm: each model's "
            "own input size; Hugging Face: BERT / ViT / GPT-2 / LLaMA with 2 layers of width "
            "32, 8 tokens (32x32 images for ViT); text models explained at their token "
            "embeddings (`attribute_to`, summed per token), GPT-2 and LLaMA at the last "
            "token's logits. Totals: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            + ".",
            "",
            (
                f"**A subset**: the models given with `--models` (`{' '.join(args.models)}`); "
                "`make coverage` runs every model."
                if args.models
                else "Every classification model of torchvision, the timm list of issue 16, and "
                "the four Hugging Face families."
            ),
            "Times include capturing the graph (per method). smoothgrad: 4 samples; "
            "integrated_gradients: 4 steps. 'non-finite': the method ran but its values overflowed "
            "or are NaN, and innspect refused to return them (random weights; "
            "`reverse_check_finite=True` names the node).",
            "",
            *tables,
            "## Refusals and errors",
            "",
            *notes,
            "",
        ]
    )
    write_text(Path(args.out), text)


if __name__ == "__main__":
    main()
