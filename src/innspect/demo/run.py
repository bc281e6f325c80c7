"""The built-in demo: train a digits CNN, explain it with every applicable analyzer, report.

``run_demo(out_dir)`` writes analysis_grid.png, perturbation.png, evaluation_ranks.png,
results.csv, results.json and index.html to ``out_dir`` (each atomically) and returns the
results it wrote.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from innspect.analyzers.families import FAMILIES, grouped, title_of
from innspect.demo import report
from innspect.demo.catalogue import Catalogue, build_catalogue
from innspect.demo.data import IMAGE_SIZE, load_digits_dataset, one_per_class
from innspect.demo.evaluation import run_evaluation_demo
from innspect.demo.introspection import run_introspection_demo
from innspect.demo.model import N_CLASSES, digits_cnn, train
from innspect.demo.plots import (
    grid_size,
    perturbation_size,
    write_analysis_grid,
    write_perturbation_plot,
)
from innspect.evaluation.perturbation import Perturbation, PerturbationAnalysis
from innspect.util.files import atomic_path, write_text
from innspect.util.progress import progress
from innspect.util.version import VERSION

VALUE_RANGE = (0.0, 1.0)
REGION = (4, 4)
BASELINE = "random"
MODEL_FILE = "digits_cnn.pt"  # the trained model as TorchScript, for `innspect analyze`
DIGITS_FOLDER = "digits"  # the grid's test digits as PNG files, for `innspect analyze`
LABELS_FILE = "digits_labels.txt"
# A map "looks empty" when fewer than this share of its pixels reach a tenth of its largest
# absolute value: per-image scaling then shows a few dots on white.
VISIBLE_FRACTION = 0.1
NEARLY_EMPTY_SHARE = 0.08


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo run (full or ``--fast``)."""

    epochs: int
    n_perturbation_images: int
    perturbation_steps: int
    regions_per_step: int

    @staticmethod
    def for_mode(fast: bool) -> DemoSettings:
        """The settings for a full or a fast run."""
        if fast:
            return DemoSettings(
                epochs=3, n_perturbation_images=32, perturbation_steps=8, regions_per_step=2
            )
        return DemoSettings(
            epochs=8, n_perturbation_images=128, perturbation_steps=16, regions_per_step=1
        )


def _log(message: str, verbose: bool) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def run_demo(
    out_dir: str | os.PathLike = "innspect-demo",
    fast: bool = False,
    verbose: bool = True,
    debug: bool = False,
) -> dict[str, Any]:
    """Run the demo and write its report to ``out_dir``; returns the content of results.json.

    Parameters
    ----------
    out_dir
        Output folder (created if missing).
    fast
        Smaller run (fewer epochs, images and steps), for tests.
    verbose
        Progress bars and messages on stderr.
    debug
        Let unexpected analyzer errors propagate instead of recording them.
    """
    previous_threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        # The demo's batches are small: one thread is 2-3 times faster than several threads
        # competing for a small, busy CPU.
        torch.set_num_threads(1)
    try:
        return _run(Path(out_dir), fast, verbose, debug)
    finally:
        torch.set_num_threads(previous_threads)


