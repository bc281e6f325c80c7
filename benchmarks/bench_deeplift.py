"""``python benchmarks/run.py --only deeplift``: DeepLIFT and occlusion beside Captum.

Tables measured with run.py's paired method:
- per model, ``deep_lift`` and Captum's ``DeepLift`` (its peer runs an fx copy with one module
  per call and out-of-place ReLUs, which Captum's hooks need), against forward+gradient;
- on resnet50 (``OCCLUSION_MODELS``), ``occlusion`` (16x16 windows, stride 8, 16 windows per
  pass) and Captum's ``Occlusion`` with the same ``perturbations_per_eval``,
  against the bare forward passes occlusion needs (the same batches, no bookkeeping).
  innspect's default (float32) passes fold batch norms and run channels-last on CPU, so the
  table also has innspect with ``exact=True`` (the model's own operations and layout),
  Captum given a channels-last input, and the bare passes on a channels-last batch.
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
# The occlusion table's rows, each tool in both layouts.
OURS, OURS_EXACT = "innspect occlusion (default: folded, channels-last)", "innspect, exact=True"
CAPTUM, CAPTUM_CHANNELS_LAST = "Captum Occlusion", "Captum Occlusion, channels-last input"
BARE_CHANNELS_LAST = "bare forward passes, channels-last"


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
    options = {
        "window_shape": (3, window, window),
        "strides": (3, stride, stride),
        "batch_size": per_pass,
    }
    analyzer = innspect.create_analyzer("occlusion", model, **options)
    exact = innspect.create_analyzer("occlusion", model, exact=True, **options)
    n_windows = len(analyzer.windows(x.shape[1:]))
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    channels_last = x.contiguous(memory_format=torch.channels_last)

    def bare_forwards(layout: torch.memory_format = torch.contiguous_format) -> object:
        with torch.no_grad():
            for start in range(0, n_windows, per_pass):
                batch = x.repeat(min(per_pass, n_windows - start), 1, 1, 1)
                model(batch.contiguous(memory_format=layout))

    def captum(inputs: torch.Tensor) -> object:
        return Occlusion(model).attribute(
            inputs,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            target=target,
            perturbations_per_eval=per_pass,
        )

    subjects = [
        run.Subject(OURS, lambda: analyzer.analyze(x)),
        run.Subject(CAPTUM, lambda: captum(x), peer=True),
        run.Subject(BARE_CHANNELS_LAST, lambda: bare_forwards(torch.channels_last)),
        run.Subject(OURS_EXACT, lambda: exact.analyze(x)),
        run.Subject(CAPTUM_CHANNELS_LAST, lambda: captum(channels_last), peer=True),
    ]
    reference_row = run.measure_paired(subjects, bare_forwards, repeats)
    return [reference_row] + [subject.row() for subject in subjects], n_windows


def occlusion_summary(rows: list) -> str:
    """The comparisons the occlusion table implies, each tool in the same layout."""
    ratio = {row.name: row.ratio for row in rows if row.ratio is not None and not row.note}
    pairs = [
        ("innspect / Captum, each by default", OURS, CAPTUM),
        ("innspect's default / Captum on a channels-last input", OURS, CAPTUM_CHANNELS_LAST),
        ("innspect exact=True / Captum (the same operations)", OURS_EXACT, CAPTUM),
        ("innspect's default / the bare channels-last passes", OURS, BARE_CHANNELS_LAST),
    ]
    found = [
        f"{label}: {ratio[ours] / ratio[theirs]:.2f}"
        for label, ours, theirs in pairs
        if ours in ratio and theirs in ratio
    ]
    return "Ratios of the paired ratios above: " + "; ".join(found) + "."


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
        parts.append(table + "\n" + occlusion_summary(rows) + "\n")
    return "\n".join(parts)
