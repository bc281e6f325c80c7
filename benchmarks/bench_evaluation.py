"""``python benchmarks/run.py --only evaluation``: innspect.evaluation beside Quantus 0.6.0.

Per model (a small CNN on 1x28x28 digits-sized inputs, where Quantus's per-step overhead
shows, and resnet50 with random weights), per metric of the catalogue, in one process:
innspect's time (median of ``repeats`` runs after a warm-up), Quantus's time with the same
settings (one run: it is the slow side), the *floor*, peak RSS of the first run of each, and
the largest difference between the two implementations' scores (Quantus given the same
random draws where the metric draws any; "by design" where docs/evaluation.md says why the
values differ).

The floor is the model passes innspect's run made, counted (rows of the input layer, split
into plain forward rows and rows explained with gradients) and replayed bare: batched
``model(x)`` calls and gradient explanations of the same number of rows (a fresh analyzer
per randomised model for MPRT). So ``x floor`` measures what innspect adds around the
passes; whether it runs more passes than a metric needs shows in the ``rows`` column (and
against Quantus, which runs its own). Metrics that run no model (localisation,
complexity) have no floor. Floors and innspect run the same rows per pass
(``batch_size``). The randomisation metrics, IROF and ROAD run on the small CNN only (on
resnet50: 161 layers of 16 explanations on each side; 1,600 superpixel passes; a linear
system per image and percentage, and Quantus runs neither of the last two on 3 channels).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

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
    rows: int = 0  # forward rows innspect's run made (counted)
    explained_rows: int = 0  # rows it explained with gradients (counted)
    models: int = 1  # MPRT: randomised models the explanations run on
    inject: Callable[[], dict] | None = None  # our injected draws, reproducing Quantus's
    seed_numpy: int | None = None  # np.random.seed before Quantus runs
    field: str = "scores"
    quantus_field: Callable[[Any], np.ndarray] | None = None
    quantus_kwargs: dict | None = None  # Quantus's extra call arguments (s_batch...)
    by_design: str = ""  # why the values differ from Quantus's (docs/evaluation.md)
    quantus_explain: bool = False  # Quantus's SmoothMPRT explains with quantus.explain


def _fc_indices(n: int, features: int, runs: int, size: int, seed: int) -> torch.Tensor:
    np.random.seed(seed)  # noqa: NPY002 (Quantus draws from the global generator)
    indices = np.zeros((n, runs, size), dtype=np.int64)
    for run in range(runs):
        for i in range(n):
            indices[i, run] = np.random.choice(features, size, replace=False)  # noqa: NPY002
        np.random.uniform(size=n)  # noqa: NPY002
    return torch.as_tensor(indices)


def _draws(kind: str, first: float, second: float, steps: int, shape: tuple, seed: int):
    """Quantus's robustness noise: per step one ``np.random.<kind>(first, second)`` array
    of (N, features) from the global generator seeded with ``seed``."""
    np.random.seed(seed)  # noqa: NPY002
    n, features = shape[0], math.prod(shape[1:])
    draw = getattr(np.random, kind)
    draws = [draw(first, second, size=(n, features)) for _ in range(steps)]
    return torch.as_tensor(np.stack(draws).reshape(steps, *shape), dtype=torch.float32)


def _baseline_values(n: int, steps: int, repeats: int, seed: int) -> torch.Tensor:
    """Quantus's MonotonicityCorrelation draws: one uniform value per sample, group, repeat."""
    np.random.seed(seed)  # noqa: NPY002
    values = np.zeros((n, steps, repeats))
    for step in range(steps):
        for k in range(repeats):
            values[:, step, k] = np.random.uniform(size=n)  # noqa: NPY002
    return torch.as_tensor(values)


def _off_classes(y: torch.Tensor, classes: int, seed: int) -> torch.Tensor:
    """Quantus's RandomLogit draw: an index among the classes other than y, in order."""
    np.random.seed(seed)  # noqa: NPY002
    index = np.random.randint(0, classes - 1, len(y))  # noqa: NPY002
    return torch.as_tensor(np.where(index < y.numpy(), index, index + 1))


