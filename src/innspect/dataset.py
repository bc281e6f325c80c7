"""Attributions for a whole data set, written as resumable shards (``explain_dataset``).

The samples are cut into shards of ``shard_size``; each shard's attributions (per method:
the attribution, the selected output neuron and its score) go to one HDF5 file, written
atomically, and an ``index.json`` lists the shards with their sample ranges and SHA-256
checksums. The index also records the model (a fingerprint of its weights), the methods and
their options, the batch and shard sizes and the data's length and sample shape: a second
call with the same ``out`` skips the shards whose checksum still matches, redoes missing or
corrupted ones, and refuses a folder written for another model, method set or data.

A shard is computed batch by batch from its first sample by :class:`ShardRunner`, the same
code on every backend, so a shard's bytes do not depend on the backend or on which worker
computed it. ``backend="ray"`` (``innspect.distributed``) runs ShardRunners as Ray actors.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.errors import InputError
from innspect.fileio import atomic_path, write_text

INDEX_NAME = "index.json"
FORMAT = "innspect-dataset/1"


# -- data sources ------------------------------------------------------------------------------
class DataSource:
    """Random access to a data set's samples: ``len``, ``sample_shape`` and ``read``.

    Sources are small and picklable (a path, or the arrays themselves), so a worker can read
    its own shards.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Inputs (float32, samples first) and labels (or None) of samples [start, stop)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short description for the index (informative only, not compared on resume)."""
        return type(self).__name__

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (from the first one)."""
        return tuple(self.read(0, 1)[0].shape[1:])


