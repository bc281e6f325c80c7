"""Coverage table: which model each method explains.

(Not named coverage.py: run.py's folder is first on sys.path, and numba, which UMAP in
``--only introspect`` imports, imports the coverage package.)

Every classification model of ``torchvision.models.list_models(module=torchvision.models)``,
a fixed list of timm models, torchvision's video models, and 28 Hugging Face families in tiny
random configurations (random weights, never downloaded). For every relevance method and the gradient
family, one explanation of one random input, and where a check exists, the check it passed (or
"wrong" with the numbers in the notes); the checked methods run in float64, the others in
float32:

- ``gradient`` equals autograd's gradient of the same logit; ``input_t_gradient`` equals the
  input times it (relative L2 <= 1e-6);
- ``lrp.z`` equals input x gradient on piecewise-linear models (every input-dependent node of
  the captured graph is linear, a ReLU, a max pooling or a rearrangement), as it must there;
- ``lrp.cp`` conserves: on a copy of the model with every bias, batch-norm shift, position
  embedding and class token set to zero, the relevance at the input sums to the logit (1e-6).

Other cells say "finite" (no oracle here; the peers' tests check them on named models), or
the refusal. Writes docs/coverage.md. ``make coverage`` runs it (not part of ``make test``).

    python benchmarks/model_coverage.py [--models vit_b_16 timm:levit_128s hf:bert] [--size 64]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
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
from innspect.graph.ops import Kind
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
# Hugging Face families in tiny random configurations: (task, the family's own settings).
_WIDTH = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
_IMAGE = {"image_size": 32, "patch_size": 8, "num_labels": 10}
HF_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    # encoders, explained at the first token's classification logits
    "bert": ("sequence", {}),
    "roberta": ("sequence", {}),
    "xlm-roberta": ("sequence", {}),
    "distilbert": ("sequence", {"hidden_dim": 64}),
    "albert": ("sequence", {"embedding_size": 32}),
    "electra": ("sequence", {"embedding_size": 32}),
    "deberta-v2": ("sequence", {}),
    # decoders, explained at the last token's logits
    "gpt2": ("causal", {}),
    "gpt_neo": ("causal", {"attention_types": [[["global", "local"], 1]], "num_layers": 2}),
    "gpt_neox": ("causal", {}),
    "gptj": ("causal", {"rotary_dim": 8}),
    "opt": ("causal", {"word_embed_proj_dim": 32, "ffn_dim": 64}),
    "bloom": ("causal", {}),
    "falcon": ("causal", {}),
    "llama": ("causal", {"num_key_value_heads": 1}),
    "mistral": ("causal", {"num_key_value_heads": 1, "sliding_window": 4}),
    "qwen2": ("causal", {"num_key_value_heads": 1}),
    "qwen3": ("causal", {"num_key_value_heads": 1, "head_dim": 16}),
    "gemma": ("causal", {"num_key_value_heads": 1, "head_dim": 16}),
    "phi": ("causal", {}),
    "phi3": ("causal", {"num_key_value_heads": 1, "pad_token_id": 0}),
    "stablelm": ("causal", {"num_key_value_heads": 1}),
    # vision
    "vit": ("image", _IMAGE),
    # DeiT's auto class maps to two heads (with and without the distillation teacher): the
    # config names the plain one
    "deit": ("image", {**_IMAGE, "architectures": ["DeiTForImageClassification"]}),
    "beit": ("image", _IMAGE),
    "swin": (
        "image",
        {
            "image_size": 32,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [1, 2],
            "window_size": 4,
            "num_labels": 10,
        },
    ),  # fmt: skip
    "convnext": (
        "image",
        {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1], "num_labels": 10},
    ),
}
HF_MODELS = tuple(HF_FAMILIES)


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


# torchvision's video classifiers: (1, 3, 8, 64, 64) clips, S3D needs 16 frames of 224x224.
# Left out for time: MViT v1/v2 (fixed 16x224x224 in float64) and swin3d_s/b (swin3d_t's
# larger siblings).
VIDEO_MODELS = {
    "r3d_18": (8, 64),
    "mc3_18": (8, 64),
    "r2plus1d_18": (8, 64),
    "swin3d_t": (8, 64),
    "s3d": (16, 224),
}


def video_case(name: str) -> Case:
    import torchvision

    def build() -> tuple[torch.nn.Module, Any]:
        frames, side = VIDEO_MODELS.get(name, (8, 64))
        model = torchvision.models.get_model(name, weights=None).eval()
        return model, torch.randn(1, 3, frames, side, side)

    return Case("video", name, build)


def timm_case(name: str) -> Case:
    def build() -> tuple[torch.nn.Module, Any]:
        import timm

        model = timm.create_model(name, pretrained=False).eval()
        _, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
        return model, torch.randn(1, 3, height, width)

    return Case("timm", name, build)


def _module_path(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(path for path, m in model.named_modules() if m is module)


def hf_case(name: str) -> Case:
    """A tiny random configuration of the family; text models are explained at their token
    embeddings (summed per token), decoders at the last token's logits."""
    import transformers as hf

    task, own = HF_FAMILIES[name]
    classes = {
        "sequence": hf.AutoModelForSequenceClassification,
        "causal": hf.AutoModelForCausalLM,
        "image": hf.AutoModelForImageClassification,
    }
    settings = {**({} if task == "image" else _WIDTH), **own}
    if task == "image" and name not in ("swin", "convnext"):
        settings.update({k: v for k, v in _WIDTH.items() if k != "vocab_size"})

    case = Case("hf", name, lambda: build())

    def build() -> tuple[torch.nn.Module, Any]:
        config = hf.AutoConfig.for_model(name, **settings)
        model = classes[task].from_config(config).eval()
        if task == "image":
            case.options.update(output="logits")
            return model, torch.randn(1, 3, 32, 32)
        embeddings = _module_path(model, model.get_input_embeddings())
        case.options.update(attribute_to=embeddings, attribute_sum_axis=-1)
        if task == "causal":
            case.options["output"] = lambda out: out.logits[:, -1]
        return model, {
            "input_ids": torch.randint(1, 100, (1, 8)),
            "attention_mask": torch.ones(1, 8, dtype=torch.long),
        }

    return case


