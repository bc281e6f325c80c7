"""``innspect patterns compute``: PatternNet / PatternAttribution patterns of a model on data.

Resumable: the running statistics are written to ``--out`` every ``--save-every`` batches
(atomically); run the same command again and it continues after the batches already in the
file. The file then serves ``innspect analyze --method pattern.attribution --patterns FILE``
and ``create_analyzer("pattern.net", model, patterns=FILE)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from innspect.cli.backend import add_backend_arguments, check_backend
from innspect.cli.common import CLIError
from innspect.loading.inputs import INPUT_SUFFIXES, load_input
from innspect.loading.models import ModelSpec, load_model, model_fingerprint
from innspect.loading.sources import as_source
from innspect.patterns.computer import PatternComputer

DATA_SUFFIXES = INPUT_SUFFIXES


HELP = "compute PatternNet / PatternAttribution patterns on data (resumable)"
DESCRIPTION = (
    "Statistics for the pattern methods (Kindermans et al. 2018).\n\n"
    "innspect patterns compute: stream DATA through the model, accumulating the pattern "
    "statistics of every linear layer; write statistics and patterns to --out every "
    "--save-every batches. Run it again with the same --out to continue an interrupted run."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """The ``patterns`` subcommand's own subcommands (``compute``)."""
    actions = parser.add_subparsers(dest="patterns_command", required=True)
    compute = actions.add_parser(
        "compute",
        help="stream a data set through the model and write patterns.npz (resumable)",
        description=DESCRIPTION,
    )
    compute.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    compute.add_argument("--model", required=True, metavar="SPEC", help="as for `analyze`")
    compute.add_argument("--weights", metavar="FILE", help="state dict for the model")
    compute.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random weights when no --weights are given (default: %(default)s)",
    )
    compute.add_argument(
        "--data",
        required=True,
        metavar="DIR|FILE.npy",
        help="a .npy array (samples on axis 0, read memory-mapped) or a folder of .npy / "
        "PNG / JPEG files (one sample each, sorted by name)",
    )
    compute.add_argument("--out", required=True, metavar="FILE", help="patterns .npz to write")
    compute.add_argument(
        "--pattern-type",
        default="relu",
        choices=("linear", "relu", "relu.positive", "relu.negative", "dummy"),
        help="default: %(default)s",
    )
    compute.add_argument("--batch-size", type=int, default=32, metavar="N")
    compute.add_argument(
        "--save-every", type=int, default=10, metavar="N", help="batches between checkpoints"
    )
    compute.add_argument(
        "--preprocess", choices=("imagenet", "none"), default="none", help="for image files"
    )

    add_backend_arguments(compute)  # --backend ray: reduce on Ray workers (docs/scale.md)


def run(args: argparse.Namespace) -> int:
    """Run ``patterns compute`` (the only subcommand so far)."""

    if args.batch_size < 1 or args.save_every < 1:
        raise CLIError("--batch-size and --save-every must be positive integers")

    check_backend(args)
    source = _DataSource(Path(args.data), args.preprocess)
    n_batches = -(-len(source) // args.batch_size)
    loaded = load_model(args.model, args.weights, example=source.sample(0)[None], seed=args.seed)
    model = loaded.module
    if loaded.random_weights:
        print(
            f"innspect: warning: no --weights given; {args.model} has random weights (seed "
            f"{args.seed}), so its patterns describe a random network",
            file=sys.stderr,
        )
    out = Path(args.out)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    run_meta = {
        "pattern_type": args.pattern_type,
        "batch_size": args.batch_size,
        "data": str(Path(args.data).resolve()),
        "samples": len(source),
        # The model the statistics belong to: a resumed run must add batches of the same one
        # (another --model, --weights or --seed would mix two networks' statistics).
        "model": args.model,
        "model_fingerprint": model_fingerprint(model),
    }
    done = 0
    if args.backend == "ray":
        return _run_ray(args, model, out, run_meta, len(source))
    if out.exists():
        computer = PatternComputer.load_npz(out, model)
        saved = _saved_run(out)
        different = {k: (saved.get(k), v) for k, v in run_meta.items() if saved.get(k) != v}
        if different:
            listed = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in different.items())
            raise CLIError(
                f"{out} belongs to another run ({listed}); delete it or choose another --out"
            )
        done = computer.statistics.batches if computer.statistics is not None else 0
        print(f"innspect: resuming {out}: {done} of {n_batches} batches already done")
    else:
        computer = PatternComputer(model, args.pattern_type)
    if done < n_batches:
        verbose = _has_tqdm()

        def checkpoint(statistics: Any) -> None:
            if statistics.batches % args.save_every == 0:
                computer.save_npz(out, meta=run_meta, with_patterns=False)

        computer.update(
            source.batches(done * args.batch_size, args.batch_size),
            verbose=verbose,
            total=n_batches - done,
            on_batch=checkpoint,
        )
        computer.save_npz(out, meta=run_meta)
    layers = computer.statistics.reducers if computer.statistics is not None else {}
    print(
        f"innspect: patterns of {len(layers)} layers from {len(source)} samples "
        f"({args.pattern_type}) -> {out}"
    )
    return 0


