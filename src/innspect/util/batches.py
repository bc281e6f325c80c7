"""Data streaming: one helper that turns what users call "data" into batches.

Accepted forms (the same everywhere in innspect: the statistics pass, PatternComputer,
``fit``, the CLI):

- a numpy array or a torch tensor: samples on the first axis, cut into ``batch_size`` rows;
- a tuple ``(X, Y)`` of two arrays/tensors with the same number of samples: inputs and
  labels, cut together;
- any other iterable (a list, a generator, a torch ``DataLoader``): a stream of batches,
  each an array/tensor or a tuple/list ``(x, y, ...)`` whose first item is the input and
  second the labels (further items, e.g. sample weights, are ignored).

Batches are produced lazily: a generator or a DataLoader is never held in memory as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from innspect.errors import InputError
from innspect.util.tensors import all_finite, nonfinite_counts


@dataclass
class Batch:
    """One batch: the input ``x`` (a tensor on the model's device and dtype), the labels
    ``y`` (a tensor, or None when the data has none) and its position in the stream."""

    x: torch.Tensor
    y: torch.Tensor | None
    index: int


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray | torch.Tensor)


def _is_pair(data: Any) -> bool:
    """An ``(X, Y)`` tuple of arrays/tensors (a tuple is never a stream of two batches)."""
    if not (isinstance(data, tuple) and len(data) == 2 and all(_is_array(v) for v in data)):
        return False
    if data[0].ndim == 0 or data[1].ndim == 0 or len(data[0]) != len(data[1]):
        raise InputError(
            f"(X, Y) data needs as many labels as samples: X has shape {tuple(data[0].shape)}, "
            f"Y has shape {tuple(data[1].shape)}"
        )
    return True


def num_batches(data: Any, batch_size: int = 32) -> int | None:
    """How many batches ``iter_batches`` will give (None when the stream has no length)."""
    if _is_array(data):
        return -(-len(data) // batch_size) if data.ndim else 1
    if _is_pair(data):
        return -(-len(data[0]) // batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def _raw_batches(data: Any, batch_size: int) -> Iterator[tuple[Any, Any]]:
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size}")
    if _is_array(data):
        if data.ndim == 0:
            raise InputError("data must have samples on its first axis, got a scalar")
        for start in range(0, len(data), batch_size):
            yield data[start : start + batch_size], None
        return
    if _is_pair(data):
        X, Y = data
        for start in range(0, len(X), batch_size):
            yield X[start : start + batch_size], Y[start : start + batch_size]
        return
    if isinstance(data, dict | str | bytes) or not isinstance(data, Iterable):
        raise InputError(
            f"cannot stream data of type {type(data).__name__}: give an array or tensor, an "
            "(X, Y) tuple of arrays, or an iterable of batches (a list, a generator, a "
            "torch DataLoader) yielding x or (x, y)"
        )
    for item in data:
        if isinstance(item, Batch):  # already streamed (e.g. a peeked first batch)
            yield item.x, item.y
        elif isinstance(item, tuple | list):
            if not item:
                raise InputError("the data stream yielded an empty tuple; yield x or (x, y)")
            yield item[0], item[1] if len(item) > 1 else None
        else:
            yield item, None


def as_tensor(
    value: Any,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    what: str = "input",
) -> torch.Tensor:
    """``value`` as a tensor on ``device``; floating data cast to ``dtype`` (the model's).

    Raises InputError for non-numeric data and for NaN or infinite values.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        array = np.asarray(value)
        if array.dtype.kind not in "fiub":
            raise InputError(f"{what} must be numeric, got an array of dtype {array.dtype}")
        tensor = torch.as_tensor(array)
    if device is not None:
        tensor = tensor.to(device)
    if tensor.is_floating_point() and dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if not all_finite(tensor):
        n_nan, n_inf = nonfinite_counts(tensor)
        raise InputError(
            f"{what} contains {n_nan} NaN and {n_inf} infinite values; clean or impute them first"
        )
    return tensor


def iter_batches(
    data: Any,
    batch_size: int = 32,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[Batch]:
    """Stream ``data`` (see the module docstring) as :class:`Batch` objects.

    Inputs go to ``device`` and, when floating, to ``dtype`` (numpy float64 into a float32
    model, as ``analyze`` accepts it). Raises InputError for an empty data set, an empty
    batch, non-numeric data and NaN or infinite inputs (naming the batch).
    """
    count = 0
    for index, (x, y) in enumerate(_raw_batches(data, batch_size)):
        where = f"batch {index} of the data"
        xt = as_tensor(x, device, dtype, what=where)
        if xt.dim() == 0 or xt.shape[0] == 0:
            raise InputError(f"{where} has shape {tuple(xt.shape)}: batches need >= 1 sample")
        yt = None
        if y is not None:
            yt = as_tensor(y, what=f"the labels of {where}")
            if yt.dim() == 0 or yt.shape[0] != xt.shape[0]:
                raise InputError(
                    f"{where}: {xt.shape[0]} inputs but labels of shape {tuple(yt.shape)}"
                )
        count += 1
        yield Batch(xt, yt, index)
    if count == 0:
        raise InputError("the data set is empty: there is not a single batch to process")