def cases(names: list[str] | None, size: int) -> list[Case]:
    """The table's rows: every model by default, else ``names`` (``timm:x``, ``hf:x``, ``x``)."""
    import torchvision

    if not names:
        names = [
            *torchvision.models.list_models(module=torchvision.models),
            *(f"video:{n}" for n in VIDEO_MODELS),
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
        elif source == "video":
            built.append(video_case(model))
        else:
            built.append(torchvision_case(model, size))
    return built


# Kinds of node through which lrp.z and input x gradient are the same computation.
_PIECEWISE_LINEAR = {
    Kind.INPUT,
    Kind.CONSTANT,
    Kind.LINEAR,
    Kind.BATCHNORM,
    Kind.MAX_POOL,
    Kind.LINEAR_NO_PARAM,
    Kind.REARRANGE,
    Kind.IDENTITY,
    Kind.SCALE,
}
# Parameters and buffers that add a constant to the signal: zero in the bias-free copy.
_ADDITIVE = ("bias", "running_mean", "pos_embed", "position_embedding", "pos_embedding",
             "class_token", "cls_token", "reg_token", "dist_token")  # fmt: skip
# Embedding tables added to the token embeddings (BERT's positions and types, GPT-2's wpe,
# OPT and BART's learned positions).
_ADDED_TABLES = ("position_embeddings", "token_type_embeddings", "wpe", "embed_positions")
TOLERANCE = 1e-6
# Above this many parameters the float64 copies the checks need (the model, its bias-free
# copy and the folded graphs: ~5 GB each for RegNetY-128GF) do not fit 24 GB: such models
# run every method in float32, unchecked (and say so in the notes).
CHECK_PARAMETERS_MAX = 400_000_000
# The section benchmarks/text_coverage.py writes into the same file, kept by this script.
TEXT_START, TEXT_END = "<!-- text-generation:start -->", "<!-- text-generation:end -->"
CHECKED = ("gradient", "input_t_gradient", "lrp.z", "lrp.cp")


def _double(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: v.double() if v.is_floating_point() else v for k, v in x.items()}
    return x.double()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _explained(out: Any, options: dict[str, Any]) -> torch.Tensor:
    """The output the analyzers explain (``output=`` as the cases give it)."""
    chosen = options.get("output")
    if callable(chosen):
        return chosen(out)
    if chosen == "logits" or not isinstance(out, torch.Tensor):
        return out.logits
    return out


class Reference:
    """Autograd's gradient of the explained logit (the largest, as the analyzers choose) at
    the input, or at ``attribute_to``'s output (the token embeddings), and that input."""

    def __init__(self, model: torch.nn.Module, x: Any, options: dict[str, Any]) -> None:
        leaf: list[torch.Tensor] = []
        target = options.get("attribute_to")
        handle = None
        if target is not None:

            def as_leaf(module, args, output):
                leaf.append(output.detach().requires_grad_(True))
                return leaf[-1]

            handle = model.get_submodule(target).register_forward_hook(as_leaf)
            inputs = x
        else:
            leaf.append(x.detach().clone().requires_grad_(True))
            inputs = leaf[0]
        try:
            with torch.enable_grad():
                out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
                logits = _explained(out, options).flatten(1)
                self.logit = logits[0, logits[0].argmax()]
                (self.gradient,) = torch.autograd.grad(self.logit, leaf[0])
        finally:
            if handle is not None:
                handle.remove()
        self.input = leaf[0].detach()
        self.sum_axis = options.get("attribute_sum_axis")

    def attribution(self, times_input: bool, summed: bool = True) -> torch.Tensor:
        value = self.gradient * self.input if times_input else self.gradient
        return value.sum(self.sum_axis) if summed and self.sum_axis is not None else value


def _bias_free(model: torch.nn.Module) -> torch.nn.Module:
    # Caches of tensors computed from parameters (timm's LeViT keeps its attention biases per
    # device) would keep the biases zeroed below, and cannot be deep-copied when computed
    # with autograd: the copy starts without them.
    caches = [
        (module, key, value)
        for module in model.modules()
        for key, value in vars(module).items()
        if "cache" in key and isinstance(value, dict) and value
    ]
    for module, key, _ in caches:
        module.__dict__[key] = {}
    try:
        copied = copy.deepcopy(model)
    finally:
        for module, key, value in caches:
            module.__dict__[key] = value
    with torch.no_grad():
        for name, tensor in [*copied.named_parameters(), *copied.named_buffers()]:
            leaf = name.rsplit(".", 1)[-1]
            if tensor.is_floating_point() and any(a in leaf for a in _ADDITIVE):
                tensor.zero_()
            elif leaf == "weight" and any(f".{t}." in f".{name}" for t in _ADDED_TABLES):
                tensor.zero_()
    return copied


def _piecewise_linear(model: torch.nn.Module, x: Any, options: dict[str, Any]) -> tuple[bool, str]:
    """(whether lrp.z must equal input x gradient, a batch norm the fold missed or "").

    lrp.z's graph has its batch norms folded into the linear layer before them; one still
    there after a linear layer whose only reader it is is a missed fold (issue 25: the check
    must fail). Other batch norms (DenseNet's pre-activation ones) cannot be folded and get
    ``bn_layer_rule`` (iNNvestigate's epsilon): the check runs them with the z-rule."""
    graph = innspect.create_analyzer("lrp.z", model, **options).graph(x)
    nodes = [
        i for i in graph.nodes if i.depends_on_input and not i.is_metadata and i.node.op != "output"
    ]
    linear = all(
        i.kind in _PIECEWISE_LINEAR or (i.kind is Kind.ACTIVATION and i.is_relu) for i in nodes
    )
    for info in nodes:
        inputs = [graph.infos[n] for n in info.signal_inputs if n in graph.infos]
        if info.kind is Kind.BATCHNORM and any(
            i.kind is Kind.LINEAR and _signal_readers(graph, i) == [info.node] for i in inputs
        ):
            return linear, info.name
    return linear, ""


def _signal_readers(graph: Any, info: Any) -> list[Any]:
    """The nodes that read ``info``'s value as a signal (not only its shape or dtype): a
    batch norm can be folded into a linear layer only when it is the layer's one reader
    (MaxViT's pre-norm shares its convolution's output with the residual branch)."""
    return [u for u in info.node.users if u in graph.infos and not graph.infos[u].is_metadata]


def check(
    name: str,
    result: torch.Tensor,
    model: torch.nn.Module,
    x: Any,
    options: dict[str, Any],
    reference: Reference | None,
) -> tuple[str, str]:
    """(the check's short name or "", a failure message or "")."""
    if name in ("gradient", "input_t_gradient") and reference is not None:
        if reference.sum_axis is not None:
            # Per token, a gradient through a LayerNorm sums to ~0 along the embedding axis:
            # compared unsummed, where relative errors mean something.
            unsummed = {k: v for k, v in options.items() if k != "attribute_sum_axis"}
            result = innspect.create_analyzer(name, model, **unsummed).analyze(x)
        error = _relative(result, reference.attribution(name == "input_t_gradient", summed=False))
        what = "= autograd" if name == "gradient" else "= x*autograd"
        return what, "" if error <= TOLERANCE else f"rel. L2 {error:.2g} from autograd"
    if name == "lrp.z" and reference is not None:
        linear, missed_fold = _piecewise_linear(model, x, options)
        if missed_fold:
            return "= x*grad", f"batch norm '{missed_fold}' after a linear layer is not folded"
        if linear:
            z_rule = innspect.create_analyzer(name, model, bn_layer_rule="Z", **options)
            error = _relative(z_rule.analyze(x), reference.attribution(True))
            message = f"rel. L2 {error:.2g} from input x grad"
            return "= x*grad", "" if error <= TOLERANCE else message
    if name == "lrp.cp":
        free = _bias_free(model)
        # A stabiliser far below the signals: zero biases shrink some models' logits to 1e-14
        # and their deeper signals further.
        try:
            analyzer = innspect.create_analyzer(name, free, epsilon=1e-100, **options)
            total = float(analyzer.analyze(x).sum())
        except NonFiniteRelevanceError:
            # 0 / 0 where a zeroed branch meets a mean (Hugging Face ConvNeXt's hand-written
            # channels-first LayerNorm): 1e-100 stabilises nothing there; 1e-12 does, still far
            # below the signals.
            analyzer = innspect.create_analyzer(name, free, epsilon=1e-12, **options)
            total = float(analyzer.analyze(x).sum())
        logit = float(Reference(free, x, options).logit.detach())
        gap = abs(total - logit) / max(abs(logit), 1e-300)
        message = f"bias-free: relevance {total:.6g}, logit {logit:.6g}"
        return "conserves", "" if gap <= TOLERANCE else message
    return "", ""


def cell(
    model: torch.nn.Module,
    x: Any,
    name: str,
    options: dict[str, Any],
    reference: Reference | None,
) -> tuple[str, str]:
    """("ok CHECK 0.12 s" | "finite 0.12 s" | "wrong CHECK" | "refused" | "error" |
    "non-finite", message)."""
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
    seconds = time.perf_counter() - start
    tensors = [t for t in (result if isinstance(result, tuple) else (result,)) if t is not None]
    if not all(bool(torch.isfinite(torch.as_tensor(t)).all()) for t in tensors):
        return "non-finite", ""
    try:
        what, failure = check(name, result, model, x, options, reference)
    except Exception as error:  # noqa: BLE001 - a check that cannot run is reported
        return f"finite {seconds:.2f} s", f"check not run: {str(error).splitlines()[0][:200]}"
    if failure:
        return f"**wrong** ({what})", failure
    if what:
        return f"ok {what} {seconds:.2f} s", ""
    return f"finite {seconds:.2f} s", ""


def _read_journal(
    journal: Path, rows: dict[str, list[str]], notes: list[str], counts: Counter
) -> set[tuple[str, str]]:
    """The models a stopped run finished (from its journal), their rows and notes added."""
    done: set[tuple[str, str]] = set()
    if not journal.exists():
        return done
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill: that model runs again
            continue
        done.add((record["source"], record["name"]))
        if record["row"] is not None:
            rows.setdefault(record["source"], []).append(record["row"])
        notes += record["notes"]
        counts.update(record["counts"])
    return done


def _model_row(case: Case) -> tuple[str | None, list[str], dict[str, int]]:
    """(the model's table row or None when it cannot be built, notes, cell counts)."""
    notes, counts = [], Counter()
    torch.manual_seed(0)
    try:
        model, x = case.build()
    except Exception as error:  # noqa: BLE001 - a model the installed library cannot build
        return None, [f"- `{case.name}` ({case.source}) not built: {error}"], {}
    parameters = sum(p.numel() for p in model.parameters())
    checked = parameters <= CHECK_PARAMETERS_MAX
    reference = None
    if checked:
        # The checked methods run in float64, where their checks' 1e-6 means something.
        model64, x64 = copy.deepcopy(model).double(), _double(x)
        try:
            reference = Reference(model64, x64, case.options)
        except Exception as error:  # noqa: BLE001 - the model itself failed on the input
            notes.append(f"- `{case.name}` ({case.source}): no autograd reference: {error}")
    else:
        notes.append(
            f"- `{case.name}` ({case.source}): {parameters / 1e6:.0f}M parameters, too large "
            "for the float64 checks on this machine (24 GB): every method in float32, only "
            "lrp.cp checked (its conservation, in float32)"
        )
    cells = []
    for method in METHODS:
        if method in CHECKED and checked:
            status, message = cell(model64, x64, method, case.options, reference)
        else:
            status, message = cell(model, x, method, case.options, None)
        counts[status.split()[0].strip("*")] += 1
        cells.append(status)
        if message:
            notes.append(f"- `{case.name}` ({case.source}) / `{method}`: {message}")
        gc.collect()  # the analyzer's graph copies, before the next method's
    return f"| {case.name} | " + " | ".join(cells) + " |", notes, dict(counts)


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--size", type=int, default=64, help="image side (224 where fixed)")
    parser.add_argument("--out", default="docs/coverage.md")
    args = parser.parse_args()
    rows: dict[str, list[str]] = {}
    notes, counts = [], Counter()
    # Each finished model is appended to a journal beside --out: a run stopped (or killed
    # for memory) resumes after the models it finished; removed once the table is written.
    journal = Path(f"{args.out}.partial.jsonl")
    done = _read_journal(journal, rows, notes, counts)
    for case in tqdm(cases(args.models, args.size), desc="models", unit="model"):
        if (case.source, case.name) in done:
            continue
        row, case_notes, case_counts = _model_row(case)
        with journal.open("a") as stream:
            record = {"source": case.source, "name": case.name, "row": row}
            stream.write(json.dumps({**record, "notes": case_notes, "counts": case_counts}) + "\n")
        if row is not None:
            rows.setdefault(case.source, []).append(row)
            tqdm.write(row)
        notes += case_notes
        counts.update(case_counts)
    import timm
    import transformers

    header = ["| model | " + " | ".join(METHODS) + " |", "|" + " --- |" * (len(METHODS) + 1)]
    titles = {
        "torchvision": "torchvision classification models",
        "video": "torchvision video models",
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
            f"{transformers.__version__}): random weights, one input, CPU; the four checked "
            "methods in float64, the others in float32. torchvision: "
            f"{args.size}x{args.size} images (224 for ViT, MaxViT, Swin V2, Inception v3); timm: each model's "
            "own input size; video: 8 frames of 64x64 (S3D: 16 of 224x224); Hugging Face: "
            "each family's own classes (`AutoModelFor...`) with 2 layers of width 32, 8 tokens "
            "(32x32 images for the vision families), its default attention implementation; "
            "text models explained at their token embeddings (`attribute_to`, summed per "
            "token), encoders at their classification logits, decoders at the last token's "
            "logits. Totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".",
            "",
            (
                f"**A subset**: the models given with `--models` (`{' '.join(args.models)}`); "
                "`make coverage` runs every model."
                if args.models
                else "Every classification model of torchvision, its video models (MViT and "
                "swin3d_s/b left out for time), the timm list of issue 16, and the Hugging Face "
                "families."
            ),
            "Each cell names the check it passed: `= autograd` (gradient equals autograd's), "
            "`= x*autograd` (input x gradient), `= x*grad` (lrp.z equals input x gradient: the "
            "model is piecewise linear), `conserves` (lrp.cp on a copy with every bias, "
            "batch-norm shift, position embedding and class token zeroed sums to the logit, "
            "epsilon 1e-100, or 1e-12 where 1e-100 leaves a 0 / 0; batch norms that cannot be "
            "folded, such as DenseNet's, with "
            "`bn_layer_rule='Z'`, and one left unfolded after a linear layer it alone reads fails the "
            "check); "
            f"tolerance {TOLERANCE:g}. **wrong**: the check failed (numbers in the notes). "
            "'finite': ran with finite values and no check here (these methods are checked "
            "against iNNvestigate, Zennit, Captum and LXT on the models the tests name). "
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
    out = Path(args.out)
    existing = out.read_text() if out.exists() else ""
    if TEXT_START in existing and TEXT_END in existing:
        kept = existing[existing.index(TEXT_START) : existing.index(TEXT_END) + len(TEXT_END)]
        text = text.rstrip("\n") + "\n\n" + kept + "\n"
    write_text(out, text)
    journal.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
