"""Per-sample inputs of metrics over a data set: a mask per sample (the localisation metrics)
and the quadrant flags of a mosaic per sample (Focus), read by range as the data is.

``evaluate_dataset(..., masks=..., mosaic_labels=...)`` takes, aligned with the data by
sample index: an array or tensor (N, ...), a ``.npy`` file (memory-mapped), a function of
the sample index giving that sample's value, or (masks only, with a folder of images as the
data) a folder holding one mask per image under the image's stem (``.npy``, or an image
whose non-zero pixels are the object), as ``innspect evaluate --mask DIR``.

Sources are small and picklable (the array itself, a path, a function), so Ray workers read
their own ranges. Each value is checked against its sample (errors name the sample) and
brought to one canonical form (masks: boolean, the sample's shape; mosaic labels: four
float64 flags), whose bytes the shards' digests cover (:func:`digest`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from innspect.errors import InputError
from innspect.loading.sources import DataSource, ImageFolderSource

# The metrics' per-sample inputs (``Metric.inputs``) and evaluate_dataset's argument for each.
ARGUMENTS = {"mask": "masks", "mosaic_labels": "mosaic_labels"}
NOUNS = {"mask": "mask", "mosaic_labels": "mosaic labels"}
MASK_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# -- one mask --------------------------------------------------------------------------------
def find_mask_file(folder: Path, stem: str, input_name: str) -> Path:
    """The mask of the input ``input_name`` in ``folder``: the file named ``stem`` with one
    of :data:`MASK_SUFFIXES` (the first found, in that order)."""
    for suffix in MASK_SUFFIXES:
        candidate = folder / (stem + suffix)
        if candidate.is_file():
            return candidate
    raise InputError(
        f"no mask for {input_name} in {folder}: expected {stem}.npy or {stem}.png (a mask per "
        "input, named after it)"
    )


def read_mask_file(file: Path) -> np.ndarray:
    """A mask file's array: an ``.npy`` array, or an image as greyscale (non-zero: object)."""
    try:
        if file.suffix == ".npy":
            return np.asarray(np.load(file, allow_pickle=False))
        from PIL import Image  # Pillow: a dependency of innspect's image loading

        with Image.open(file) as image:
            return np.asarray(image.convert("L"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the mask {file}: {error}") from error


def fit_mask(mask: Any, shape: tuple[int, ...], what: str, input_name: str) -> np.ndarray:
    """``mask`` as a boolean array of the input's ``shape`` (non-zero: the object).

    A mask of the input's shape, or with one axis fewer or a size-1 first (channel) axis,
    broadcast over it; ``what`` and ``input_name`` name the mask and its input in errors."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    given = array.shape
    if array.dtype.kind not in "biuf":
        raise InputError(f"{what} must be numeric or boolean, got dtype {array.dtype}")
    if array.ndim == len(shape) - 1:
        array = array[None]  # (H, W) for (C, H, W): one channel, broadcast
    fits = array.ndim == len(shape) and all(
        m == s or (i == 0 and m == 1)
        for i, (m, s) in enumerate(zip(array.shape, shape, strict=True))
    )
    if not fits:
        raise InputError(
            f"{what} has shape {tuple(given)} but {input_name} has shape {tuple(shape)}: give a "
            f"mask of the input's shape, {tuple(shape[1:])} or {(1, *shape[1:])}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{what} holds NaN or infinite values")
    return np.ascontiguousarray(np.broadcast_to(array != 0, shape))


def fit_mosaic_labels(labels: Any, what: str) -> np.ndarray:
    """Four quadrant flags (top-left, top-right, bottom-left, bottom-right) as float64."""
    array = (
        labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    )
    if array.dtype.kind not in "biuf" or array.shape != (4,):
        raise InputError(
            f"{what} must be 4 numbers (flags of the quadrants top-left, top-right, "
            f"bottom-left, bottom-right), got shape {array.shape} of dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(f"{what} holds NaN or infinite values")
    return array


# -- sources ---------------------------------------------------------------------------------
class SampleInputs:
    """One per-sample input of a data set (``name``: "mask" or "mosaic_labels"), read by
    range and checked: ``read(start, stop, sample_shape)`` gives the canonical values of
    samples [start, stop) stacked (N, ...)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, i: int) -> Any:
        """Sample ``i``'s value as given."""
        raise NotImplementedError

    def label(self, i: int) -> str:
        """How errors name sample ``i``."""
        return f"sample {i}"

    def read(self, start: int, stop: int, sample_shape: tuple[int, ...]) -> np.ndarray:
        values = []
        for i in range(start, stop):
            value = self.raw(i)
            what = f"the {NOUNS[self.name]} of {self.label(i)}"
            if value is None:
                raise InputError(f"no {NOUNS[self.name]} for {self.label(i)}")
            if self.name == "mask":
                values.append(fit_mask(value, sample_shape, what, "the sample"))
            else:
                values.append(fit_mosaic_labels(value, what))
        return np.stack(values)

    def check_length(self, samples: int) -> None:
        """Refuse a source with another number of values than the data has samples."""
        n = len(self)
        argument = ARGUMENTS[self.name]
        if n < samples:
            raise InputError(
                f"{argument}= holds {n} values for {samples} samples: no {NOUNS[self.name]} "
                f"for sample {n} (and any after it)"
            )
        if n > samples:
            raise InputError(
                f"{argument}= holds {n} values but the data set has {samples} samples: give "
                "one per sample, in the data's order"
            )


class ArrayInputs(SampleInputs):
    """In-memory values (numpy or torch), one per sample on the first axis."""

    def __init__(self, name: str, values: Any) -> None:
        super().__init__(name)
        self.values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        if np.ndim(self.values) == 0:
            raise InputError(f"{ARGUMENTS[name]}= must hold one value per sample, got a scalar")

    def __len__(self) -> int:
        return len(self.values)

    def raw(self, i: int) -> Any:
        return self.values[i]


class NpyInputs(ArrayInputs):
    """A ``.npy`` file, memory-mapped, one value per sample on the first axis."""

    def __init__(self, name: str, path: Path) -> None:
        self.path = str(path)
        try:
            values = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read {path} as a .npy array: {error}") from error
        super().__init__(name, values)

    def __getstate__(self) -> dict:
        return {"name": self.name, "path": self.path}  # workers map the file themselves

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], Path(state["path"]))


