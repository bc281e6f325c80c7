"""``innspect references generate`` / ``check``: reference data for explanation code.

Registered by ``innspect.cli`` (``HELP``, ``DESCRIPTION``, ``configure(parser)``, ``run(args)``,
like the other subcommand modules); see ``innspect.conformance`` for the file layouts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from innspect.cli.common import EXIT_OK, CLIError, parse_options
from innspect.conformance import (
    check_folder,
    format_table,
    generate_layer_references,
    generate_model_references,
    load_implementation,
)
from innspect.conformance.generate import reference_input

EXIT_FAILED = 1  # a reference did not match
HELP = "generate or check reference data (iNNvestigate's layout)"
DESCRIPTION = (
    "Reference data for explanation code: write it with innspect (generate), or check an "
    "implementation against a folder of it, iNNvestigate 1.0.9's or innspect's (check)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """The ``generate`` and ``check`` subcommands and their arguments."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parents = [debug]
    sub = parser.add_subparsers(dest="references_command", required=True, parser_class=type(parser))
    generate = sub.add_parser(
        "generate",
        parents=parents,
        help="write one HDF5 reference file per analyzer",
        description="Run innspect's analyzers and write test-data-innvestigate's layout: per "
        "analyzer input, output, attribution and layerwise_relevances/<node>.",
    )
    target = generate.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", metavar="SPEC", help="as `innspect analyze --model`")
    target.add_argument(
        "--layers",
        action="store_true",
        help="the per-layer set: iNNvestigate's six single-layer models, weights in the file",
    )
    generate.add_argument("--weights", metavar="FILE", help="state dict for --model")
    generate.add_argument("--methods", nargs="+", metavar="NAME", help="default: every analyzer")
    generate.add_argument(
        "--input", nargs="+", metavar="FILE", help="PNG/JPEG images or .npy arrays, one sample each"
    )
    generate.add_argument("--random", type=int, metavar="N", help="N random normal samples")
    generate.add_argument(
        "--shape", metavar="C,H,W", help="shape of one random sample, e.g. 3,32,32"
    )
    generate.add_argument(
        "--seed", type=int, default=0, help="seed of the random input and weights (default 0)"
    )
    generate.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="analyzer option for every analyzer that takes it, e.g. steps=8 (repeatable)",
    )
    generate.add_argument("--out", required=True, metavar="DIR", help="output folder")

    check = sub.add_parser(
        "check",
        parents=parents,
        help="rerun every reference file of a folder and compare node by node",
        description="Load every *.hdf5 file of DIR (iNNvestigate 1.0.9's single-layer files or "
        "files written by `innspect references generate`), rebuild each model, run the "
        "implementation and print max abs/rel error and PASS/FAIL per file and node. Exit "
        "status 0 when everything passes, 1 otherwise.",
    )
    check.add_argument("folder", metavar="DIR")
    check.add_argument(
        "--implementation",
        metavar="MODULE:FUNCTION",
        help="fn(model, x, method, options) -> attribution or (attribution, relevances); "
        "default: innspect",
    )
    check.add_argument("--rtol", type=float, help="override the files' rtol")
    check.add_argument("--atol", type=float, help="override the files' atol")
    check.add_argument("--failures-only", action="store_true", help="print only failing rows")


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``references`` on the ``innspect`` subparsers ``commands``."""
    parser = commands.add_parser("references", parents=parents, help=HELP, description=DESCRIPTION)
    configure(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``innspect references ...``; returns the exit status."""
    if args.references_command == "check":
        return _check(args)
    return _generate(args)


def _check(args: argparse.Namespace) -> int:

    implementation = load_implementation(args.implementation) if args.implementation else None
    comparisons = check_folder(
        args.folder, implementation, rtol=args.rtol, atol=args.atol, verbose=_progress_bars()
    )
    failed = [c for c in comparisons if not c.passed]
    shown = failed if args.failures_only else comparisons
    if shown:
        print(format_table(shown))
    files = len({c.file for c in comparisons})
    print(f"{len(comparisons) - len(failed)} of {len(comparisons)} arrays in {files} files pass")
    if failed:
        names = sorted({f"{Path(c.file).name}:{c.model}:{c.node}" for c in failed})
        print("FAILED: " + ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
    return EXIT_FAILED if failed else EXIT_OK


def _generate(args: argparse.Namespace) -> int:

    options = parse_options(args.option)  # KEY=VALUE, as `innspect analyze --option`
    if args.layers:
        if args.input or args.random or args.weights:
            raise CLIError(
                "--layers makes its own input and weights; drop --input/--random/--weights"
            )
        written, skipped = generate_layer_references(
            args.out, args.methods, seed=args.seed, extra_options=options, verbose=_progress_bars()
        )
    else:
        shape = None
        if args.shape:
            try:
                shape = tuple(int(v) for v in args.shape.split(","))
            except ValueError as error:
                raise CLIError(f"--shape must look like 3,32,32, got '{args.shape}'") from error
        x, input_name = reference_input(args.input, args.random, shape, args.seed)
        written, skipped = generate_model_references(
            args.model,
            args.out,
            x,
            input_name,
            methods=args.methods,
            weights=args.weights,
            model_seed=args.seed,
            extra_options=options,
            verbose=_progress_bars(),
        )
    for name, reason in skipped:
        print(f"skipped {name}: {reason}")
    print(f"wrote {len(written)} reference files to {args.out}")
    return EXIT_OK


def _progress_bars() -> bool:
    # tqdm is optional (innspect[demo]); without it the commands run without a bar.
    import importlib.util

    return importlib.util.find_spec("tqdm") is not None
