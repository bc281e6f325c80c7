"""``innspect evaluate --backend local|ray``: a whole data set scored into resumable shards
(``innspect.evaluation.evaluate_dataset``) instead of a table of a few input files."""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

from innspect.cli.backend import add_backend_arguments, add_shard_arguments, check_backend
from innspect.cli.common import CLIError
from innspect.util.files import write_text


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` (switching to shards), ``--address``, ``--workers``, shard sizes."""
    add_backend_arguments(parser, local_default=False)
    add_shard_arguments(parser)


def run_dataset(
    args: argparse.Namespace, methods: list[str], metric_options: dict[str, dict]
) -> int:
    """Score every sample of ``--input`` (one folder, .npy or .h5) into shards in ``--out``;
    an interrupted run resumes from the shards written."""
    # The evaluation package loads matplotlib, which `innspect --help` need not.
    from innspect.evaluation.dataset import evaluate_dataset

    check_backend(args)
    if len(args.input) != 1:
        raise CLIError("with --backend give one --input: a folder of images, a .npy or .h5 file")
    if args.report:
        raise CLIError(
            "--report is not available with --backend (the figures need every per-sample "
            "curve in memory): the shards and results.json hold the scores"
        )
    if args.target not in ("prediction", "label"):
        raise CLIError(
            f"--target {args.target} with --backend: give 'prediction' (default) or 'label' "
            "(the data set's labels); one class for every sample is not offered"
        )
    for name, value in (("--batch-size", args.batch_size), ("--shard-size", args.shard_size)):
        if value < 1:
            raise CLIError(f"{name} must be a positive integer, got {value}")
    result = evaluate_dataset(
        args.model,
        args.input[0],
        methods,
        list(metric_options),
        args.out,
        target=args.target,
        backend=args.backend,
        num_workers=args.workers,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        weights=args.weights,
        preprocess=args.preprocess,
        address=args.address,
        metric_options=metric_options,
        seed=args.seed,
        masks=args.mask,
    )
    write_text(Path(args.out) / "results.csv", summary_csv(result.rows()))
    for row in result.rows():
        low, high = row["ci_low"], row["ci_high"]
        interval = "" if math.isnan(low) else f" [{low:.4g}, {high:.4g}]"
        print(
            f"{row['method']:>28}  {row['metric']:<28} {row['mean']:.4g}{interval} (n={row['n']})"
        )
    print(f"innspect: results.csv, results.json and the shards in {result.out}")
    return 0


def summary_csv(rows: list[dict]) -> str:
    """The merged rows (method, metric, mean, 95 % interval, n, direction) as CSV text."""
    text = io.StringIO()
    fields = ["method", "metric", "mean", "ci_low", "ci_high", "n", "higher_is_better"]
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
