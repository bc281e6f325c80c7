"""Statistics passes on Ray: each worker reduces its ranges of the data, the driver merges
the results in a tree (pairs, then pairs of pairs), so the sum of N ranges is computed in
log2(N) rounds of the same ``Statistics.merge`` the local backend's resumable runs use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from innspect.engine.collect import Statistics


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
    from innspect.distributed.ray_backend import run_jobs

    ranges = chunk_ranges(n, num_workers or 2, batch_size)
    parts: dict[int, Statistics] = {}
    bar = None
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="statistics", unit="sample")

    def on_result(i: int, arrays: dict[str, np.ndarray]) -> None:
        parts[i] = Statistics.from_arrays(arrays)
        if bar is not None:
            bar.update(ranges[i][1] - ranges[i][0])

    run_jobs(spec, example, fingerprint, job, ranges, on_result, num_workers, address)
    if bar is not None:
        bar.close()
    return tree_merge([parts[i] for i in range(len(ranges))])


class PatternJob:
    """PatternComputer statistics of a range of samples (the computer and its captured
    graph stay in the worker's cache)."""

    def __init__(self, source: Any, pattern_type: str, compute_dtype: Any, batch_size: int):
        self.source, self.pattern_type = source, pattern_type
        self.compute_dtype, self.batch_size = compute_dtype, batch_size

    def __call__(self, model: Any, cache: dict, start: int, stop: int) -> dict[str, np.ndarray]:
        from innspect.tools.patterns import PatternComputer

        computer = cache.get("patterns")
        if computer is None:
            computer = PatternComputer(model, self.pattern_type, self.compute_dtype)
            cache["patterns"] = computer
        computer.statistics = None
        x, y = self.source.read(start, stop)
        computer.update(x if y is None else (x, y), batch_size=self.batch_size)
        return computer.statistics.to_arrays()


class NapJob:
    """NAP reducers of a range of samples, labelled with the driver's integer group ids."""

    def __init__(self, source: Any, layers: Any, reducers: dict, options: dict) -> None:
        self.source, self.layers, self.reducers, self.options = source, layers, reducers, options

    def __call__(self, model: Any, cache: dict, start: int, stop: int) -> dict[str, np.ndarray]:
        import torch

        from innspect.engine.collect import collect
        from innspect.graph.graph import ModelGraph
        from innspect.introspect.collect import _layers

        x, ids = self.source.read(start, stop)
        if "graph" not in cache:
            cache["graph"] = ModelGraph(model, torch.as_tensor(x[:1]))
        graph = cache["graph"]
        statistics = collect(  # each node gets fresh copies of the reducers
            graph,
            (x, ids),
            nodes=_layers(graph, self.layers),
            reducers=self.reducers,
            **self.options,
        )
        return statistics.to_arrays()