def _run_ray(
    args: argparse.Namespace, model: torch.nn.Module, out: Path, meta: dict, n: int
) -> int:
    """All statistics in one go on Ray workers (checkpoints are for the local backend)."""

    if out.exists():
        raise CLIError(
            f"{out} exists; --backend ray computes in one go: delete it, or resume it with "
            "--backend local"
        )
    computer = PatternComputer(model, args.pattern_type)
    computer.compute(
        as_source(Path(args.data), args.preprocess),
        batch_size=args.batch_size,
        verbose=_has_tqdm(),
        backend="ray",
        model_spec=ModelSpec(args.model, args.weights, args.seed),
        num_workers=args.workers,
        address=args.address,
    )
    computer.save_npz(out, meta=meta)
    layers = computer.statistics.reducers if computer.statistics is not None else {}
    print(f"innspect: patterns of {len(layers)} layers from {n} samples on Ray -> {out}")
    return 0


def _saved_run(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["__patterns__"])).get("run", {})


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        print("innspect: install tqdm for a progress bar", file=sys.stderr)
        return False
    return True


class _DataSource:
    """Samples from a .npy file (memory-mapped) or a folder of one-sample files."""

    def __init__(self, path: Path, preprocess: str) -> None:
        self.preprocess = preprocess
        self.array: np.ndarray | None = None
        self.files: list[Path] = []
        if path.is_dir():
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
            if not self.files:
                raise CLIError(f"{path} holds no {', '.join(DATA_SUFFIXES)} files")
        elif path.is_file() and path.suffix.lower() == ".npy":
            try:
                self.array = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as error:  # noqa: BLE001 - any decoding failure is bad input
                raise CLIError(f"cannot read {path} as a .npy array: {error}") from error
            if self.array.ndim < 1 or len(self.array) == 0:
                raise CLIError(f"{path} holds no samples (shape {self.array.shape})")
            if self.array.dtype.kind not in "fiub":
                raise CLIError(f"{path} holds {self.array.dtype} values; numbers are needed")
        elif not path.exists():
            raise CLIError(f"data not found: {path}")
        else:
            raise CLIError(f"--data must be a .npy file or a folder of samples, got {path}")

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files)

    def sample(self, index: int) -> torch.Tensor:
        if self.array is not None:
            return torch.as_tensor(np.array(self.array[index], dtype=np.float32))
        return load_input(self.files[index], self.preprocess).tensor

    def batches(self, start: int, batch_size: int) -> Iterator[torch.Tensor]:
        for first in range(start, len(self), batch_size):
            last = min(first + batch_size, len(self))
            if self.array is not None:
                yield torch.as_tensor(np.array(self.array[first:last], dtype=np.float32))
            else:
                samples = [self.sample(i) for i in range(first, last)]
                shapes = {tuple(s.shape) for s in samples}
                if len(shapes) > 1:
                    raise CLIError(
                        f"samples {first}..{last - 1} of the data have different shapes {shapes}"
                    )
                yield torch.stack(samples)
