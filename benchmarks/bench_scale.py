"""The `--only scale` group of benchmarks/run.py (issue 17, "Speed").

Throughput (samples/s) of ``explain_dataset`` with ``lrp.epsilon`` on resnet18 at 64 x 64:
the local backend (one thread) against Ray with 1 and 2 workers (one thread each), and Ray's
overhead per sample at one worker relative to the local cost (target < 10 %).

Both backends are measured alike: a short run (one shard per worker) and the whole run, each
into a fresh folder; the per-sample cost in the table is the *marginal* one,
``(T(all) - T(short)) / (samples - short)``, which leaves out what every run pays once (model
build and graph capture locally; the capture on Ray's actors, which outlive runs and are
started by a first run of their own). The start-up is reported on its own.
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

    from innspect.distributed.dataset import explain_dataset

    torch.manual_seed(0)
    import torchvision

    folder = Path(tempfile.mkdtemp(prefix="innspect-scale-"))
    weights = folder / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    data = np.random.default_rng(0).normal(size=(samples, 3, size, size)).astype(np.float32)
    options = {"weights": str(weights), "shard_size": shard, "batch_size": batch, "verbose": False}
    torch.set_num_threads(1)

    def run(name: str, rows: int, **backend: object) -> float:
        return _timed(explain_dataset, SPEC, data[:rows], METHOD, folder / name, **backend,
                      **options)  # fmt: skip

    times = {"short local": run("short-local", shard), "local": run("local", samples)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})  # fmt: skip
    try:
        for workers in (1, 2):
            ray_options = {"backend": "ray", "num_workers": workers}
            # Actors outlive a run on a Ray instance the caller started: the first run
            # starts them, the short and whole runs both find them warm.
            times[f"start ray {workers}"] = run(f"start{workers}", shard * workers, **ray_options)
            times[f"short ray {workers}"] = run(f"short{workers}", shard * workers, **ray_options)
            times[f"ray {workers}"] = run(f"ray{workers}", samples, **ray_options)
    finally:
        ray.shutdown()
    times.update(samples=samples, shard=shard)
    return times


def section(samples: int, size: int, shard: int, batch: int) -> str:
    """The markdown section of the scale group."""
    t = measure(samples, size, shard, batch)

    def marginal(key: str, short_rows: int) -> float:
        """Seconds per sample beyond the short run (start-up excluded)."""
        return (t[key] - t[f"short {key}"]) / (samples - short_rows)

    local = marginal("local", shard)
    lines = [
        f"## Data-set scale: {METHOD} on resnet18, {size} x {size}, {samples} samples "
        f"(shards of {shard}, batches of {batch})\n",
        "| backend | samples/s (marginal) | s per sample (marginal) | vs local | whole run s |",
        "|---|---:|---:|---:|---:|",
        f"| local (1 thread) | {1 / local:.1f} | {local:.4f} | 1.00x | {t['local']:.1f} |",
    ]
    per_worker = {}
    for workers in (1, 2):
        per = per_worker[workers] = marginal(f"ray {workers}", shard * workers)
        lines.append(
            f"| ray, {workers} worker(s) | {1 / per:.1f} | {per:.4f} | {local / per:.2f}x | "
            f"{t[f'ray {workers}']:.1f} |"
        )
    overhead = per_worker[1] / local - 1
    verdict = "met" if overhead < 0.10 else "NOT met"
    start_up = {
        "local (model build, capture)": t["short local"] - shard * local,
        "1 Ray worker (actor start, model build, capture)": t["start ray 1"]
        - shard * per_worker[1],
        "2 Ray workers": t["start ray 2"] - 2 * shard * per_worker[2],
    }
    lines += [
        "",
        f"Ray overhead per sample at one worker: {overhead:+.1%} of the local cost "
        f"(target < 10 %: {verdict}). Marginal: each backend's whole run less its short run "
        "(one shard per worker), per sample, every run into a fresh folder; Ray's actors were "
        "started by a run before both. Start-up, the first run less its samples' marginal "
        "cost: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in start_up.items()) + ".",
        "",
    ]
    return "\n".join(lines)
