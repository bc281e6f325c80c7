"""Data sets read by range (``DataSource``): arrays, ``.npy`` and HDF5 files, folders of
images, map-style torch Datasets. Sources are small and picklable, so a Ray worker reads its
own ranges; ``as_source`` picks one for what the user gives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from innspect.errors import InputError, LoadingError
from innspect.loading.inputs import input_files, load_input


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

        try:
            files, _ = input_files([str(folder)])
        except LoadingError as error:
            raise InputError(str(error)) from error
        self.files = [str(f) for f in files]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:

        try:
            tensors = [load_input(f, self.preprocess).tensor for f in self.files[start:stop]]
        except LoadingError as error:
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
