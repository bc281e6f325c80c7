"""The ``innspect`` command: ``demo``, ``analyze`` and ``methods``.

Bad input (missing or undecodable files, unknown methods, neuron indices out of range, weights
that do not fit) prints one line to stderr and exits with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (status 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser = _Parser(
        prog="innspect",
        description="Explain what PyTorch networks do (iNNvestigate's methods for PyTorch).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        parents=[debug],
        help="train a small CNN on digits and compare every analyzer",
        description="Train a small CNN on scikit-learn's digits, explain test digits with "
        "every applicable analyzer and write analysis_grid.png, perturbation.png, "
        "results.csv, results.json and index.html.",
    )
    demo.add_argument("--out", default="innspect-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--fast", action="store_true", help="a smaller, quicker run (for tests)")

    analyze = commands.add_parser(
        "analyze",
        parents=[debug],
        help="explain a model's output on images or arrays",
        description="Write one heatmap PNG and the raw attribution (.npy) per input and print "
        "the explained neuron and its score.",
    )
    analyze.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="a TorchScript file, torchvision:NAME or package.module:factory",
    )
    analyze.add_argument(
        "--input", required=True, nargs="+", metavar="FILE", help="PNG/JPEG images or .npy arrays"
    )
    analyze.add_argument("--method", required=True, metavar="NAME", help="see `innspect methods`")
    analyze.add_argument(
        "--neuron", type=int, metavar="N", help="output neuron to explain (default: the largest)"
    )
    analyze.add_argument("--out", default="innspect-analysis", help="output folder")
    analyze.add_argument("--weights", metavar="FILE", help="state dict for the model")
    analyze.add_argument(
        "--preprocess",
        choices=("imagenet", "none"),
        default="none",
        help="image preprocessing: imagenet (resize, crop 224, normalise) or none (scale to "
        "[0, 1]); default: %(default)s",
    )
    analyze.add_argument(
        "--patterns",
        metavar="FILE",
        help="patterns for pattern.net / pattern.attribution (from `innspect patterns compute`)",
    )
    analyze.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="analyzer option, e.g. --option epsilon=0.1 (repeatable)",
    )

    commands.add_parser("methods", parents=[debug], help="list the analyzers and their options")

    from innspect.cli_patterns import add_parser as add_patterns_parser

    add_patterns_parser(commands, [debug])

    from innspect import cli_introspect

    cli_introspect.add_parser(commands, [debug])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    from innspect.cli_loading import CLIError
    from innspect.errors import InnspectError

    try:
        if args.command == "demo":
            return _demo(args, debug)
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "patterns":
            from innspect.cli_patterns import run as run_patterns

            return run_patterns(args)
        if args.command == "introspect":
            from innspect.cli_introspect import run

            return run(args)
        return _methods()
    except (CLIError, InnspectError) as error:
        if debug:
            raise
        return _fail(EXIT_BAD_INPUT, str(error))
    except KeyboardInterrupt:
        return _fail(130, "interrupted")
    except BrokenPipeError:
        # The reader went away (e.g. `innspect methods | head`): stop quietly.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the exit-time flush silent
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - anything else is a bug: say so in one line
        if debug:
            raise
        return _fail(
            EXIT_INTERNAL,
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for the "
            "traceback)",
        )


def _fail(status: int, message: str) -> int:
    one_line = " ".join(str(message).split())
    print(f"innspect: error: {one_line}", file=sys.stderr)
    return status


# -- demo --------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace, debug: bool) -> int:
    from innspect.cli_loading import CLIError

    try:
        import sklearn  # noqa: F401
        import tqdm  # noqa: F401

        from innspect.demo import run_demo
    except ImportError as error:
        raise CLIError(
            f"the demo needs scikit-learn and tqdm ({error}): pip install 'innspect[demo]'"
        ) from error
    run_demo(args.out, fast=args.fast, verbose=True, debug=debug)
    return EXIT_OK


# -- analyze -----------------------------------------------------------------------------------
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


def _analyze(args: argparse.Namespace) -> int:
    from innspect.analyzers.registry import create_analyzer, list_analyzers
    from innspect.cli_loading import CLIError, load_input, load_model
    from innspect.fileio import atomic_path

    if args.method not in list_analyzers():
        raise CLIError(f"unknown method '{args.method}'; `innspect methods` lists them")
    inputs = [load_input(path, args.preprocess) for path in args.input]
    model = load_model(args.model, args.weights, example=inputs[0][None])
    options = _parse_options(args.option)
    if args.patterns is not None:
        options["patterns"] = args.patterns
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
    return EXIT_OK


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


# -- methods -----------------------------------------------------------------------------------
_COMMON_OPTIONS = {"neuron_selection_mode"}


def _methods() -> int:
    from innspect.analyzers.registry import analyzer_class, describe_analyzers

    descriptions = describe_analyzers()
    width = max(len(name) for name in descriptions) + 2
    for name, description in descriptions.items():
        print(f"{name:<{width}}{description}")
        options = _own_options(analyzer_class(name))
        if options:
            print(f"{'':<{width}}options: {', '.join(options)}")
    print(
        "\nEvery analyzer also takes neuron_selection_mode ('max_activation', 'index', 'all');"
        " pass options with `innspect analyze --option KEY=VALUE`."
    )
    return EXIT_OK


def _own_options(cls: type) -> list[str]:
    signature = inspect.signature(cls.__init__)
    options = []
    for index, (name, parameter) in enumerate(signature.parameters.items()):
        if index < 2 or name in _COMMON_OPTIONS or name.startswith("reverse_"):
            continue
        if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if parameter.default is inspect.Parameter.empty:
            options.append(f"{name} (required)")
        else:
            options.append(f"{name}={parameter.default!r}")
    return options


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
