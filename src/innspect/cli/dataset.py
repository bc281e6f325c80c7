"""``innspect analyze --backend local|ray``: a whole data set explained into resumable shards
(``innspect.explain_dataset``) instead of one set of files per input."""

from __future__ import annotations

import argparse

from innspect.cli.backend import add_backend_arguments, add_shard_arguments, check_backend
from innspect.cli.common import CLIError, parse_options, resolve_methods
from innspect.distributed.dataset import explain_dataset
from innspect.distributed.shards import INDEX_NAME


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` (switching to shards), ``--address``, ``--workers`` and shard sizes."""

    add_backend_arguments(parser, local_default=False, gpus=True)
    group = add_shard_arguments(parser)
    group.add_argument(
        "--relevances",
        nargs="+",
        default=[],
        metavar="NODE",
        help="also write the layer-wise relevance at these nodes (`innspect methods --plan`)",
    )


def run_dataset(args: argparse.Namespace) -> int:
    """Explain every sample of ``--input`` (one folder, .npy or .h5) into shards in ``--out``."""

    check_backend(args)
    if len(args.input) != 1:
        raise CLIError("with --backend give one --input: a folder of images, a .npy or .h5 file")
    if args.patterns is not None or args.report or args.labels is not None:
        raise CLIError("--patterns, --report and --labels are not available with --backend")
    methods = resolve_methods(args.method, args.methods)
    options = parse_options(args.option)
    options.setdefault("seed", args.seed)
    out = explain_dataset(
        args.model,
        args.input[0],
        methods,
        args.out,
        backend=args.backend,
        num_workers=args.workers,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        neuron=args.neuron,
        weights=args.weights,
        preprocess=args.preprocess,
        address=args.address,
        gpus_per_worker=args.gpus_per_worker,
        verbose=True,
        relevances=args.relevances,
        **options,
    )
    print(f"innspect: {len(methods)} method(s), shards and {INDEX_NAME} in {out}")
    return 0
