"""``innspect demo``: train a small CNN on digits and compare every analyzer."""

from __future__ import annotations

import argparse

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
    from innspect.cli_loading import CLIError

    try:
        import sklearn  # noqa: F401
        import tqdm  # noqa: F401

        from innspect.demo import run_demo
    except ImportError as error:
        raise CLIError(
            f"the demo needs scikit-learn and tqdm ({error}): pip install 'innspect[demo]'"
        ) from error
    run_demo(args.out, fast=args.fast, verbose=True, debug=args.debug)
    return 0
