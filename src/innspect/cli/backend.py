"""``--backend ray [--address ADDRESS] [--workers N]``: the flags shared by ``analyze``,
``patterns compute`` and ``introspect`` for running on Ray (``innspect.distributed``)."""

from __future__ import annotations

import argparse

from innspect.cli.common import CLIError
from innspect.util.extras import require


def add_backend_arguments(
    parser: argparse.ArgumentParser, local_default: bool = True, gpus: bool = False
) -> None:
    """Add the backend flags to a subcommand's parser (``gpus``: also --gpus-per-worker)."""
    group = parser.add_argument_group("data-set scale (see docs/scale.md)")
    group.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local" if local_default else None,
        help="run here (local) or on Ray workers (needs innspect[ray])"
        + (" (default: %(default)s)" if local_default else ""),
    )
    group.add_argument(
        "--address",
        metavar="ADDRESS",
        help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local one",
    )
    group.add_argument(
        "--workers", type=int, metavar="N", help="Ray workers (default: one per CPU of Ray)"
    )
    if gpus:
        group.add_argument(
            "--gpus-per-worker",
            type=float,
            default=0.0,
            metavar="G",
            help="GPUs each Ray worker reserves and runs its model on (0.5: two share one)",
        )


def add_shard_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--batch-size`` and ``--shard-size`` of the data-set runners; the group, for more."""
    group = parser.add_argument_group("shards (with --backend)")
    group.add_argument("--batch-size", type=int, default=32, metavar="N", help="default: 32")
    group.add_argument(
        "--shard-size", type=int, default=256, metavar="N", help="samples per shard (256)"
    )
    return group


def check_backend(args: argparse.Namespace) -> None:
    """Refuse Ray flags without ``--backend ray`` and ``--backend ray`` without Ray."""

    gpus = getattr(args, "gpus_per_worker", 0.0)
    if args.backend != "ray":
        if args.address is not None or args.workers is not None or gpus:
            raise CLIError("--address, --workers and --gpus-per-worker go with --backend ray")
        return
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be a positive integer, got {args.workers}")
    if gpus < 0:
        raise CLIError(f"--gpus-per-worker must be >= 0, got {gpus:g}")

    try:
        require("ray", "--backend ray", extra="ray")
    except ImportError as error:
        raise CLIError(
            "--backend ray needs Ray: pip install 'innspect[ray]' (or leave out --backend)"
        ) from error