def _run(out: Path, fast: bool, verbose: bool, debug: bool) -> dict[str, Any]:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    settings = DemoSettings.for_mode(fast)
    torch.manual_seed(0)

    data = load_digits_dataset()
    model = digits_cnn()
    training = train(
        model,
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        settings.epochs,
        verbose=verbose,
    )
    print(
        f"test accuracy {training.test_accuracy:.1%} on {len(data.y_test)} test digits "
        f"({training.epochs} epochs, {training.seconds:.1f} s)",
        flush=True,
    )

    grid_index = one_per_class(data.y_test, N_CLASSES)
    grid_images = data.x_test[grid_index]
    with torch.no_grad():
        predictions = model(grid_images).argmax(dim=1)
    row_labels = [
        f"pred {int(p)}\ntrue {int(t)}"
        for p, t in zip(predictions, data.y_test[grid_index], strict=True)
    ]
    perturbation_images = data.x_test[: settings.n_perturbation_images]

    catalogue = build_catalogue(
        model, grid_images[:2], data.x_train[:512], fast, VALUE_RANGE, debug=debug
    )
    for name, reason in catalogue.skipped:
        _log(f"skipped {name}: {reason}", verbose)
    for name, reason in catalogue.failed:
        print(f"warning: {name} failed unexpectedly: {reason}", file=sys.stderr, flush=True)

    attributions: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for plan in progress(
        catalogue.methods, verbose, total=len(catalogue.methods), desc="analyzers"
    ):
        explanation = plan.analyzer.explain(grid_images)
        attribution = explanation.attribution.detach().cpu().numpy()
        attributions[plan.name] = attribution
        conservation = ratio = None
        if plan.relevance:
            scores = explanation.scores.detach().cpu().double().numpy()
            totals = attribution.reshape(len(attribution), -1).sum(axis=1)
            errors = np.abs(totals - scores) / np.maximum(np.abs(scores), 1e-12)
            conservation = float(errors.mean())
            ratio = float(np.median(totals / np.where(scores == 0, 1e-12, scores)))
        share = visible_share(attribution)
        perturbation = Perturbation("zeros", region_shape=REGION, value_range=VALUE_RANGE)
        result = PerturbationAnalysis(
            plan.analyzer,
            model,
            perturbation_images,
            perturbation,
            steps=settings.perturbation_steps,
            regions_per_step=settings.regions_per_step,
            batch_size=len(perturbation_images),
        ).compute_perturbation_analysis()
        curves[plan.name] = (result.n_regions, result.scores, result.aopc)
        rows.append(
            {
                "method": plan.name,
                "title": title_of(plan.name, in_family=True),
                "family": plan.family,
                "explanation": plan.explanation,
                "options": plan.options,
                "relevance_method": plan.relevance,
                "time_per_image_ms": 1000 * result.analysis_seconds / len(perturbation_images),
                "aopc": result.aopc,
                "conservation_error": conservation,
                "relevance_sum_over_score": ratio,
                "visible_share": share,
                "note": empty_map_note(plan.name, share, conservation, ratio),
                "curve": {
                    "regions_perturbed": result.n_regions.tolist(),
                    "mean_score": result.scores.tolist(),
                },
            }
        )

    grid_file, perturbation_file = "analysis_grid.png", "perturbation.png"
    groups = family_groups([plan.name for plan in catalogue.methods], catalogue)
    titles = {plan.name: title_of(plan.name, in_family=True) for plan in catalogue.methods}
    write_analysis_grid(out / grid_file, grid_images, attributions, row_labels, groups, titles)
    write_perturbation_plot(
        out / perturbation_file,
        curves,
        BASELINE,
        groups,
        titles,
        x_label=f"regions set to zero ({REGION[0]} x {REGION[1]} pixels each)",
        y_label="mean logit of the predicted class",
    )
    save_for_analyze(out, model, grid_images, data.y_test[grid_index])
    results = _results(
        settings, fast, training, catalogue, rows, grid_file, perturbation_file, len(grid_index)
    )
    results["grid"] = [
        {"file": f"{DIGITS_FOLDER}/digit_{int(t)}.png", "true": int(t), "predicted": int(p)}
        for p, t in zip(predictions, data.y_test[grid_index], strict=True)
    ]
    results["families"] = [
        {"title": title, "methods": names, "key": _family_key(title)} for title, names in groups
    ]
    results["files"]["analysis_grid"].update(
        dict(zip(("width", "height"), grid_size(len(grid_index), groups), strict=True))
    )
    results["files"]["perturbation"].update(
        dict(zip(("width", "height"), perturbation_size(n_panels(groups)), strict=True))
    )
    _log("evaluating every method (faithfulness, complexity, MPRT)", verbose)
    analyzers = {plan.name: plan.analyzer for plan in catalogue.methods}
    results["evaluation"] = run_evaluation_demo(model, grid_images, analyzers, out)
    results["introspection"] = run_introspection_demo(model, data, out, fast, verbose)
    results["seconds"] = time.perf_counter() - started
    report.write_csv(out / "results.csv", rows)
    report.write_json(out / "results.json", results)
    report.write_html(out / "index.html", results)
    print(
        f"{len(rows)} analyzers ({len(catalogue.skipped)} skipped, {len(catalogue.failed)} "
        f"failed) in {results['seconds']:.0f} s; open {out / 'index.html'}",
        flush=True,
    )
    return results