class FolderInputs(SampleInputs):
    """Masks in a folder, one per image of a folder data set, named after the image."""

    def __init__(self, name: str, folder: Path, files: list[str]) -> None:
        super().__init__(name)
        self.folder, self.files = folder, files

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> str:
        return f"sample {i} ({Path(self.files[i]).name})"

    def raw(self, i: int) -> Any:
        file = find_mask_file(self.folder, Path(self.files[i]).stem, self.label(i))
        return read_mask_file(file)


class CallableInputs(SampleInputs):
    """A function of the sample index giving the sample's value (e.g. ``lambda i:
    dataset[i][2]`` for a torch Dataset of (x, y, mask) items)."""

    def __init__(self, name: str, function: Callable[[int], Any], samples: int) -> None:
        super().__init__(name)
        self.function, self.samples = function, samples

    def __len__(self) -> int:
        return self.samples

    def raw(self, i: int) -> Any:
        return self.function(i)


def sample_inputs(name: str, given: Any, source: DataSource) -> SampleInputs:
    """The source of the per-sample input ``name`` that the user gave for ``source``."""
    argument = ARGUMENTS[name]
    if isinstance(given, SampleInputs):
        made = given
    elif isinstance(given, np.ndarray | torch.Tensor | list | tuple):
        made = ArrayInputs(
            name, given if not isinstance(given, list | tuple) else np.asarray(given)
        )
    elif isinstance(given, str | os.PathLike):
        path = Path(given)
        if path.is_dir():
            if name != "mask" or not isinstance(source, ImageFolderSource):
                raise InputError(
                    f"{argument}={str(path)!r} is a folder: masks in a folder are paired with a "
                    "folder of images by file name; for other data give an array, a .npy file "
                    "or a function of the sample index"
                )
            made = FolderInputs(name, path, source.files)
        elif path.suffix.lower() == ".npy" and path.is_file():
            made = NpyInputs(name, path)
        else:
            raise InputError(
                f"{argument}={str(path)!r}: not a .npy file or a folder of masks (not found, or "
                "another kind of file)"
            )
    elif callable(given):
        made = CallableInputs(name, given, len(source))
    else:
        raise InputError(
            f"{argument}= must be an array (one value per sample), a .npy file, a folder of "
            f"masks or a function of the sample index, got {type(given).__name__}"
        )
    made.check_length(len(source))
    made.read(0, 1, tuple(source.sample_shape))  # a wrong kind of value fails before any shard
    return made


def digest(values: np.ndarray, running: Any = None) -> Any:
    """Feed canonical per-sample values into a running SHA-256 (a new one when None)."""
    running = running if running is not None else hashlib.sha256()
    running.update(np.ascontiguousarray(values).tobytes())
    return running
