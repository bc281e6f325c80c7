"""``innspect demo``: train a small CNN on digits and compare every analyzer."""

from __future__ import annotations

import argparse
import importlib

from innspect.cli.common import CLIError

# import name, pip name, extra that installs it
_NEEDS = (
    ("sklearn", "scikit-learn", "demo"),
    ("tqdm", "tqdm", "demo"),
    ("minisom", "minisom", "introspect"),
    ("scipy", "scipy", "introspect"),
)
HELP = "train a small CNN on digits and compare every analyzer"
DESCRIPTION = (
    "Train a small CNN on scikit-learn's digits, explain test digits with every applicable "
    "analyzer and write analysis_grid.png, perturbation.png, results.csv, results.json, "
    "index.html and digits_cnn.pt (the trained model as TorchScript, for `innspect analyze`)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """The demo's arguments."""
    parser.add_argument(
        "--out", default="innspect-demo", help="output folder (default: %(default)s)"
    )
    parser.add_argument("--fast", action="store_true", help="a smaller, quicker run (for tests)")


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    # The demo trains and explains (innspect[demo]) and draws NAP maps with the SOM layout
    # (minisom) and scipy's interpolation and clustering (innspect[introspect]).
    for module, pip_name, extra in _NEEDS:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise CLIError(
                f"the demo needs {pip_name} ({error}): pip install 'innspect[{extra}]' "
                "(the demo uses the extras demo and introspect)"
            ) from error

    # Imported when the subcommand runs, its extras checked: it loads matplotlib, which
    # `innspect --help` need not.
    from innspect.demo import run_demo

    run_demo(args.out, fast=args.fast, verbose=True, debug=args.debug)
    return 0