def visible_share(attribution: np.ndarray) -> float:
    """Mean over images of the share of pixels whose |relevance| (channels summed) reaches
    ``VISIBLE_FRACTION`` of the image's largest: what per-image colour scaling leaves visible."""
    maps = np.abs(attribution.reshape(attribution.shape[0], attribution.shape[1], -1).sum(1))
    peak = maps.max(axis=1, keepdims=True)
    visible = (maps >= VISIBLE_FRACTION * np.where(peak == 0, np.inf, peak)).mean(axis=1)
    return float(visible.mean())


def empty_map_note(
    name: str, share: float, conservation: float | None, ratio: float | None
) -> str | None:
    """A sentence for the page when a method's maps look nearly empty, with the numbers."""
    if share >= NEARLY_EMPTY_SHARE:
        return None
    seen = (
        f"Looks nearly empty: on average only {share:.1%} of the pixels reach a tenth of the "
        "image's largest value, and the colours are scaled to that value."
    )
    if conservation is not None and ratio is not None and conservation > 1:
        return (
            f"{seen} The relevances sum to {ratio:.1f} times the score (conservation error "
            f"{conservation:.1f}): this rule does not conserve relevance on this model (with "
            "alpha-beta, positive contributions are counted alpha times and negative ones beta "
            "times at every layer, and the bias absorbs or adds relevance), so large positive "
            "and negative values build up and a few extreme pixels set the colour scale."
        )
    if conservation is not None:
        return (
            f"{seen} The relevances still sum to about the score (conservation error "
            f"{conservation:.1e}), so the map is not empty: a few pixels carry very large "
            "positive and negative values that nearly cancel (some neuron divides by a "
            "denominator close to zero), and they set the colour scale."
        )
    return seen


def family_groups(names: list[str], catalogue: Catalogue) -> list[tuple[str, list[str]]]:
    """(family title, method names) in the families' order."""
    return [(family.title, members) for family, members in grouped(names)]


def n_panels(groups: list[tuple[str, list[str]]]) -> int:
    """Panels of the perturbation figure: families with a method other than the baseline."""
    return sum(1 for _, names in groups if any(name != BASELINE for name in names))


def _family_key(title: str) -> str:
    return next(family.key for family in FAMILIES if family.title == title)


def save_for_analyze(
    out: Path, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> None:
    """Save the model as TorchScript, the grid's digits as PNGs and the class names, so that
    ``innspect analyze --model digits_cnn.pt --input digits --labels digits_labels.txt`` runs."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        scripted = torch.jit.script(model.eval())
        with atomic_path(out / MODEL_FILE) as tmp:
            scripted.save(str(tmp))
    folder = out / DIGITS_FOLDER
    folder.mkdir(exist_ok=True)
    for image, label in zip(images, labels, strict=True):
        pixels = (image[0].numpy() * 255).round().astype(np.uint8)
        with atomic_path(folder / f"digit_{int(label)}.png") as tmp:
            Image.fromarray(pixels, mode="L").save(tmp, format="PNG")
    write_text(out / LABELS_FILE, "".join(f"digit {k}\n" for k in range(N_CLASSES)))


def _results(
    settings: DemoSettings,
    fast: bool,
    training: Any,
    catalogue: Catalogue,
    rows: list[dict[str, Any]],
    grid_file: str,
    perturbation_file: str,
    n_grid_images: int,
) -> dict[str, Any]:
    return {
        "innspect_version": VERSION,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "fast": fast,
        "model": {
            "architecture": str(digits_cnn()),
            "input_shape": [1, IMAGE_SIZE, IMAGE_SIZE],
            "epochs": training.epochs,
            "training_seconds": training.seconds,
            "test_accuracy": training.test_accuracy,
        },
        "perturbation": {
            "function": "zeros",
            "region_shape": list(REGION),
            "steps": settings.perturbation_steps,
            "regions_per_step": settings.regions_per_step,
            "n_images": settings.n_perturbation_images,
            "score": "output at the predicted class (logit)",
            "baseline": BASELINE,
        },
        "files": {
            "analysis_grid": {"file": grid_file},
            "perturbation": {"file": perturbation_file},
            "csv": {"file": "results.csv"},
            "model": {"file": MODEL_FILE},
            "digits": {"file": DIGITS_FOLDER},
            "labels": {"file": LABELS_FILE},
        },
        "n_grid_images": n_grid_images,
        "methods": rows,
        "skipped": [{"method": n, "reason": r} for n, r in catalogue.skipped],
        "failed": [{"method": n, "reason": r} for n, r in catalogue.failed],
    }
