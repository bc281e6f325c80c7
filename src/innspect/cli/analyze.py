"""``innspect analyze``: explain a model's output on images or arrays with one or more methods.

Per input and method it writes the raw attribution (``.npy``), its heatmap over the model input
(``.png``) and, for images, an overlay on the picture as the user gave it (the map carried back
through the resize and crop) with a colour bar and the explained class; then one comparison
figure (rows inputs, columns methods), ``results.json`` and, with ``--report``, a self-contained
``index.html``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from innspect.analyzers.families import title_of
from innspect.analyzers.options import jsonable
from innspect.analyzers.parameters import options_for_methods
from innspect.analyzers.registry import create_analyzer
from innspect.cli.common import CLIError, parse_options, quiet_unless_debug, resolve_methods
from innspect.cli.dataset import add_dataset_arguments, run_dataset
from innspect.errors import OutputActivationError
from innspect.loading.inputs import (
    as_channels_last,
    check_channels,
    default_preprocess,
    input_files,
    load_input,
)
from innspect.loading.models import load_model, read_labels
from innspect.util.files import atomic_path, write_text
from innspect.util.progress import progress

HELP = "explain a model's output on images or arrays"
DESCRIPTION = """\
Explain a model's output on images or arrays with one or more methods.

Writes to --out, per input and method: <input>_<method>.npy (raw attribution),
<input>_<method>.png (heatmap over the model input) and, for images,
<input>_<method>_overlay.png (the map on the picture as given, with a colour bar and the
explained class); and comparison.png (rows inputs, columns methods), results.json and,
with --report, index.html.

examples:
  innspect analyze --model torchvision:resnet18 --weights resnet18.pth --input photos/ \\
      --method gradient lrp.epsilon_plus_flat --report
  innspect analyze --model mynet:build --input digit.png --method lrp.epsilon --option epsilon=0.1