def _float32(x: Any, what: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.dtype.kind not in "fiub":
        raise InputError(f"{what} must be numeric, got an array of dtype {array.dtype}")
    return np.array(array, dtype=np.float32, order="C")  # a copy: never a read-only memmap view


class ArraySource(DataSource):
    """In-memory inputs (numpy or torch), optionally with labels."""

    def __init__(self, x: Any, y: Any = None) -> None:
        self.x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        self.y = None if y is None else np.asarray(y)
        if self.x.ndim == 0:
            raise InputError("data must have samples on its first axis, got a scalar")
        if self.y is not None and len(self.y) != len(self.x):
            raise InputError(f"{len(self.x)} samples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        y = None if self.y is None else self.y[start:stop]
        return _float32(self.x[start:stop], "data"), y

    def describe(self) -> str:
        return f"array {tuple(self.x.shape)}"


class NpySource(DataSource):
    """A ``.npy`` file, memory-mapped (samples on the first axis)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._array: np.ndarray | None = None
        if len(self) == 0:
            raise InputError(f"{self.path} holds no samples")

    def _open(self) -> np.ndarray:
        if self._array is None:
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise InputError(f"cannot read {self.path} as a .npy array: {error}") from error
        return self._array

    def __getstate__(self) -> dict:
        return {"path": self.path, "_array": None}

    def __len__(self) -> int:
        return len(self._open())

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        return _float32(self._open()[start:stop], self.path), None

    def describe(self) -> str:
        return f"npy {self.path}"


class H5Source(DataSource):
    """An HDF5 file: inputs in dataset ``key`` (default "x"), labels in "y" when present."""

    def __init__(self, path: str | os.PathLike, key: str | None = None) -> None:
        import h5py

        self.path = str(path)
        try:
            with h5py.File(self.path, "r") as handle:
                names = [k for k in handle if isinstance(handle[k], h5py.Dataset)]
                self.key = key or ("x" if "x" in names else (names[0] if len(names) == 1 else ""))
                if self.key not in names:
                    raise InputError(
                        f"{self.path}: no dataset '{key or 'x'}' (it has {names}); name the "
                        "inputs' dataset with key=..."
                    )
                self.length = len(handle[self.key])
                self.has_labels = "y" in names and self.key != "y"
        except OSError as error:
            raise InputError(f"cannot read {self.path} as HDF5: {error}") from error

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        import h5py

        with h5py.File(self.path, "r") as handle:
            x = _float32(handle[self.key][start:stop], self.path)
            y = np.asarray(handle["y"][start:stop]) if self.has_labels else None
        return x, y

    def describe(self) -> str:
        return f"hdf5 {self.path}:{self.key}"


class ImageFolderSource(DataSource):
    """The images (PNG/JPEG) and .npy files of a folder, in name order, preprocessed as
    ``innspect analyze`` does (``preprocess`` "imagenet" or "none")."""

    def __init__(self, folder: str | os.PathLike, preprocess: str) -> None:
        from innspect.cli_loading import CLIError, input_files

        try:
            files, _ = input_files([str(folder)])
        except CLIError as error:
            raise InputError(str(error)) from error
        self.files = [str(f) for f in files]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        from innspect.cli_loading import CLIError, load_input

        try:
            tensors = [load_input(f, self.preprocess).tensor for f in self.files[start:stop]]
        except CLIError as error:
            raise InputError(str(error)) from error
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise InputError(
                f"images {start}..{stop - 1} have different shapes {sorted(shapes)}: use "
                "preprocess='imagenet' (resize and crop) or images of one size"
            )
        return _float32(torch.stack(tensors), "images"), None

    def describe(self) -> str:
        return f"folder {Path(self.files[0]).parent} ({self.preprocess})"


class TorchDatasetSource(DataSource):
    """A map-style ``torch.utils.data.Dataset`` giving ``x`` or ``(x, y, ...)`` per index."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        xs, ys = [], []
        for i in range(start, stop):
            item = self.dataset[i]
            if isinstance(item, tuple | list):
                xs.append(_float32(item[0], f"sample {i}"))
                ys.append(np.asarray(item[1]) if len(item) > 1 else None)
            else:
                xs.append(_float32(item, f"sample {i}"))
                ys.append(None)
        y = None if any(v is None for v in ys) else np.stack(ys)
        return np.stack(xs), y

    def describe(self) -> str:
        return f"dataset {type(self.dataset).__name__}"


def as_source(data: Any, preprocess: str = "none", key: str | None = None) -> DataSource:
    """``data`` as a DataSource: an array/tensor or ``(X, Y)`` pair, a ``.npy`` or HDF5
    (``.h5``/``.hdf5``) path, a folder of images, or a map-style torch ``Dataset``."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, np.ndarray | torch.Tensor):
        return ArraySource(data)
    if isinstance(data, tuple) and len(data) == 2:
        return ArraySource(*data)
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            return ImageFolderSource(path, preprocess)
        if not path.is_file():
            raise InputError(f"data not found: {path}")
        if path.suffix.lower() == ".npy":
            return NpySource(path)
        if path.suffix.lower() in (".h5", ".hdf5"):
            return H5Source(path, key)
        raise InputError(f"cannot read data {path}: give a .npy or .h5 file or a folder")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return TorchDatasetSource(data)
    raise InputError(
        f"cannot read data of type {type(data).__name__}: give an array, an (X, Y) pair, a "
        ".npy/.h5 path, a folder of images or a map-style torch Dataset"
    )


# -- models ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """How a worker builds the model: ``spec`` as ``innspect analyze --model`` takes it
    (a TorchScript file, ``torchvision:NAME`` or ``package.module:factory``) plus a state
    dict file loaded with ``weights_only=True``. Never a pickled module."""

    spec: str
    weights: str | None = None
    seed: int = 0

    def load(self, example: torch.Tensor | None = None) -> nn.Module:
        """Build the model in eval mode (seeded, so random weights are the same everywhere)."""
        from innspect.cli_loading import CLIError, load_model

        try:
            return load_model(self.spec, self.weights, example=example, seed=self.seed).module
        except CLIError as error:
            raise InputError(str(error)) from error


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class name and its state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(array.numpy().tobytes() if array.dtype != torch.bfloat16 else b"bf16")
    return digest.hexdigest()


# -- computing one shard -----------------------------------------------------------------------
class ShardRunner:
    """Builds each method's analyzer once (the captured graph is kept across shards) and
    computes shards: per method the attribution, the selected neuron and its score."""

    def __init__(
        self,
        model: nn.Module | ModelSpec,
        source: DataSource,
        methods: Sequence[str],
        options: dict[str, dict[str, Any]],
        batch_size: int,
        neuron: int | None,
        num_threads: int | None = None,
        relevances: Sequence[str] = (),
    ) -> None:
        from innspect.analyzers.registry import create_analyzer

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.source = source
        if isinstance(model, ModelSpec):
            model = model.load(torch.as_tensor(source.read(0, 1)[0]))
        self.model = model
        self.fingerprint = model_fingerprint(model)
        self.batch_size = batch_size
        self.neuron = neuron
        self.options = options
        self.relevances = list(relevances)
        self.analyzers = {m: create_analyzer(m, model, **options.get(m, {})) for m in methods}

    def compute(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Arrays of samples [start, stop), batch by batch from ``start``."""
        parts: dict[str, list[np.ndarray]] = {}
        for first in range(start, stop, self.batch_size):
            # NumPy in: the analyzers put it on the model's device (a worker's GPU too).
            x, y = self.source.read(first, min(first + self.batch_size, stop))
            if y is not None:
                parts.setdefault("labels", []).append(np.asarray(y))
            for method, analyzer in self.analyzers.items():
                explanation = analyzer.explain(x, self.neuron)
                parts.setdefault(f"{method}/attribution", []).append(
                    explanation.attribution.detach().cpu().numpy().astype(np.float32)
                )
                selected = explanation.selected
                if selected is not None:
                    parts.setdefault(f"{method}/selected", []).append(
                        selected.detach().cpu().numpy().astype(np.int64)
                    )
                parts.setdefault(f"{method}/scores", []).append(
                    explanation.scores.detach().cpu().numpy().astype(np.float64)
                )
                for node in self.relevances:
                    if node not in explanation.relevances:
                        raise InputError(
                            f"{method} has no layer-wise relevance at node '{node}'; nodes: "
                            f"{', '.join(explanation.relevances)}"
                        )
                    value = explanation.relevances[node].detach().cpu().numpy()
                    parts.setdefault(f"{method}/relevances/{node}", []).append(
                        value.astype(np.float32)
                    )
        return {name: np.concatenate(values) for name, values in parts.items()}


def write_shard(path: Path, arrays: dict[str, np.ndarray], start: int, stop: int) -> str:
    """Write one shard atomically; returns its SHA-256. No timestamps: same arrays, same bytes."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as handle:
            handle.attrs["start"] = start
            handle.attrs["stop"] = stop
            for name in sorted(arrays):
                handle.create_dataset(name, data=arrays[name], track_times=False)
        checksum = file_sha256(tmp)
    return checksum


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_shards(out: str | os.PathLike) -> dict[str, np.ndarray]:
    """All shards of a finished run, concatenated in sample order (for small data sets)."""
    import h5py

    index = json.loads((Path(out) / INDEX_NAME).read_text(encoding="utf-8"))
    parts: dict[str, list[np.ndarray]] = {}
    for shard in index["shards"]:
        if shard.get("sha256") is None:
            raise InputError(f"{out}: shard {shard['file']} is not finished; run again to resume")
        with h5py.File(Path(out) / shard["file"], "r") as handle:
            handle.visititems(
                lambda name, obj: (
                    parts.setdefault(name, []).append(obj[()])
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
    return {name: np.concatenate(values) for name, values in parts.items()}


# -- the index ---------------------------------------------------------------------------------
def _header(
    fingerprint: str,
    source: DataSource,
    methods: Sequence[str],
    options: dict[str, dict[str, Any]],
    batch_size: int,
    shard_size: int,
    neuron: int | None,
) -> dict[str, Any]:
    from innspect.cli_analyze import _jsonable

    return {
        "format": FORMAT,
        "model": fingerprint,
        "methods": list(methods),
        "options": {m: _jsonable(options.get(m, {})) for m in methods},
        "neuron": neuron,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "samples": len(source),
        "sample_shape": list(source.sample_shape),
    }


class ShardIndex:
    """``index.json`` of an output folder: the run's header and each shard's range and
    checksum (None until the shard is written). Rewritten atomically after every shard."""

    def __init__(self, out: Path, header: dict[str, Any], data: str) -> None:
        self.out = out
        self.header = header
        self.data = data
        self.path = out / INDEX_NAME
        n, size = header["samples"], header["shard_size"]
        self.shards = [
            {"file": f"shard-{i:05d}.h5", "start": s, "stop": min(s + size, n), "sha256": None}
            for i, s in enumerate(range(0, n, size))
        ]
        if self.path.exists():
            self._resume()

    def _resume(self) -> None:
        try:
            old = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(f"{self.path} is not a readable index: {error}") from error
        differing = [k for k in self.header if old.get("header", {}).get(k) != self.header[k]]
        if differing:
            details = "; ".join(
                f"{k}: folder has {old.get('header', {}).get(k)!r}, this run {self.header[k]!r}"
                for k in differing
            )
            raise InputError(
                f"{self.out} holds shards of another run ({details}); give another out folder "
                "or delete this one"
            )
        done = {s["file"]: s.get("sha256") for s in old.get("shards", [])}
        for shard in self.shards:
            shard["sha256"] = done.get(shard["file"])

    def pending(self) -> list[int]:
        """Shards to compute: never written, missing, or whose bytes fail their checksum."""
        todo = []
        for i, shard in enumerate(self.shards):
            path = self.out / shard["file"]
            if shard["sha256"] is None or not path.is_file():
                todo.append(i)
            elif file_sha256(path) != shard["sha256"]:
                import warnings

                warnings.warn(
                    f"{path} does not match its checksum (corrupted); computing it again",
                    stacklevel=3,
                )
                shard["sha256"] = None
                todo.append(i)
        return todo

    def finish(self, i: int, checksum: str) -> None:
        """Record shard ``i`` as written."""
        self.shards[i]["sha256"] = checksum
        self.save()

    def save(self) -> None:
        """Write the index atomically."""
        document = {"header": self.header, "data": self.data, "shards": self.shards}
        write_text(self.path, json.dumps(document, indent=1) + "\n")


# -- the entry point ---------------------------------------------------------------------------
def explain_dataset(
    model: nn.Module | ModelSpec | str,
    data: Any,
    methods: str | Sequence[str],
    out: str | os.PathLike,
    backend: str = "local",
    num_workers: int | None = None,
    batch_size: int = 32,
    shard_size: int = 256,
    neuron: int | None = None,
    weights: str | None = None,
    preprocess: str | None = None,
    address: str | None = None,
    verbose: bool = True,
    relevances: Sequence[str] = (),
    gpus_per_worker: float = 0.0,
    **options: Any,
) -> Path:
    """Explain every sample of ``data`` with every method, writing shards to ``out``.

    Parameters
    ----------
    model
        An ``nn.Module`` (local backend only), or a model spec string / :class:`ModelSpec`
        (TorchScript file, ``torchvision:NAME``, ``package.module:factory``) with ``weights``
        a state dict file: the form workers on other processes or machines build it from.
    data
        An array or ``(X, Y)`` pair, a ``.npy`` / HDF5 path, a folder of images
        (preprocessed as ``innspect analyze`` does), or a map-style torch ``Dataset``.
    methods
        Analyzer names; ``options`` go to the methods that take them.
    backend
        "local" (this process, no Ray needed) or "ray" (``num_workers`` actors on the Ray
        cluster at ``address``, or a local one; needs ``innspect[ray]``).
    neuron
        The output neuron to explain for every sample (default: each sample's largest).
    relevances
        Node names (``innspect.engine.collect.node_names``) whose layer-wise relevance (the
        signal there) each method also writes, as ``METHOD/relevances/NODE``.
    gpus_per_worker
        Ray only: GPUs each worker reserves and runs its model on (0.5: two workers share
        one). The local backend runs where the module is: move it with ``model.to("cuda")``.

    Returns the output folder; :func:`read_shards` reads it back.
    """
    from innspect.cli_analyze import options_per_method
    from innspect.cli_loading import CLIError, default_preprocess

    if backend not in ("local", "ray"):
        raise InputError(f"backend must be 'local' or 'ray', got {backend!r}")
    if batch_size < 1 or shard_size < 1:
        raise InputError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise InputError("no method given: name at least one analyzer")
    seed = options.pop("seed", 0)
    if isinstance(model, str):
        model = ModelSpec(model, weights, seed)
    elif weights is not None:
        raise InputError("weights= goes with a model spec string, not with a module")
    if gpus_per_worker and backend != "ray":
        raise InputError(
            "gpus_per_worker goes with backend='ray'; locally, pass a module already on the "
            "GPU (model.to('cuda')): the data follows the model"
        )
    if backend == "ray" and not isinstance(model, ModelSpec):
        raise InputError(
            "backend='ray' builds the model on each worker from a spec: give model as "
            "'torchvision:NAME', 'package.module:factory' or a TorchScript file, with "
            "weights='state_dict.pt' (modules are never pickled)"
        )
    spec = model.spec if isinstance(model, ModelSpec) else ""
    source = as_source(data, preprocess or default_preprocess(spec))
    if len(source) == 0:
        raise InputError("the data set is empty")
    try:
        per_method = options_per_method(methods, options, seed, neuron)
    except CLIError as error:
        raise InputError(str(error)) from error
    relevances = [relevances] if isinstance(relevances, str) else list(relevances)
    if relevances:
        from innspect.analyzers.parameters import analyzer_parameters
        from innspect.analyzers.registry import analyzer_class

        for method in methods:
            if "reverse_keep_tensors" not in analyzer_parameters(analyzer_class(method))[0]:
                raise InputError(f"{method} has no layer-wise relevances: leave relevances=")
            per_method[method]["reverse_keep_tensors"] = True
    runner = ShardRunner(model, source, methods, per_method, batch_size, neuron, None, relevances)
    header = _header(
        runner.fingerprint, source, methods, per_method, batch_size, shard_size, neuron
    )
    header["relevances"] = relevances
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = ShardIndex(out, header, source.describe())
    todo = index.pending()
    index.save()
    if backend == "local":
        _run_local(runner, index, todo, verbose)
    else:
        _run_ray(model, runner, index, todo, num_workers, address, verbose, gpus_per_worker)
    return out


def _bar(index: ShardIndex, todo: list[int], verbose: bool) -> Any:
    total = sum(index.shards[i]["stop"] - index.shards[i]["start"] for i in todo)
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="explaining", unit="sample")


def _run_local(runner: ShardRunner, index: ShardIndex, todo: list[int], verbose: bool) -> None:
    bar = _bar(index, todo, verbose)
    for i in todo:
        shard = index.shards[i]
        arrays = runner.compute(shard["start"], shard["stop"])
        index.finish(i, write_shard(index.out / shard["file"], arrays, **_range(shard)))
        if bar is not None:
            bar.update(shard["stop"] - shard["start"])
    if bar is not None:
        bar.close()


class ShardJob:
    """A Ray task's work: the shard of samples [start, stop) (the ShardRunner, with its
    analyzers and captured graphs, stays in the worker's cache)."""

    def __init__(
        self,
        source: DataSource,
        methods: list[str],
        options: dict,
        batch_size: int,
        neuron: int | None,
        relevances: list[str],
    ) -> None:
        self.settings = (source, methods, options, batch_size, neuron, None, relevances)
        self.token = uuid.uuid4().hex  # the worker's cache is this job's only

    def __call__(self, model: nn.Module, cache: dict, start: int, stop: int) -> dict:
        if "runner" not in cache:
            cache["runner"] = ShardRunner(model, *self.settings)
        return cache["runner"].compute(start, stop)


def _run_ray(
    spec: ModelSpec,
    runner: ShardRunner,
    index: ShardIndex,
    todo: list[int],
    num_workers: int | None,
    address: str | None,
    verbose: bool,
    gpus_per_worker: float = 0.0,
) -> None:
    from innspect.distributed.ray_backend import run_jobs

    bar = _bar(index, todo, verbose)
    job = ShardJob(
        runner.source,
        list(runner.analyzers),
        runner.options,
        runner.batch_size,
        runner.neuron,
        runner.relevances,
    )

    def on_result(k: int, arrays: dict[str, np.ndarray]) -> None:
        shard = index.shards[todo[k]]
        index.finish(todo[k], write_shard(index.out / shard["file"], arrays, **_range(shard)))
        if bar is not None:
            bar.update(shard["stop"] - shard["start"])

    example = runner.source.read(0, 1)[0]
    ranges = [(index.shards[i]["start"], index.shards[i]["stop"]) for i in todo]
    run_jobs(
        spec, example, runner.fingerprint, job, ranges, on_result, num_workers, address,
        gpus_per_worker=gpus_per_worker,
    )  # fmt: skip
    if bar is not None:
        bar.close()


def _range(shard: dict[str, Any]) -> dict[str, int]:
    return {"start": shard["start"], "stop": shard["stop"]}
