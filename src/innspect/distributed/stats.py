"""Statistics passes on Ray: each worker reduces its ranges of the data, the driver merges
the results in a tree (pairs, then pairs of pairs), so the sum of N ranges is computed in
log2(N) rounds of the same ``Statistics.merge`` the local backend's resumable runs use."""

from __future__ import annotations

import os
import uuid
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
        # Arrays from Ray's object store are read-only views: copy before merging into them.
        parts[i] = Statistics.from_arrays({k: np.array(v) for k, v in arrays.items()})
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
        self.token = uuid.uuid4().hex  # the worker's cache is this job's only
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
        self.token = uuid.uuid4().hex
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


def _spec_and_fingerprint(model: Any, model_spec: Any, example: np.ndarray) -> tuple[Any, str]:
    """The ModelSpec workers build from, checked to give ``model``'s weights."""
    import torch

    from innspect.dataset import ModelSpec, model_fingerprint
    from innspect.errors import InputError

    if isinstance(model_spec, str):
        model_spec = ModelSpec(model_spec)
    if not isinstance(model_spec, ModelSpec):
        raise InputError(
            "backend='ray' builds the model on each worker: give model_spec=ModelSpec("
            "'package.module:factory' | 'torchvision:NAME' | TorchScript file, weights='state.pt')"
        )
    fingerprint = model_fingerprint(model)
    if model_fingerprint(model_spec.load(torch.as_tensor(example))) != fingerprint:
        raise InputError(
            f"model_spec {model_spec.spec} (weights {model_spec.weights}) does not build this "
            "model: its weights differ; save model.state_dict() and give that file as weights"
        )
    return model_spec, fingerprint


def patterns_on_ray(
    computer: Any,
    data: Any,
    model_spec: Any,
    batch_size: int,
    num_workers: int | None,
    address: str | None,
    verbose: bool,
) -> Any:
    """A PatternComputer holding the statistics of ``data`` reduced on Ray."""
    from innspect.dataset import as_source
    from innspect.tools.patterns import PatternComputer

    source = as_source(data)
    example = source.read(0, 1)[0]
    spec, fingerprint = _spec_and_fingerprint(computer.model, model_spec, example)
    job = PatternJob(source, computer.pattern_type, computer.compute_dtype, batch_size)
    statistics = reduce_on_ray(
        spec, example, fingerprint, job, len(source), batch_size, num_workers, address, verbose
    )
    result = PatternComputer(computer.model, computer.pattern_type, computer.compute_dtype)
    result.statistics = statistics
    return result


def naps_on_ray(
    model: Any,
    data: Any,
    groups: Any,
    layers: Any,
    reducers: dict,
    registry: Any,
    options: dict,
    model_spec: Any,
    num_workers: int | None,
    address: str | None,
    verbose: bool,
) -> Statistics:
    """NAP statistics of arrays with group labels, reduced on Ray. The driver maps the
    labels to integer ids in order of appearance (as the local pass does) before any worker
    starts, so every worker keys its sums the same way."""
    from innspect.dataset import ArraySource
    from innspect.errors import InputError

    if isinstance(data, str | os.PathLike):
        return _corpus_on_ray(
            model, data, layers, reducers, registry, options, model_spec, num_workers, address,
            verbose,
        )  # fmt: skip
    if isinstance(data, tuple) and len(data) == 2 and groups is None:
        data, groups = data
    if groups is None or isinstance(data, str | bytes) or not hasattr(data, "shape"):
        raise InputError(
            "introspect.collect with backend='ray' takes arrays with groups=..., an "
            "(X, groups) tuple or a corpus folder (a stream runs on the local backend)"
        )
    ids = registry.ids(groups).numpy()
    source = ArraySource(data, ids)
    example = source.read(0, 1)[0]
    spec, fingerprint = _spec_and_fingerprint(model, model_spec, example)
    job = NapJob(source, layers, reducers, options)
    batch_size = options["batch_size"]
    return reduce_on_ray(
        spec, example, fingerprint, job, len(source), batch_size, num_workers, address, verbose
    )


class CorpusJob:
    """NAP reducers of a range of corpus rows (one ``.npy`` batch file and group each, and
    optionally the output index whose gradient is taken), as the local corpus pass does."""

    def __init__(self, rows: list, layers: Any, reducers: dict, options: dict) -> None:
        self.token = uuid.uuid4().hex
        self.rows, self.layers, self.reducers, self.options = rows, layers, reducers, options

    def __call__(self, model: Any, cache: dict, start: int, stop: int) -> dict[str, np.ndarray]:
        import torch

        from innspect.engine.collect import collect
        from innspect.graph.graph import ModelGraph
        from innspect.introspect.collect import _layers, _target_index

        statistics = None
        for file, group, output_index in self.rows[start:stop]:
            x = np.load(file, allow_pickle=False)
            if "graph" not in cache:
                cache["graph"] = ModelGraph(model, torch.as_tensor(x[:1]))
            graph = cache["graph"]
            options = dict(self.options)
            if output_index is not None and options.get("target") is None:
                options["target"] = _target_index(output_index)
            ids = np.full(len(x), group, dtype=np.int64)
            statistics = collect(
                graph, (x, ids), nodes=_layers(graph, self.layers), reducers=self.reducers,
                statistics=statistics, **options,
            )  # fmt: skip
        assert statistics is not None
        return statistics.to_arrays()


def _corpus_on_ray(
    model: Any,
    folder: Any,
    layers: Any,
    reducers: dict,
    registry: Any,
    options: dict,
    model_spec: Any,
    num_workers: int | None,
    address: str | None,
    verbose: bool,
) -> Statistics:
    """An iNNtrospect corpus folder reduced on Ray, a range of rows per task; group ids are
    assigned in row order, as the local pass assigns them."""
    from innspect.introspect.corpus import read_corpus_csv

    rows = read_corpus_csv(folder)
    ids = registry.ids([row.group for row in rows]).tolist()
    table = [(str(r.file), g, r.output_index) for r, g in zip(rows, ids, strict=True)]
    example = np.asarray(np.load(table[0][0], allow_pickle=False)[:1], dtype=np.float32)
    spec, fingerprint = _spec_and_fingerprint(model, model_spec, example)
    job = CorpusJob(table, layers, reducers, options)
    return reduce_on_ray(
        spec, example, fingerprint, job, len(table), 1, num_workers, address, verbose
    )