"""
OUT_DEFAULT = "innspect-analysis"


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``innspect analyze``."""
    parser.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="a TorchScript file, torchvision:NAME or package.module:factory (importable "
        "from the current folder)",
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="PNG/JPEG images, .npy arrays (one sample each) or folders of them",
    )
    parser.add_argument(
        "--method",
        nargs="+",
        default=[],
        metavar="NAME",
        help="one or more analyzers (see `innspect methods`)",
    )
    parser.add_argument(
        "--methods", metavar="FILE", help="a file with more analyzer names, one per line"
    )
    parser.add_argument(
        "--neuron", type=int, metavar="N", help="output neuron to explain (default: the largest)"
    )
    parser.add_argument("--out", default=OUT_DEFAULT, help="output folder (default: %(default)s)")
    parser.add_argument("--weights", metavar="FILE", help="state dict for the model")
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per line in output order (or a JSON list); torchvision "
        "models with --weights have them already",
    )
    parser.add_argument(
        "--preprocess",
        choices=("imagenet", "none"),
        default=None,
        help="image preprocessing: imagenet (resize, crop 224, normalise) or none (scale to "
        "[0, 1]); default: imagenet for torchvision: models, none otherwise",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for random initial weights and random methods (default: %(default)s, so "
        "runs repeat)",
    )
    parser.add_argument(
        "--strip-softmax",
        action="store_true",
        help="explain the model without its final softmax / log-softmax",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="analyzer option, e.g. --option epsilon=0.1 (repeatable; with several methods "
        "it goes to those that take it)",
    )
    parser.add_argument(
        "--report", action="store_true", help="also write index.html, a self-contained page"
    )
    parser.add_argument(
        "--patterns",
        metavar="FILE",
        help="patterns for pattern.net / pattern.attribution (`innspect patterns compute`)",
    )

    add_dataset_arguments(parser)  # --backend: a whole data set into shards (docs/scale.md)


# -- the run -----------------------------------------------------------------------------------
@dataclass
class InputResult:
    """What the run found for one input."""

    name: str  # unique file stem
    path: str
    prediction: int
    prediction_name: str | None
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    """Explain every input with every chosen method and write the files."""
    return quiet_unless_debug(_run, args)


def _run(args: argparse.Namespace) -> int:
    # Imported when the subcommand runs (here and below): they load matplotlib, which
    # `innspect --help` need not.
    from innspect.cli.report import thumbnail, write_comparison, write_report
    from innspect.viz.overlay import overlay_rgb

    if (args.backend, args.address, args.workers) != (None, None, None) or args.gpus_per_worker:
        return run_dataset(args)
    import torch

    methods = resolve_methods(args.method, args.methods)
    preprocess = args.preprocess or default_preprocess(args.model)
    files, from_folder = input_files(args.input)
    samples = [load_input(file, preprocess) for file in files]
    loaded = load_model(
        args.model,
        args.weights,
        example=samples[0].tensor[None],
        seed=args.seed,
        strip_softmax=args.strip_softmax,
    )
    model = loaded.module
    for sample in samples:
        check_channels(model, sample)
    # A Keras model takes channels last: images are converted, .npy files read as written,
    # and attributions drawn with their channels first again.
    channels_last = bool(getattr(model, "channels_last_input", False))
    if channels_last:
        samples = [as_channels_last(sample) for sample in samples]
    labels = read_labels(args.labels) if args.labels else loaded.class_names
    options = parse_options(args.option)
    if args.patterns is not None:
        options["patterns"] = args.patterns
    per_method = options_for_methods(methods, options, args.seed, args.neuron)
    analyzers = {}
    for method in methods:
        try:
            analyzers[method] = create_analyzer(method, model, **per_method[method])
        except (TypeError, ValueError) as error:
            raise CLIError(f"cannot create {method} with {per_method[method]}: {error}") from error

    out = _output_folder(Path(args.out))
    if loaded.random_weights:
        source = f"random weights, seed {args.seed}"
    else:
        source = f"weights {args.weights}" if args.weights else "weights in the file"
    print(
        f"model {args.model} ({source}); preprocessing: {preprocess}; "
        f"{len(samples)} input(s) x {len(methods)} method(s) -> {out}",
        flush=True,
    )
    if loaded.random_weights:
        print(
            f"innspect: warning: no --weights given; {args.model} has random weights "
            f"(seed {args.seed}), so its classes mean nothing",
            file=sys.stderr,
        )
    show_progress = from_folder or sys.stderr.isatty()
    names: set[str] = set()
    results: list[InputResult] = []
    first_column: list[np.ndarray | None] = []
    cells: dict[tuple[int, str], np.ndarray] = {}
    jobs = [(i, m) for i in range(len(samples)) for m in methods]
    for index, method in progress(jobs, show_progress, total=len(jobs), desc="analyzing"):
        sample = samples[index]
        if len(results) <= index:
            x = sample.tensor[None]
            try:
                with torch.no_grad():
                    output = model(x)
            except Exception as error:  # noqa: BLE001 - an input the model cannot take
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise CLIError(
                    f"the model fails on {sample.path} (shape {tuple(x.shape)}): "
                    f"{type(error).__name__}: {message}; check --preprocess and the input's size"
                ) from error
            if isinstance(output, tuple | list) and output:
                output = output[0]
            if not isinstance(output, torch.Tensor):
                raise CLIError(
                    f"{args.model} returns {type(output).__name__}, not a tensor of scores "
                    "(e.g. a detection model's boxes): innspect explains outputs that are "
                    "tensors; wrap the model so it returns the scores to explain"
                )
            flat = output.reshape(1, -1)
            if labels is not None and len(labels) != flat.shape[1]:
                if args.labels:
                    raise CLIError(
                        f"labels {args.labels} has {len(labels)} names but the model has "
                        f"{flat.shape[1]} outputs"
                    )
                labels = None
            top = int(flat.argmax(dim=1)[0])
            results.append(
                InputResult(
                    _unique(sample.path.stem, names),
                    str(sample.path),
                    top,
                    labels[top] if labels else None,
                )
            )
            first_column.append(None if sample.picture is None else thumbnail(sample.picture))
        result = results[index]
        started = time.perf_counter()
        try:
            explanation = analyzers[method].explain(
                sample.tensor[None], neuron_selection=args.neuron
            )
        except OutputActivationError as error:
            raise CLIError(f"{error} (from the command line: add --strip-softmax)") from error
        seconds = time.perf_counter() - started
        attribution = explanation.attribution.detach().cpu().numpy()[0]
        drawn = np.moveaxis(attribution, -1, 0) if channels_last and attribution.ndim == 3 else None
        neuron = None if explanation.selected is None else int(explanation.selected[0])
        score = float(explanation.scores[0])
        overlay = _write_method_files(
            out, result.name, method, attribution, sample, neuron, score, labels, drawn
        )
        if overlay is not None:
            cells[(index, method)] = thumbnail(overlay_rgb(sample.picture, overlay))
        else:
            cells[(index, method)] = heatmap_rgb(attribution if drawn is None else drawn) / 255.0
        result.methods[method] = {
            "neuron": neuron,
            "class_name": labels[neuron] if labels and neuron is not None else None,
            "score": score,
            "seconds": seconds,
            "files": {
                "npy": f"{result.name}_{method}.npy",
                "heatmap": f"{result.name}_{method}.png",
                "overlay": f"{result.name}_{method}_overlay.png" if overlay is not None else None,
            },
        }
        what = "all outputs" if neuron is None else f"neuron {neuron}"
        if neuron is not None and labels:
            what += f" ({labels[neuron]})"
        print(
            f"{sample.path}: {method}: {what}, score {score:.6g} -> "
            f"{out / result.name}_{method}.npy, .png",
            flush=True,
        )
    summary = {
        "model": args.model,
        "weights": args.weights,
        "random_weights": loaded.random_weights,
        "seed": args.seed,
        "preprocess": preprocess,
        "strip_softmax": args.strip_softmax,
        "methods": {m: jsonable(per_method[m], fallback=repr) for m in methods},
        "inputs": [vars(r) for r in results],
        "comparison": "comparison.png",
    }
    try:
        row_labels = [_row_label(r, args.neuron is None) for r in results]
        write_comparison(out / "comparison.png", row_labels, first_column, methods, cells)

        write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
        if args.report:
            write_report(out / "index.html", out, summary, methods)
    except OSError as error:
        raise CLIError(f"cannot write to {out}: {error.strerror or error}") from error
    print(f"comparison figure: {out / 'comparison.png'}", flush=True)
    if args.report:
        print(f"report: {out / 'index.html'}", flush=True)
    return 0


def _write_method_files(
    out: Path,
    name: str,
    method: str,
    attribution: np.ndarray,
    sample: Any,
    neuron: int | None,
    score: float,
    labels: list[str] | None,
    drawn: np.ndarray | None = None,
) -> np.ndarray | None:
    """Write the .npy (as the model gave it), heatmap and overlay files (of ``drawn``, the
    attribution with its channels first, when the model's layout is channels last); return
    the overlay's map (original pixels)."""
    from innspect.viz.overlay import spatial_map, write_overlay

    stem = f"{name}_{method}"
    values = None
    try:
        with atomic_path(out / f"{stem}.npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, attribution)
        picture = attribution if drawn is None else drawn
        write_heatmap_png(out / f"{stem}.png", picture)
        plane = spatial_map(picture)
        if plane is not None and sample.geometry is not None and sample.picture is not None:
            crop = sample.geometry.crop
            if plane.shape == (crop[3], crop[2]):
                values = sample.geometry.to_original(plane)
                write_overlay(
                    out / f"{stem}_overlay.png",
                    sample.picture,
                    values,
                    f"{title_of(method)} ({method}): {_class_text(neuron, score, labels)}",
                )
    except OSError as error:
        raise CLIError(f"cannot write to {out}: {error.strerror or error}") from error
    return values


def _row_label(result: InputResult, predicted: bool) -> str:
    """The comparison figure's row label: the input and, by default, the predicted class."""
    if not predicted:
        return result.name
    if result.prediction_name:
        return f"{result.name}\npredicted:\n{result.prediction_name}\n({result.prediction})"
    return f"{result.name}\npredicted:\nclass {result.prediction}"


def _class_text(neuron: int | None, score: float, labels: list[str] | None) -> str:
    if neuron is None:
        return f"all outputs, sum {score:.4g}"
    name = f"'{labels[neuron]}' " if labels else ""
    return f"class {name}({neuron}), score {score:.4g}"


def _output_folder(out: Path) -> Path:

    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError as error:
        raise CLIError(f"--out {out} exists and is not a folder") from error
    except OSError as error:
        raise CLIError(f"cannot create --out folder {out}: {error.strerror or error}") from error
    if not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    import tempfile

    # Write a probe file rather than ask os.access: root passes every permission check, yet
    # read-only mounts and folders such as /proc still refuse files. Better to learn it now
    # than after minutes of analysis.
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".innspect-probe-"):
            pass
    except OSError as error:
        raise CLIError(
            f"--out folder {out} is not writable ({error.strerror or error}); choose another "
            "with --out"
        ) from error
    return out


def _unique(stem: str, used: set[str]) -> str:
    candidate, index = stem, 2
    while candidate in used:
        candidate, index = f"{stem}-{index}", index + 1
    used.add(candidate)
    return candidate


def heatmap_rgb(attribution: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 heatmap of one sample's attribution (channels first, or 1-D, or 2-D)."""
    from innspect.viz import heatmap

    if attribution.ndim == 1:
        attribution = attribution[None, None]  # a feature vector: one row of pixels
    elif attribution.ndim == 2:
        attribution = attribution[None]
    elif attribution.ndim > 3:
        attribution = attribution.reshape(attribution.shape[0], attribution.shape[1], -1)
    colours = heatmap(attribution[None], reduce_axis=1)[0]  # (3, H, W)
    return (np.moveaxis(colours, 0, -1) * 255).round().astype(np.uint8)


def write_heatmap_png(path: Path, attribution: np.ndarray) -> None:
    """Write ``heatmap_rgb(attribution)`` as a PNG (atomically)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(heatmap_rgb(attribution)).save(tmp, format="PNG")
