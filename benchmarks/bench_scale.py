"""The `--only scale` group of benchmarks/run.py (issue 17, "Speed").

Throughput (samples/s) of ``explain_dataset`` with ``lrp.epsilon`` on resnet18 at 64 x 64:
the local backend (one thread) against Ray with 1 and 2 workers (one thread each), and Ray's
overhead per sample at one worker relative to the local cost (target < 10 %). Ray's workers
are started (model built, graph captured) by a warm-up run first: the table compares the
steady state, and the start-up is reported on its own.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SPEC = "torchvision:resnet18"
METHOD = "lrp.epsilon"


def _timed(run, *args, **kwargs) -> float:
    start = time.perf_counter()
    run(*args, **kwargs)
    return time.perf_counter() - start


def measure(samples: int, size: int, shard: int, batch: int) -> dict[str, float]:
    """Seconds for ``samples`` images per backend (and Ray's start-up), in one process."""
    import ray

    from innspect.dataset import explain_dataset

    torch.manual_seed(0)
    import torchvision

    folder = Path(tempfile.mkdtemp(prefix="innspect-scale-"))
    weights = folder / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    data = np.random.default_rng(0).normal(size=(samples, 3, size, size)).astype(np.float32)
    options = {"weights": str(weights), "shard_size": shard, "batch_size": batch, "verbose": False}
    torch.set_num_threads(1)
    times = {"local": _timed(explain_dataset, SPEC, data, METHOD, folder / "local", **options)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})  # fmt: skip
    try:
        for workers in (1, 2):
            warm = data[: shard * workers]
            times[f"start {workers}"] = _timed(
                explain_dataset, SPEC, warm, METHOD, folder / f"warm{workers}", backend="ray",
                num_workers=workers, **options,
            )  # fmt: skip
            times[f"ray {workers}"] = _timed(
                explain_dataset, SPEC, data, METHOD, folder / f"ray{workers}", backend="ray",
                num_workers=workers, **options,
            )  # fmt: skip
    finally:
        ray.shutdown()
    return times


def section(samples: int, size: int, shard: int, batch: int) -> str:
    """The markdown section of the scale group."""
    t = measure(samples, size, shard, batch)
    local = t["local"] / samples
    lines = [
        f"## Data-set scale: {METHOD} on resnet18, {size} x {size}, {samples} samples "
        f"(shards of {shard}, batches of {batch})\n",
        "| backend | samples/s | s per sample | vs local |",
        "|---|---:|---:|---:|",
        f"| local (1 thread) | {samples / t['local']:.1f} | {local:.4f} | 1.00x |",
    ]
    for workers in (1, 2):
        per = t[f"ray {workers}"] / samples
        lines.append(
            f"| ray, {workers} worker(s) | {samples / t[f'ray {workers}']:.1f} | {per:.4f} | "
            f"{local / per:.2f}x |"
        )
    overhead = t["ray 1"] / t["local"] - 1
    verdict = "met" if overhead < 0.10 else "NOT met"
    lines += [
        "",
        f"Ray overhead per sample at one worker: {overhead:+.1%} of the local cost "
        f"(target < 10 %: {verdict}). Worker start-up (model build, capture) is outside the "
        f"table: {t['start 1']:.1f} s for 1 worker, {t['start 2']:.1f} s for 2 (warm-up runs).",
        "",
    ]
    return "\n".join(lines)
