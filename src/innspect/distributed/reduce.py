"""Statistics passes on Ray: each worker reduces its ranges of the data, the driver merges
the results in a tree (pairs, then pairs of pairs), so the sum of N ranges is computed in
log2(N) rounds of the same ``Statistics.merge`` the local backend's resumable runs use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from innspect.distributed.ray_backend import run_jobs
from innspect.engine.collect import Statistics
from innspect.util.progress import progress_bar


def tree_merge(parts: Sequence[Statistics]) -> Statistics:
    """Merge statistics of consecutive ranges pairwise, round by round, in order."""
    level = list(parts)
    if not level:
        raise ValueError("nothing to merge")
    while len(level) > 1:
        merged = [level[i].merge(level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            merged.append(level[-1])
        level = merged
    return level[0]


def chunk_ranges(n: int, workers: int, batch_size: int) -> list[tuple[int, int]]:
    """About four ranges per worker (a dead worker loses little), whole batches each."""
    batches = -(-n // batch_size)
    per = max(1, -(-batches // (4 * workers))) * batch_size
    return [(s, min(s + per, n)) for s in range(0, n, per)]


def reduce_on_ray(
    spec: Any,
    example: np.ndarray,
    fingerprint: str,
    job: Any,
    n: int,
    batch_size: int,
    num_workers: int | None,
    address: str | None,
    verbose: bool,
) -> Statistics:
    """Run a statistics ``job`` (returns ``Statistics.to_arrays()`` of its range) over ``n``
    samples on Ray and merge the parts in a tree."""
    ranges = chunk_ranges(n, num_workers or 2, batch_size)
    parts: dict[int, Statistics] = {}
    bar = progress_bar(n, verbose, desc="statistics", unit="sample")

    def on_result(i: int, arrays: dict[str, np.ndarray]) -> None:
        # Arrays from Ray's object store are read-only views: copy before merging into them.
        parts[i] = Statistics.from_arrays({k: np.array(v) for k, v in arrays.items()})
        if bar is not None:
            bar.update(ranges[i][1] - ranges[i][0])

    run_jobs(spec, example, fingerprint, job, ranges, on_result, num_workers, address)
    if bar is not None:
        bar.close()
    return tree_merge([parts[i] for i in range(len(ranges))])
