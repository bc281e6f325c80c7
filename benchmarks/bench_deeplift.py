"""``python benchmarks/run.py --only deeplift``: DeepLIFT and occlusion beside Captum.

Tables measured with run.py's paired method:
- per model, ``deep_lift`` and Captum's ``DeepLift`` (its peer runs an fx copy with one module
  per call and out-of-place ReLUs, which Captum's hooks need), against forward+gradient;
- on resnet50 (``OCCLUSION_MODELS``), ``occlusion`` (16x16 windows, stride 8, 16 windows per
  pass) and Captum's ``Occlusion`` with the same ``perturbations_per_eval``,
  against the bare forward passes occlusion needs (the same batches, no bookkeeping).
"""

from __future__ import annotations

import copy
from types import ModuleType

import torch
import torchvision
from torch import fx

import innspect

# Occlusion's target names resnet50 (729 windows of 16x16, stride 8, on 224x224: about 46
# forward passes of 16 images per run); vgg16's would take four times as long.
OCCLUSION_MODELS = ("resnet50",)


def captum_peer(model: torch.nn.Module) -> torch.nn.Module:
    """An fx copy of ``model`` with one module per call and no in-place ReLU."""
    traced = fx.symbolic_trace(copy.deepcopy(model))
    seen: set[str] = set()
    for index, node in enumerate(traced.graph.nodes):
        if node.op == "call_module":
            if node.target in seen:
                name = f"{node.target.replace('.', '_')}_call{index}"
                traced.add_submodule(name, copy.deepcopy(traced.get_submodule(node.target)))
                node.target = name
            seen.add(node.target)
    traced.recompile()
    for module in traced.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return traced


def deeplift_rows(run: ModuleType, model_name: str, batch: int, size: int, repeats: int) -> list:
    from captum.attr import DeepLift

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    forward, reference = run.plain_runs(model, x)
    peer = captum_peer(model)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    analyzer = innspect.create_analyzer("deep_lift", model)
    subjects = [
        run.Subject("forward", forward, warmup=forward),
        run.Subject("innspect deep_lift", lambda: analyzer.analyze(x)),
        run.Subject(
            "Captum DeepLift",
            lambda: DeepLift(peer).attribute(x, torch.zeros_like(x), target=target),
            peer=True,
        ),
    ]
    reference_row = run.measure_paired(subjects, reference, repeats)
    rows = [subject.row() for subject in subjects]
    rows.insert(1, reference_row)
    return rows


def occlusion_rows(
    run: ModuleType, model_name: str, batch: int, size: int, repeats: int, window: int, stride: int
) -> tuple[list, int]:
    from captum.attr import Occlusion

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    per_pass = 16
    analyzer = innspect.create_analyzer(
        "occlusion",
        model,
        window_shape=(3, window, window),
        strides=(3, stride, stride),
        batch_size=per_pass,
    )
    n_windows = len(analyzer.windows(x.shape[1:]))
    with torch.no_grad():
        target = model(x).argmax(dim=1)

    def bare_forwards() -> object:
        with torch.no_grad():
            for start in range(0, n_windows, per_pass):
                model(x.repeat(min(per_pass, n_windows - start), 1, 1, 1))

    subjects = [
        run.Subject("innspect occlusion", lambda: analyzer.analyze(x)),
        run.Subject(
            "Captum Occlusion",
            lambda: Occlusion(model).attribute(
                x,
                sliding_window_shapes=(3, window, window),
                strides=(3, stride, stride),
                target=target,
                perturbations_per_eval=per_pass,
            ),
            peer=True,
        ),
    ]
    reference_row = run.measure_paired(subjects, bare_forwards, repeats)
    return [reference_row] + [subject.row() for subject in subjects], n_windows


def section(
    run: ModuleType,
    models: list[str],
    batch: int,
    size: int,
    repeats: int,
    window: int = 16,
    stride: int = 8,
) -> str:
    """The ``--only deeplift`` tables, as Markdown."""
    parts = ["## DeepLIFT and occlusion\n"]
    for model_name in models:
        print(f"{model_name} deep_lift:", flush=True)
        rows = deeplift_rows(run, model_name, batch, size, repeats)
        parts.append(run.render_model_table(model_name, batch, size, rows))
        if model_name not in OCCLUSION_MODELS:
            continue
        print(f"{model_name} occlusion:", flush=True)
        rows, n_windows = occlusion_rows(run, model_name, 1, size, repeats, window, stride)
        table = run.render_model_table(model_name, 1, size, rows)
        # The reference of this table is the bare forward passes, not forward+gradient.
        table = table.replace("### ", f"### occlusion {window}x{window} stride {stride}, ", 1)
        table = table.replace("ratio to fwd+grad", "ratio to bare forwards")
        table = table.replace(
            "forward+gradient (reference)", f"bare forward passes ({n_windows} windows)"
        )
        parts.append(table)
    return "\n".join(parts)
