"""``innspect analyze``: explain a model's output on images or arrays."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HELP = "explain a model's output on images or arrays"
DESCRIPTION = (
    "Write one heatmap PNG and the raw attribution (.npy) per input and print the explained "
    "neuron and its score."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``innspect analyze``."""
    parser.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="a TorchScript file, torchvision:NAME or package.module:factory",
    )
    parser.add_argument(
        "--input", required=True, nargs="+", metavar="FILE", help="PNG/JPEG images or .npy arrays"
    )
    parser.add_argument("--method", required=True, metavar="NAME", help="see `innspect methods`")
    parser.add_argument(
        "--neuron", type=int, metavar="N", help="output neuron to explain (default: the largest)"
    )
    parser.add_argument("--out", default="innspect-analysis", help="output folder")
    parser.add_argument("--weights", metavar="FILE", help="state dict for the model")
    parser.add_argument(
        "--preprocess",
        choices=("imagenet", "none"),
        default="none",
        help="image preprocessing: imagenet (resize, crop 224, normalise) or none (scale to "
        "[0, 1]); default: %(default)s",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="analyzer option, e.g. --option epsilon=0.1 (repeatable)",
    )


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    from innspect.cli_loading import CLIError

    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"--option needs KEY=VALUE, got '{item}'")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text  # a plain word, e.g. --option postprocess=abs
    return options


def run(args: argparse.Namespace) -> int:
    """Explain every input with the chosen method."""
    from innspect.analyzers.registry import create_analyzer, list_analyzers
    from innspect.cli_loading import CLIError, load_input, load_model
    from innspect.fileio import atomic_path

    if args.method not in list_analyzers():
        raise CLIError(f"unknown method '{args.method}'; `innspect methods` lists them")
    inputs = [load_input(path, args.preprocess) for path in args.input]
    model = load_model(args.model, args.weights, example=inputs[0][None])
    options = _parse_options(args.option)
    if args.neuron is not None:
        options["neuron_selection_mode"] = "index"
    try:
        analyzer = create_analyzer(args.method, model, **options)
    except (TypeError, ValueError) as error:
        raise CLIError(f"cannot create {args.method} with {options}: {error}") from error

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for path, sample in zip(args.input, inputs, strict=True):
        x = sample[None]
        explanation = analyzer.explain(x, neuron_selection=args.neuron)
        attribution = explanation.attribution.detach().cpu().numpy()[0]
        stem = _unique_stem(f"{Path(path).stem}_{args.method}", used)
        with atomic_path(out / f"{stem}.npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, attribution)
        write_heatmap_png(out / f"{stem}.png", attribution)
        neuron = "all" if explanation.selected is None else int(explanation.selected[0])
        score = float(explanation.scores[0])
        print(f"{path}: neuron {neuron}, score {score:.6g} -> {out / stem}.png, .npy")
    return 0


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

    from innspect.fileio import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(heatmap_rgb(attribution)).save(tmp, format="PNG")


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, index = stem, 2
    while candidate in used:
        candidate, index = f"{stem}-{index}", index + 1
    used.add(candidate)
    return candidate
