"""``innspect introspect``: NAPs, topographic maps and an index.html for a model on a corpus.

A config file (JSON or TOML; iNNtrospect's keys ``model_path``, ``layer_names_of_interest``,
``data_path``, ``processed_corpus_path``, ``use_aligned_naps`` work) and flags for the common
case; a flag given on the command line overrides the config.
"""

from __future__ import annotations

import argparse
from typing import Any

from innspect.cli.backend import add_backend_arguments, check_backend
from innspect.cli.common import CLIError

HELP = "what the network learned: NAPs and topographic maps of its layers"
DESCRIPTION = """\
Neuron activation profiles (NAPs) and topographic maps (Krug et al., HHAI 2023).

innspect introspect --model SPEC --data CORPUS --out DIR: stream an iNNtrospect corpus
(corpus.csv rows 'file.npy, group[, output index]' beside the batch files) through the
model; --activations DIR reads an iNNtrospect processed-corpus folder instead (no model).
Each layer's channels are laid out as a map; plots, quality metrics and index.html go to
--out. A second run with the same settings reuses the finished steps."""


def configure(parser: argparse.ArgumentParser) -> None:
    """The ``introspect`` subcommand's arguments."""
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML settings")
    parser.add_argument(
        "--model",
        metavar="SPEC",
        help="TorchScript file, torchvision:NAME or package.module:factory",
    )
    parser.add_argument("--weights", metavar="FILE", help="state dict for the model")
    parser.add_argument("--data", metavar="DIR", help="corpus folder holding corpus.csv")
    parser.add_argument(
        "--activations",
        metavar="DIR",
        help="instead of --model and --data: an iNNtrospect processed-corpus folder (acts/, "
        "grads/ and its JSON files), from any framework",
    )
    parser.add_argument("--batch-size", type=int, help="samples per forward pass (default 32)")
    parser.add_argument(
        "--layers",
        nargs="+",
        metavar="NODE",
        help="node names (default: activations after linear layers)",
    )
    parser.add_argument(
        "--layout",
        metavar="METHOD",
        help="umap (default), tsne, pca, graph, som, pso, random, or METHOD_pso",
    )
    parser.add_argument(
        "--align",
        action="store_true",
        default=None,
        help="align maps on the gradient before averaging",
    )
    parser.add_argument(
        "--projection", choices=("umap", "pca", "none"), help="instance projection method"
    )
    parser.add_argument("--seed", type=int, help="random seed of every layout")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: innspect-introspect)")
    parser.add_argument("--force", action="store_true", help="redo every step")

    add_backend_arguments(parser, local_default=False)  # NAPs on Ray workers (docs/scale.md)


_FLAGS = (
    "model",
    "weights",
    "data",
    "activations",
    "batch_size",
    "layers",
    "layout",
    "align",
    "projection",
    "seed",
    "out",
    "backend",
    "address",
    "workers",
)


def run(args: argparse.Namespace) -> int:
    """Run ``innspect introspect`` with parsed arguments; returns the exit status."""
    # Imported when the subcommand runs: it loads matplotlib, which `innspect --help` need not.
    from innspect.introspect.pipeline import (
        INNTROSPECT_KEYS,
        IntrospectionSettings,
        load_config,
        run_introspection,
    )

    check_backend(args)
    values: dict[str, Any] = {}
    source = "the config"
    if args.config:
        values = load_config(args.config)
        source = args.config
    for flag in _FLAGS:  # a flag overrides the config, whichever name the config used
        value = getattr(args, flag)
        if value is not None:
            for alias in [k for k, v in INNTROSPECT_KEYS.items() if v == flag]:
                values.pop(alias, None)
            values[flag] = value
    settings = IntrospectionSettings.from_mapping(values, source)
    try:
        run_introspection(settings, force=args.force, verbose=True)
    except ImportError as error:  # a missing optional dependency: bad setup, not a bug
        raise CLIError(str(error)) from error
    return 0
