"""PatternComputer: the statistics pass that computes PatternNet / PatternAttribution patterns
(the formulas: ``innspect.patterns.statistics``), resumable, mergeable, and on Ray
(``backend="ray"``: ranges of the data reduced by workers, merged in a tree)."""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.distributed.reduce import reduce_on_ray
from innspect.engine.collect import Statistics, collect
from innspect.engine.reducers import Reducer
from innspect.errors import InputError, first_line
from innspect.graph.canonize import structure_stamp
from innspect.graph.graph import ModelGraph
from innspect.graph.ops import Kind
from innspect.loading.models import checked_model_spec
from innspect.loading.sources import as_source
from innspect.patterns.statistics import PATTERN_TYPES, PatternStatistics, pattern_layers
from innspect.util.batches import iter_batches, num_batches
from innspect.util.files import write_npz
from innspect.util.tensors import model_device_dtype


class PatternComputer:
    """Compute PatternNet / PatternAttribution patterns of ``model`` on data.

    Parameters
    ----------
    model
        The model (never modified). BatchNorm after a convolution is folded first, as in
        the pattern analyzers, so patterns belong to the folded layers.
    pattern_type
        "linear", "relu" (= "relu.positive"), "relu.negative" or "dummy" (see the module
        docstring).
    compute_dtype
        dtype of the per-batch products (None: the model's, e.g. float32 on a GPU); the sums
        across batches are always float64. "float64" makes every step float64.

    ``compute(X)`` / ``compute_generator(stream)`` return ``{layer name: pattern}`` (numpy,
    the weight's shape) and can be called again to add data; ``merge`` adds another
    computer's statistics; ``save_npz`` / ``load_npz`` keep statistics and patterns.
    """

    def __init__(
        self, model: nn.Module, pattern_type: str = "linear", compute_dtype: str | None = None
    ) -> None:
        if pattern_type not in PATTERN_TYPES:
            raise InputError(f"pattern_type must be one of {PATTERN_TYPES}, got {pattern_type!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.pattern_type = pattern_type
        self.compute_dtype = compute_dtype
        self.statistics: Statistics | None = None
        self._graph: ModelGraph | None = None

    # -- the graph and its layers ---------------------------------------------------------
    def graph(self, example_input: torch.Tensor | None = None) -> ModelGraph:
        if self._graph is None:
            # A model without linear layers gets no patterns (PatternNet is then the
            # gradient's walk started from the output value), as in iNNvestigate.
            self._graph = ModelGraph(self.model, example_input, fuse_batchnorm=True)
            self._structure = structure_stamp(self.model)
        elif structure_stamp(self.model) != self._structure:
            # Statistics gathered on other layers cannot be mixed with these.
            raise InputError(
                "the model's modules changed since this PatternComputer captured it (a "
                "submodule replaced, or an attribute such as bn.eps changed): make a new "
                "PatternComputer for the changed model"
            )
        else:
            self._graph.refresh()  # the model may have changed since (a training step)
        return self._graph

    def _reducers(self, graph: ModelGraph) -> dict[str, dict[str, Reducer]]:
        reducers: dict[str, dict[str, Reducer]] = {}
        for info in pattern_layers(graph):
            following = graph.following_activation(info)
            reducer = PatternStatistics(
                self.pattern_type, following.name if following else None, self.compute_dtype
            )
            reducers[info.name] = {"pattern": reducer}
        self._attach(graph, reducers)
        return reducers

    def _attach(self, graph: ModelGraph, reducers: Mapping[str, Mapping[str, Reducer]]) -> None:
        for name, rs in reducers.items():
            info = graph.by_name.get(name)
            if info is None or info.kind is not Kind.LINEAR:
                raise InputError(
                    f"these pattern statistics name layer '{name}', which this model does not have "
                    f"as a linear layer; its linear layers: {[i.name for i in pattern_layers(graph)]}"
                )
            reducer = rs["pattern"]
            assert isinstance(reducer, PatternStatistics)
            reducer.op = graph.linear_op(info)
            reducer.output_axis = -1 if reducer.op.extras.get("output_axis") == -1 else 1

    # -- computing ----------------------------------------------------------------------
    def compute(
        self,
        X: Any,
        batch_size: int = 32,
        verbose: bool = False,
        *,
        backend: str = "local",
        model_spec: Any = None,
        num_workers: int | None = None,
        address: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Accumulate statistics over ``X`` (array, tensor, ``(X, Y)``) in batches; return
        the patterns.

        ``backend="ray"`` reduces ranges of ``X`` (also a ``.npy``/HDF5 path or a torch
        Dataset) on ``num_workers`` Ray actors that build the model from ``model_spec``
        (``innspect.loading.models.ModelSpec`` or a spec string; it must give this computer's
        weights) and merges their statistics in a tree (``innspect.distributed``).
        """
        if backend == "ray":
            other = patterns_on_ray(self, X, model_spec, batch_size, num_workers, address, verbose)
            return self.merge(other).patterns()
        if backend != "local":
            raise InputError(f"backend must be 'local' or 'ray', got {backend!r}")
        return self.compute_generator(X, batch_size=batch_size, verbose=verbose)

    def compute_generator(
        self, generator: Any, verbose: bool = False, **kwargs: Any
    ) -> dict[str, np.ndarray]:
        """Accumulate statistics over a stream of batches (an iterable of ``x`` or ``(x, y)``,
        a DataLoader, or anything :func:`innspect.util.batches.iter_batches` takes); return the
        patterns. ``kwargs`` as for :meth:`update`."""
        self.update(generator, verbose=verbose, **kwargs)
        return self.patterns()

    def update(
        self,
        data: Any,
        verbose: bool = False,
        *,
        batch_size: int = 32,
        skip_batches: int = 0,
        on_batch: Any = None,
        total: int | None = None,
    ) -> None:
        """Accumulate statistics over ``data`` without computing the patterns.

        ``skip_batches`` / ``on_batch`` serve resumable runs (the CLI); ``total`` is the
        number of batches for the progress bar when the stream has no length.
        """
        generator = data
        device, dtype = model_device_dtype(self.model)
        total = num_batches(generator, batch_size) if total is None else total
        stream = iter_batches(generator, batch_size, device=device, dtype=dtype)
        first = next(stream)  # raises InputError on an empty data set
        graph = self.graph(first.x)
        if self.statistics is None:
            self.statistics = Statistics(self._reducers(graph))
        else:
            self._attach(graph, self.statistics.reducers)

        def chained():
            yield first
            yield from stream

        collect(
            graph,
            chained(),
            statistics=self.statistics,
            verbose=verbose,
            total=total,
            skip_batches=skip_batches,
            on_batch=on_batch,
        )

    def merge(self, other: PatternComputer) -> PatternComputer:
        """Add another computer's statistics (another shard of the data) to these."""
        if other.statistics is None:
            return self
        if other.pattern_type != self.pattern_type:
            raise InputError(
                f"cannot merge '{other.pattern_type}' statistics into '{self.pattern_type}' ones"
            )
        if self.statistics is None:
            self.statistics = Statistics({}, 0)
            self.statistics.reducers = {
                n: {k: r.fresh() for k, r in rs.items()} for n, rs in other.statistics.items()
            }
        self.statistics.merge(other.statistics)
        return self

    def patterns(self) -> dict[str, np.ndarray]:
        """``{layer name: pattern}`` from the statistics so far."""
        if self.statistics is None:
            raise InputError("no statistics yet: call compute(X) or compute_generator(data) first")
        graph = self.graph()
        self._attach(graph, self.statistics.reducers)
        result = {}
        for name, rs in self.statistics.items():
            reducer = rs["pattern"]
            assert isinstance(reducer, PatternStatistics)
            result[name] = reducer.pattern(graph.linear_op(graph.by_name[name]).weight)
        return result

    # -- files --------------------------------------------------------------------------
    def save_npz(
        self,
        path: str | os.PathLike,
        meta: dict[str, Any] | None = None,
        with_patterns: bool = True,
    ) -> None:
        """Write statistics and patterns to ``path`` (.npz) atomically; ``meta`` (JSON)
        describes the run (the CLI keeps its arguments there to resume safely).
        ``with_patterns=False`` writes the statistics only (a cheap checkpoint)."""
        if self.statistics is None:
            raise InputError("nothing to save: no statistics yet")
        arrays = self.statistics.to_arrays()
        if with_patterns:
            for name, pattern in self.patterns().items():
                arrays[f"pattern/{name}"] = pattern
        arrays["__patterns__"] = np.array(
            json.dumps(
                {"pattern_type": self.pattern_type, "run": meta or {}, "complete": with_patterns}
            )
        )
        write_npz(path, arrays)

    @classmethod
    def load_npz(cls, path: str | os.PathLike, model: nn.Module) -> PatternComputer:
        """A computer with the statistics saved in ``path``, ready to add data or merge."""
        arrays = _read_npz(path)
        if "__patterns__" not in arrays:
            raise InputError(f"{path} is not a PatternComputer file (no '__patterns__' entry)")
        try:
            meta = json.loads(str(arrays["__patterns__"]))
            computer = cls(model, meta["pattern_type"])
            computer.statistics = Statistics.from_arrays(arrays)
            computer.compute_dtype = next(
                (rs["pattern"].compute_dtype for rs in computer.statistics.values()), None
            )
        except InputError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
            raise InputError(
                f"{path} is damaged or not a PatternComputer file: {first_line(error)}"
            ) from error
        return computer


def _read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(f"patterns file {path} does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        # An empty, truncated or foreign file: numpy's own error says which.
        raise InputError(f"cannot read patterns file {path}: {first_line(error)}") from error


def load_patterns(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The ``{layer name: pattern}`` stored in a PatternComputer or pattern analyzer file."""
    arrays = _read_npz(path)
    found = {k[len("pattern/") :]: v for k, v in arrays.items() if k.startswith("pattern/")}
    if not found:
        found = {
            k[len("state/pattern/") :]: v
            for k, v in arrays.items()
            if k.startswith("state/pattern/")
        }
    if "__patterns__" in arrays and json.loads(str(arrays["__patterns__"])).get("complete", True):
        return found  # a finished run (no entries: a model without linear layers)
    if "__patterns__" in arrays:
        raise InputError(
            f"{path} holds the statistics of an unfinished run: rerun `innspect patterns "
            "compute` with the same arguments to finish it, or use "
            "PatternComputer.load_npz(path, model).patterns()"
        )
    if not found and "state/fitted" not in arrays:  # a fitted analyzer's save_npz has it
        raise InputError(f"{path} holds no patterns (write one with PatternComputer.save_npz)")
    return found


# -- Ray -------------------------------------------------------------------------------------
class PatternJob:
    """PatternComputer statistics of a range of samples (the computer and its captured
    graph stay in the worker's cache)."""

    def __init__(self, source: Any, pattern_type: str, compute_dtype: Any, batch_size: int):
        self.token = uuid.uuid4().hex  # the worker's cache is this job's only
        self.source, self.pattern_type = source, pattern_type
        self.compute_dtype, self.batch_size = compute_dtype, batch_size

    def __call__(self, model: Any, cache: dict, start: int, stop: int) -> dict[str, np.ndarray]:

        computer = cache.get("patterns")
        if computer is None:
            computer = PatternComputer(model, self.pattern_type, self.compute_dtype)
            cache["patterns"] = computer
        computer.statistics = None
        x, y = self.source.read(start, stop)
        computer.update(x if y is None else (x, y), batch_size=self.batch_size)
        return computer.statistics.to_arrays()


def patterns_on_ray(
    computer: PatternComputer,
    data: Any,
    model_spec: Any,
    batch_size: int,
    num_workers: int | None,
    address: str | None,
    verbose: bool,
) -> PatternComputer:
    """A PatternComputer holding the statistics of ``data`` reduced on Ray."""
    source = as_source(data)
    example = source.read(0, 1)[0]
    spec, fingerprint = checked_model_spec(computer.model, model_spec, example)
    job = PatternJob(source, computer.pattern_type, computer.compute_dtype, batch_size)
    statistics = reduce_on_ray(
        spec, example, fingerprint, job, len(source), batch_size, num_workers, address, verbose
    )
    result = PatternComputer(computer.model, computer.pattern_type, computer.compute_dtype)
    result.statistics = statistics
    return result
