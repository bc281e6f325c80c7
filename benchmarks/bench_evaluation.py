"""``python benchmarks/run.py --only evaluation``: innspect.evaluation beside Quantus 0.6.0.

Per model (a small CNN on 1x28x28 digits-sized inputs, where Quantus's per-step overhead
shows, and resnet50 with random weights), per metric, in one process: innspect's time
(median of ``repeats`` runs after a warm-up), Quantus's time with the same settings (one
run: it is the slow side), the *floor* (the bare batched forward passes the metric needs,
and for re-explaining metrics the explanations, timed alone), peak RSS of the first run of
each, and the largest difference between the two implementations' scores (Quantus given the
same random draws where the metric draws any). Floors and innspect run the same rows per
pass (``batch_size``).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

import innspect
from innspect import evaluation as ev


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    ).eval()


@dataclass
class Case:
    name: str
    ours: Callable[[], Any]  # the metric object
    theirs: Callable[[], Any]  # the Quantus metric object
    rows: int  # forward passes (rows) the metric needs
    explained_rows: int = 0  # rows re-explained (robustness, MPRT)
    models: int = 1  # MPRT: randomised models the explanations run on
    inject: Callable[[], dict] | None = None  # our injected draws, reproducing Quantus's
    seed_numpy: int | None = None  # np.random.seed before Quantus runs
    field: str = "scores"
    quantus_field: Callable[[Any], np.ndarray] | None = None
    quantus_kwargs: dict | None = None


def _fc_indices(n: int, features: int, runs: int, size: int, seed: int) -> torch.Tensor:
    np.random.seed(seed)  # noqa: NPY002 (Quantus draws from the global generator)
    indices = np.zeros((n, runs, size), dtype=np.int64)
    for run in range(runs):
        for i in range(n):
            indices[i, run] = np.random.choice(features, size, replace=False)  # noqa: NPY002
        np.random.uniform(size=n)  # noqa: NPY002
    return torch.as_tensor(indices)


def _noise(steps: int, shape: tuple, bound: float, seed: int) -> torch.Tensor:
    np.random.seed(seed)  # noqa: NPY002
    n, features = shape[0], math.prod(shape[1:])
    draws = [np.random.uniform(-bound, bound, size=(n, features)) for _ in range(steps)]  # noqa: NPY002
    return torch.as_tensor(np.stack(draws).reshape(steps, *shape), dtype=torch.float32)


def cases(model_name: str, x: torch.Tensor, quantus: ModuleType, batch_size: int) -> list[Case]:
    n, c, h, w = x.shape
    features = c * h * w
    k = h * w // 16  # 16 steps per channel; Quantus needs k to divide H*W
    pf_steps = features // k
    patch = 4 if h <= 32 else 8
    patches = math.ceil(h / patch) * math.ceil(w / patch)
    regions = min(100, patches)
    sel_patch = h // 4
    runs, subset = (100, 224) if model_name == "small_cnn" else (20, 224)
    sens = 50 if model_name == "small_cnn" else 10
    per_sample = {"normalise_axes": (1, 2, 3)}
    q = {"normalise_func_kwargs": per_sample, "disable_warnings": True, "return_aggregate": False}
    options = {"batch_size": batch_size}
    listed = [
        Case(
            "pixel_flipping",
            lambda: ev.PixelFlipping(features_in_step=k, **options),
            lambda: quantus.PixelFlipping(features_in_step=k, **q),
            n * pf_steps,
            field="curves",
        ),
        Case(
            "region_perturbation",
            lambda: ev.RegionPerturbation(patch_size=patch, regions_evaluation=regions, **options),
            lambda: quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, **q),
            n * (regions + 1),
            field="curves",
        ),
        Case(
            "selectivity",
            lambda: ev.Selectivity(patch_size=sel_patch, **options),
            lambda: quantus.Selectivity(patch_size=sel_patch, **q),
            n * 16,
            field="curves",
        ),
        Case(
            "faithfulness_correlation",
            lambda: ev.FaithfulnessCorrelation(nr_runs=runs, subset_size=subset, **options),
            lambda: quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=subset, **q),
            n * (runs + 1),
            inject=lambda: {"indices": _fc_indices(n, features, runs, subset, 7)},
            seed_numpy=7,
        ),
        Case(
            "max_sensitivity",
            lambda: ev.MaxSensitivity("gradient", nr_samples=sens, **options),
            lambda: quantus.MaxSensitivity(nr_samples=sens, **q),
            n * (sens + 1),
            explained_rows=n * sens,
            inject=lambda: {"noise": _noise(sens, tuple(x.shape), 0.2, 3)},
            seed_numpy=3,
        ),
    ]
    if c == 1:  # Quantus's IROF and ROAD run on one-channel images only
        listed.append(
            Case(
                "road",
                lambda: ev.ROAD(noise=0.0, **options),
                lambda: quantus.ROAD(noise=0.0, **q),
                n * 50,
                field="curves",
                quantus_field=lambda out: np.array(list(out.values())),
            )
        )
        listed.append(
            Case(
                "irof",
                lambda: ev.IROF(perturb_baseline="black", **options),
                lambda: quantus.IROF(perturb_baseline="black", **q),
                0,  # set after the superpixels are known
            )
        )
    if model_name == "small_cnn":
        layers = len(ev.randomisation.randomisable_layers(small_cnn()))
        listed.append(
            Case(
                "mprt",
                lambda: ev.MPRT("gradient", **options),
                lambda: quantus.MPRT(**q),
                0,
                explained_rows=n * layers,
                models=layers,
                field="curves",
                quantus_field=lambda out: np.array([out[k] for k in out if k != "original"]).T,
            )
        )
    return listed


def _gradient_numpy(model, inputs, targets, **kwargs):
    analyzer = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")
    return analyzer.analyze(
        torch.as_tensor(inputs), neuron_selection=torch.as_tensor(targets)
    ).numpy()


def floor_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: Case, batch_size: int):
    """The bare passes of a case: ``rows`` forward passes and ``explained_rows`` gradient
    explanations, in chunks of ``batch_size`` rows."""
    n = x.shape[0]
    analyzer = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")

    def run() -> None:
        for start in range(0, case.rows, batch_size):
            index = torch.arange(start, min(start + batch_size, case.rows)) % n
            with torch.no_grad():
                model(x[index])
        for start in range(0, case.explained_rows, batch_size):
            index = torch.arange(start, min(start + batch_size, case.explained_rows)) % n
            if case.models > 1:  # MPRT: a fresh analyzer per randomised model
                innspect.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(
                    x[index], neuron_selection=y[index]
                )
            else:
                analyzer.analyze(x[index], neuron_selection=y[index])

    return run


def section(
    run: ModuleType, batch: int, size: int, repeats: int, models: list[str] | None = None
) -> str:
    import quantus

    if not hasattr(np, "trapz"):  # Quantus calls np.trapz, gone in numpy 2
        np.trapz = np.trapezoid  # noqa: NPY201
    warnings.filterwarnings("ignore", module="quantus")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = models or ["small_cnn", "resnet50"]
    lines = [
        "## Evaluation metrics: innspect beside Quantus 0.6.0 (CPU, float32)\n",
        "Seconds: innspect median of the timed runs; Quantus one run; floor: the bare batched "
        "forward passes (and explanations) the metric needs, timed alone. Memory: peak RSS "
        "increase of a first run. Max diff: largest |innspect - Quantus| over the scores (or "
        "curves), Quantus given the same random draws.\n",
        "| model | metric | innspect s | floor s | x floor | Quantus s | Quantus / innspect "
        "| innspect MiB | Quantus MiB | max diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model_name in models:
        if model_name == "small_cnn":
            model, shape, rows_per_pass = small_cnn(), (batch, 1, 28, 28), 1024
        else:
            torch.manual_seed(0)
            model = getattr(torchvision.models, model_name)(weights=None).eval()
            shape, rows_per_pass = (batch, 3, size, size), 64
        generator = torch.Generator().manual_seed(1)
        x = torch.rand(shape, generator=generator)
        with torch.no_grad():
            y = model(x).argmax(dim=1)
        a = innspect.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(
            x, neuron_selection=y
        )
        for case in cases(model_name, x, quantus, rows_per_pass):
            if case.name == "irof":
                segments = ev.faithfulness.superpixels(x)
                case.rows = int(sum(int(s.max()) + 1 for s in segments)) + batch
            print(f"  {model_name} {case.name}", flush=True)
            cells = measure(run, model, (x, y, a), case, rows_per_pass, repeats)
            lines.append(f"| {model_name} | {case.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def measure(
    run: ModuleType,
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    case: Case,
    rows_per_pass: int,
    repeats: int,
) -> list[str]:
    """The table cells of one case: times, ratios, memory, the largest difference."""
    x, y, a = batch
    metric = case.ours()
    inject = case.inject() if case.inject else {}

    def ours() -> Any:
        return metric(model, x, y, a, **inject)

    result = ours()  # warm-up (captures, allocations)
    times, memory = [], 0
    for i in range(repeats):
        seconds, used = run.timed(ours, i == 0)
        times.append(seconds)
        memory = used or memory
    floor = floor_run(model, x, y, case, rows_per_pass)
    floor()
    floor_seconds = statistics.median(run.timed(floor, False)[0] for _ in range(repeats))
    theirs_metric = case.theirs()
    holder: dict[str, Any] = {}

    def theirs() -> None:
        holder["out"] = theirs_metric(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
            device="cpu", batch_size=x.shape[0], explain_func=_gradient_numpy,
        )  # fmt: skip

    if case.seed_numpy is not None:
        np.random.seed(case.seed_numpy)  # noqa: NPY002 (Quantus draws from the global generator)
    try:
        quantus_seconds, quantus_memory = run.timed(theirs, True)
        out = holder["out"]
        expected = case.quantus_field(out) if case.quantus_field else np.asarray(out, float)
        if case.name == "irof":  # Quantus pads the curves of a batch: compared in the tests
            diff = "per sample: tests"
        else:
            ours = getattr(result, case.field).numpy()
            if case.name == "road":  # Quantus returns the accuracy per percentage
                ours = ours.mean(axis=0)
            diff = f"{np.nanmax(np.abs(ours - expected)):.1e}"
    except Exception as error:  # noqa: BLE001 - a failing peer is reported
        quantus_seconds, quantus_memory = math.nan, 0
        diff = f"Quantus failed: {type(error).__name__}"
    seconds = statistics.median(times)
    return [
        f"{seconds:.3f}",
        f"{floor_seconds:.3f}",
        f"{seconds / floor_seconds:.2f}",
        f"{quantus_seconds:.3f}",
        f"{quantus_seconds / seconds:.1f}",
        f"{memory / 2**20:.0f}",
        f"{quantus_memory / 2**20:.0f}",
        diff,
    ]