def _smooth_noise(layers: int, copies: int, shape: tuple, seed: int) -> torch.Tensor:
    """Quantus's SmoothMPRT draws: ``copies - 1`` standard normal inputs for the unchanged
    model, then per layer (ours takes the layers')."""
    np.random.seed(seed)  # noqa: NPY002
    draws = np.stack(
        [np.stack([np.random.randn(*shape) for _ in range(copies - 1)]) for _ in range(layers + 1)]  # noqa: NPY002
    )
    return torch.as_tensor(draws[1:])


def cases(
    model_name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, quantus: ModuleType,
    batch_size: int,
) -> list[Case]:  # fmt: skip
    n, c, h, w = x.shape
    small = model_name == "small_cnn"
    features = c * h * w
    # The small CNN at Quantus's defaults where they are affordable (features_in_step=1:
    # 784 steps, where its per-step round trips show). resnet50 costs ~0.07 s a row forward
    # and ~0.2 s explained on this CPU, so each metric gets about 6 steps there (Quantus
    # needs a step's features to tile H*W).
    k = 1 if small else h * w // 2
    patch = 4 if small else 112
    patches = math.ceil(h / patch) * math.ceil(w / patch)
    regions = min(100, patches) if small else 6
    sel_patch = h // 4 if small else 112
    runs, subset = (100, 224) if small else (5, 224)
    sens = 50 if small else 2
    repeats = 5 if small else 1
    per_sample = {"normalise_axes": (1, 2, 3)}
    q = {"normalise_func_kwargs": per_sample, "disable_warnings": True, "return_aggregate": False}
    plain = {"disable_warnings": True, "return_aggregate": False}
    options = {"batch_size": batch_size}
    mask = torch.zeros(n, 1, h, w)
    mask[:, :, h // 4 : h // 2 + h // 8, w // 3 : 3 * w // 4] = 1
    localised = {"mask": mask}
    s_batch = {"s_batch": mask.numpy()}
    mosaic = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]]).repeat(n // 2 + 1, 1)[:n]
    shifts = 28 if small else 2  # Quantus's steps must stay within the width
    infidelity_samples = 10 if small else 2
    representation = {} if small else {"layer_names": ["layer4.2"]}
    coarse = 49 if small else k  # 16 and 6 steps for the metrics that repeat them
    nr_runs = 10 if small else 1
    listed = [
        # -- faithfulness --------------------------------------------------------------
        Case(
            "pixel_flipping",
            lambda: ev.PixelFlipping(features_in_step=k, **options),
            lambda: quantus.PixelFlipping(features_in_step=k, **q),
            field="curves",
        ),
        Case(
            "region_perturbation",
            lambda: ev.RegionPerturbation(patch_size=patch, regions_evaluation=regions, **options),
            lambda: quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, **q),
            field="curves",
        ),
        Case(
            "selectivity",
            lambda: ev.Selectivity(patch_size=sel_patch, **options),
            lambda: quantus.Selectivity(patch_size=sel_patch, **q),
            field="curves",
        ),
        Case(
            "faithfulness_correlation",
            lambda: ev.FaithfulnessCorrelation(nr_runs=runs, subset_size=subset, **options),
            lambda: quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=subset, **q),
            inject=lambda: {"indices": _fc_indices(n, features, runs, subset, 7)},
            seed_numpy=7,
        ),
        Case(
            "faithfulness_estimate",
            lambda: ev.FaithfulnessEstimate(features_in_step=k, **options),
            lambda: quantus.FaithfulnessEstimate(features_in_step=k, **q),
        ),
        Case(
            "infidelity",
            lambda: ev.Infidelity(
                perturb_patch_sizes=[patch],
                n_perturb_samples=infidelity_samples,
                **options,
            ),
            lambda: quantus.Infidelity(
                perturb_patch_sizes=[patch],
                n_perturb_samples=infidelity_samples,
                **q,
            ),
        ),
        Case(
            "irof",
            lambda: ev.IROF(perturb_baseline="black", **options),
            lambda: quantus.IROF(perturb_baseline="black", **q),
            by_design="" if c == 1 else "Quantus fails on 3 channels (docs/evaluation.md)",
        ),
        Case(
            "monotonicity",
            lambda: ev.Monotonicity(features_in_step=k, **options),
            lambda: quantus.Monotonicity(features_in_step=k, **q),
            by_design="Quantus never adds the input's features (docs/evaluation.md)",
        ),
        Case(
            "monotonicity_correlation",
            lambda: ev.MonotonicityCorrelation(nr_samples=repeats, features_in_step=k, **options),
            lambda: quantus.MonotonicityCorrelation(nr_samples=repeats, features_in_step=k, **q),
            inject=lambda: {"baseline_values": _baseline_values(n, features // k, repeats, 3)},
            seed_numpy=3,
        ),
        Case(
            "road",
            lambda: ev.ROAD(noise=0.0, **options),
            lambda: quantus.ROAD(noise=0.0, **q),
            field="curves",
            quantus_field=lambda out: np.array(list(out.values())),
            by_design="" if c == 1 else "Quantus fails on 3 channels (docs/evaluation.md)",
        ),
        Case(
            "sensitivity_n",
            lambda: ev.SensitivityN(features_in_step=coarse, nr_runs=nr_runs, **options),
            lambda: quantus.SensitivityN(features_in_step=coarse, **q),
            by_design="the paper's random subsets; Quantus's cumulative removal differs",
        ),
        Case(  # Quantus normalises by the batch's maximum: both unnormalised here
            "sufficiency",
            lambda: ev.Sufficiency(normalise=False, **options),
            lambda: quantus.Sufficiency(normalise=False, **plain),
        ),
        # -- robustness ----------------------------------------------------------------
        Case(
            "max_sensitivity",
            lambda: ev.MaxSensitivity("gradient", nr_samples=sens, **options),
            lambda: quantus.MaxSensitivity(nr_samples=sens, **q),
            inject=lambda: {"noise": _draws("uniform", -0.2, 0.2, sens, tuple(x.shape), 3)},
            seed_numpy=3,
        ),
        Case(
            "avg_sensitivity",
            lambda: ev.AvgSensitivity("gradient", nr_samples=sens, **options),
            lambda: quantus.AvgSensitivity(nr_samples=sens, **q),
            inject=lambda: {"noise": _draws("uniform", -0.2, 0.2, sens, tuple(x.shape), 3)},
            seed_numpy=3,
        ),
        Case(
            "local_lipschitz_estimate",
            lambda: ev.LocalLipschitzEstimate("gradient", nr_samples=sens, **options),
            lambda: quantus.LocalLipschitzEstimate(nr_samples=sens, **q),
            inject=lambda: {"noise": _draws("normal", 0.0, 0.1, sens, tuple(x.shape), 3)},
            seed_numpy=3,
        ),
        Case(
            "continuity",
            lambda: ev.Continuity("gradient", nr_steps=shifts, **options),
            lambda: quantus.Continuity(nr_steps=shifts, **q),
        ),
        Case(
            "consistency",
            lambda: ev.Consistency(
                discretise_func="first_n_sign", abs=False, normalise=False, **options
            ),
            lambda: quantus.Consistency(abs=False, normalise=False, **plain),
        ),
        Case(
            "relative_input_stability",
            lambda: ev.RelativeInputStability("gradient", nr_samples=sens, **options),
            lambda: quantus.RelativeInputStability(nr_samples=sens, **q),
            inject=lambda: {"noise": _draws("uniform", 0.02, 0.2, sens, tuple(x.shape), 3)},
            seed_numpy=3,
        ),
        Case(
            "relative_output_stability",
            lambda: ev.RelativeOutputStability("gradient", nr_samples=sens, **options),
            lambda: quantus.RelativeOutputStability(nr_samples=sens, **q),
            inject=lambda: {"noise": _draws("uniform", 0.02, 0.2, sens, tuple(x.shape), 3)},
            seed_numpy=3,
        ),
        Case(
            "relative_representation_stability",
            lambda: ev.RelativeRepresentationStability(
                "gradient", nr_samples=sens, **representation, **options
            ),
            lambda: quantus.RelativeRepresentationStability(nr_samples=sens, **representation, **q),
            inject=lambda: {"noise": _draws("uniform", 0.02, 0.2, sens, tuple(x.shape), 3)},
            seed_numpy=3,
        ),
        # -- localisation (a mask per sample) and complexity: no model pass ------------
        *[
            Case(
                name,
                lambda ours=ours, kwargs=kwargs: ours(**kwargs),
                lambda theirs=theirs, kwargs=kwargs: theirs(**kwargs, **q),
                inject=lambda: localised,
                quantus_kwargs=s_batch,
            )
            for name, ours, theirs, kwargs in (
                ("pointing_game", ev.PointingGame, quantus.PointingGame, {}),
                (
                    "attribution_localisation",
                    ev.AttributionLocalisation,
                    quantus.AttributionLocalisation,
                    {},
                ),
                (
                    "top_k_intersection",
                    ev.TopKIntersection,
                    quantus.TopKIntersection,
                    {"k": h * w // 8},
                ),
                (
                    "relevance_rank_accuracy",
                    ev.RelevanceRankAccuracy,
                    quantus.RelevanceRankAccuracy,
                    {},
                ),
                (
                    "relevance_mass_accuracy",
                    ev.RelevanceMassAccuracy,
                    quantus.RelevanceMassAccuracy,
                    {},
                ),
                ("auc", ev.AUC, quantus.AUC, {}),
            )
        ],
        Case(
            "focus",
            lambda: ev.Focus(),
            lambda: quantus.Focus(**q),
            inject=lambda: {"mosaic_labels": mosaic},
            quantus_kwargs={"custom_batch": mosaic.numpy()},
        ),
        Case("sparseness", lambda: ev.Sparseness(), lambda: quantus.Sparseness(**q)),
        Case("complexity", lambda: ev.Complexity(), lambda: quantus.Complexity(**q)),
        Case(
            "effective_complexity",
            lambda: ev.EffectiveComplexity(eps=0.3),
            lambda: quantus.EffectiveComplexity(eps=0.3, **q),
        ),
        # -- axiomatic -----------------------------------------------------------------
        Case(
            "completeness",
            lambda: ev.Completeness(normalise=True, rtol=0, atol=0, **options),
            lambda: quantus.Completeness(normalise=True, **q),
        ),
        Case(
            "non_sensitivity",
            lambda: ev.NonSensitivity(eps=1e-3, features_in_step=k, **options),
            lambda: quantus.NonSensitivity(eps=1e-3, features_in_step=k, **q),
            by_design="" if k == 1 else "Quantus fails unless features_in_step=1",
        ),
        Case(
            "input_invariance",
            lambda: ev.InputInvariance("gradient", **options),
            lambda: quantus.InputInvariance(**plain),
            by_design="Quantus leaves some features unshifted (docs/evaluation.md)",
        ),
    ]
    if not small:
        # IROF (~100 superpixels a 224x224 image: 1,600 passes) and ROAD (a sparse linear
        # system per image and percentage) cost minutes a run on resnet50, and Quantus runs
        # neither on 3 channels: the small CNN compares them.
        listed = [case for case in listed if case.name not in ("irof", "road")]
    if small:
        layers = len(ev.randomisation.randomisable_layers(model))
        copies = 4
        listed += [
            Case(
                "mprt",
                lambda: ev.MPRT("gradient", **options),
                lambda: quantus.MPRT(**q),
                models=layers,
                field="curves",
                quantus_field=lambda out: np.array([out[k] for k in out if k != "original"]).T,
            ),
            Case(
                "smooth_mprt",
                lambda: ev.SmoothMPRT("gradient", nr_samples=copies, **options),
                lambda: quantus.SmoothMPRT(nr_samples=copies, **q),
                models=layers,
                field="curves",
                quantus_field=lambda out: np.array([out[k] for k in out if k != "original"]).T,
                inject=lambda: {"noise": _smooth_noise(layers, copies, tuple(x.shape), 5)},
                seed_numpy=5,
                quantus_explain=True,
            ),
            Case(
                "efficient_mprt",
                lambda: ev.EfficientMPRT("gradient", **options),
                lambda: quantus.EfficientMPRT(**plain),
            ),
            Case(
                "random_logit",
                lambda: ev.RandomLogit("gradient", num_classes=10, **options),
                lambda: quantus.RandomLogit(num_classes=10, **q),
                inject=lambda: {"off_classes": _off_classes(y, 10, 42)},
            ),
        ]
    return listed


def _gradient_numpy(model, inputs, targets, **kwargs):
    analyzer = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")
    inputs = torch.as_tensor(inputs, dtype=torch.float32)  # SmoothMPRT adds float64 noise
    return analyzer.analyze(inputs, neuron_selection=torch.as_tensor(targets)).numpy()


class PassCounter(TorchFunctionMode):
    """Counts the rows that reach the model's input layer (a convolution of the image's
    channels), split by whether gradients were recorded (explanations) or not."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.forward_rows = 0
        self.gradient_rows = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        # plain tensors only: fx proxies and fake tensors (a graph capture) are not passes
        if func is F.conv2d and type(first) is torch.Tensor and first.dim() == 4:
            if first.shape[1] == self.channels:
                if torch.is_grad_enabled():
                    self.gradient_rows += args[0].shape[0]
                else:
                    self.forward_rows += args[0].shape[0]
        return func(*args, **kwargs)


def floor_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: Case, batch_size: int):
    """The bare passes of a case: ``rows`` forward passes and ``explained_rows`` gradient
    explanations, in chunks of ``batch_size`` rows."""
    n = x.shape[0]
    analyzer = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")
    per_model = max(1, math.ceil(case.explained_rows / case.models))

    def run() -> None:
        for start in range(0, case.rows, batch_size):
            index = torch.arange(start, min(start + batch_size, case.rows)) % n
            with torch.no_grad():
                model(x[index])
        for first in range(0, case.explained_rows, per_model):
            if case.models > 1:  # MPRT: a fresh analyzer per randomised model
                explain = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")
            else:
                explain = analyzer
            last = min(first + per_model, case.explained_rows)
            for start in range(first, last, batch_size):
                index = torch.arange(start, min(start + batch_size, last)) % n
                explain.analyze(x[index], neuron_selection=y[index])

    return run


def section(
    run: ModuleType,
    batch: int,
    size: int,
    repeats: int,
    models: list[str] | None = None,
    metrics: list[str] | None = None,
) -> str:
    """The table; ``metrics``: only these rows (names as in the table), to rerun one alone."""
    import quantus

    if not hasattr(np, "trapz"):  # Quantus calls np.trapz, gone in numpy 2
        np.trapz = np.trapezoid  # noqa: NPY201
    warnings.filterwarnings("ignore", module="quantus")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = models or ["small_cnn", "resnet50"]
    lines = [
        "## Evaluation metrics: innspect beside Quantus 0.6.0 (CPU, float32)\n",
        "Seconds: innspect median of the timed runs; Quantus one run; floor: the model passes "
        "innspect's run made (rows: forward + explained), replayed bare and timed alone; none "
        "where the metric runs no model. Memory: peak RSS increase of a first run. Max diff: "
        "largest |innspect - Quantus| over the scores (or curves), Quantus given the same "
        "random draws; 'by design' where docs/evaluation.md says why they differ.\n",
        "| model | metric | rows | innspect s | floor s | x floor | Quantus s "
        "| Quantus / innspect | innspect MiB | Quantus MiB | max diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model_name in models:
        if model_name == "small_cnn":
            model, shape, rows_per_pass = small_cnn(), (batch, 1, 28, 28), 1024
        else:
            torch.manual_seed(0)
            model = getattr(torchvision.models, model_name)(weights=None).eval()
            # the batch per pass, as Quantus: the same activations held (memory compared)
            shape, rows_per_pass = (batch, 3, size, size), batch
        generator = torch.Generator().manual_seed(1)
        x = torch.rand(shape, generator=generator)
        with torch.no_grad():
            y = model(x).argmax(dim=1)
        a = innspect.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(
            x, neuron_selection=y
        )
        for case in cases(model_name, model, x, y, quantus, rows_per_pass):
            if metrics and case.name not in metrics:
                continue
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
    """The table cells of one case: rows, times, ratios, memory, the largest difference."""
    x, y, a = batch
    metric = case.ours()
    inject = case.inject() if case.inject else {}
    if metric.family in ("localisation", "complexity"):
        a = a.sum(dim=1, keepdim=True)  # one map per image, as the masks

    def ours() -> Any:
        return metric(model, x, y, a, **inject)

    result = ours()  # warm-up (captures, allocations)
    counter = PassCounter(x.shape[1])
    times, memory = [], 0
    for i in range(repeats):
        # the first timed run also counts its passes (a few microseconds per torch call)
        with counter if i == 0 else contextlib.nullcontext():
            seconds, used = run.timed(ours, i == 0)
        times.append(seconds)
        memory = used or memory
    case.rows, case.explained_rows = counter.forward_rows, counter.gradient_rows
    seconds = statistics.median(times)
    if case.rows or case.explained_rows:
        floor = floor_run(model, x, y, case, rows_per_pass)
        if case.explained_rows:
            floor()  # the analyzers' captures
        floor_seconds = statistics.median(run.timed(floor, False)[0] for _ in range(repeats))
        floor_cells = [f"{floor_seconds:.3f}", f"{seconds / floor_seconds:.2f}"]
    else:
        floor_cells = ["none", ""]
    theirs_metric = case.theirs()
    holder: dict[str, Any] = {}

    def theirs() -> None:
        holder["out"] = theirs_metric(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
            device="cpu", batch_size=x.shape[0], explain_func=_gradient_numpy,
            **(case.quantus_kwargs or {}),
        )  # fmt: skip

    if case.seed_numpy is not None:
        np.random.seed(case.seed_numpy)  # noqa: NPY002 (Quantus draws from the global generator)
    import quantus

    explain = quantus.explain
    if case.quantus_explain:  # SmoothMPRT calls quantus.explain, not explain_func
        quantus.explain = _gradient_numpy
    try:
        quantus_seconds, quantus_memory = run.timed(theirs, True)
        out = holder["out"]
        expected = case.quantus_field(out) if case.quantus_field else np.asarray(out, float)
        if case.by_design:
            diff = f"by design: {case.by_design}"
        elif case.name == "irof":  # Quantus pads the curves of a batch: compared in the tests
            diff = "per sample: tests"
        else:
            values = getattr(result, case.field).numpy()
            if case.name == "road":  # Quantus returns the accuracy per percentage
                values = values.mean(axis=0)
            gap = np.abs(values - expected)
            diff = f"{np.nanmax(gap):.1e}"
            if np.nanmax(gap) > 1e-5:  # large values (a ratio of small sums): relative too
                relative = np.nanmax(gap / np.maximum(np.abs(expected), 1e-12))
                diff += f" (relative {relative:.1e})"
    except Exception as error:  # noqa: BLE001 - a failing peer is reported
        quantus_seconds, quantus_memory = math.nan, 0
        diff = f"Quantus failed: {type(error).__name__}"
        if case.by_design:
            diff += f" ({case.by_design})"
    finally:
        quantus.explain = explain
    rows = f"{case.rows}+{case.explained_rows}" if case.explained_rows else f"{case.rows}"
    return [
        rows,
        f"{seconds:.3f}",
        *floor_cells,
        f"{quantus_seconds:.3f}",
        f"{quantus_seconds / seconds:.1f}",
        f"{memory / 2**20:.0f}",
        f"{quantus_memory / 2**20:.0f}",
        diff,
    ]
