"""Neuron activation profiles on Ray: arrays with group labels or an iNNtrospect corpus
folder, reduced by ranges on the workers and merged in a tree
(``innspect.distributed.reduce``)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np
import torch

from innspect.distributed.reduce import reduce_on_ray
from innspect.engine.collect import Statistics, collect
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph
from innspect.introspect.corpus import read_corpus_csv
from innspect.introspect.layers import observed_layers, output_index_target
from innspect.loading.models import checked_model_spec
from innspect.loading.sources import ArraySource


class NapJob:
    """NAP reducers of a range of samples, labelled with the driver's integer group ids."""

    def __init__(self, source: Any, layers: Any, reducers: dict, options: dict) -> None:
        self.token = uuid.uuid4().hex
        self.source, self.layers, self.reducers, self.options = source, layers, reducers, options

    def __call__(self, model: Any, cache: dict, start: int, stop: int) -> dict[str, np.ndarray]:

        x, ids = self.source.read(start, stop)
        if "graph" not in cache:
            cache["graph"] = ModelGraph(model, torch.as_tensor(x[:1]))
        graph = cache["graph"]
        statistics = collect(  # each node gets fresh copies of the reducers
            graph,
            (x, ids),
            nodes=observed_layers(graph, self.layers),
            reducers=self.reducers,
            **self.options,
        )
        return statistics.to_arrays()


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
    spec, fingerprint = checked_model_spec(model, model_spec, example)
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

        statistics = None
        for file, group, output_index in self.rows[start:stop]:
            x = np.load(file, allow_pickle=False)
            if "graph" not in cache:
                cache["graph"] = ModelGraph(model, torch.as_tensor(x[:1]))
            graph = cache["graph"]
            options = dict(self.options)
            if output_index is not None and options.get("target") is None:
                options["target"] = output_index_target(output_index)
            ids = np.full(len(x), group, dtype=np.int64)
            statistics = collect(
                graph, (x, ids), nodes=observed_layers(graph, self.layers), reducers=self.reducers,
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

    rows = read_corpus_csv(folder)
    ids = registry.ids([row.group for row in rows]).tolist()
    table = [(str(r.file), g, r.output_index) for r, g in zip(rows, ids, strict=True)]
    example = np.asarray(np.load(table[0][0], allow_pickle=False)[:1], dtype=np.float32)
    spec, fingerprint = checked_model_spec(model, model_spec, example)
    job = CorpusJob(table, layers, reducers, options)
    return reduce_on_ray(
        spec, example, fingerprint, job, len(table), 1, num_workers, address, verbose
    )
