"""Numpy/torch interchange for the visualisation helpers: compute in numpy, answer in kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_numpy(X: Any) -> tuple[np.ndarray, torch.Tensor | None]:
    """Return ``X`` as a float numpy array (a copy) and the tensor it came from, if any."""
    if isinstance(X, torch.Tensor):
        array = X.detach().cpu().numpy()
        source: torch.Tensor | None = X
    else:
        array, source = np.asarray(X), None
    if array.dtype.kind not in "fc":
        array = array.astype(np.float64)
    return np.array(array, copy=True), source


def like_source(result: np.ndarray, source: torch.Tensor | None) -> Any:
    """Give ``result`` back as a tensor on the source's device when the input was a tensor."""
    if source is None:
        return result
    return torch.from_numpy(np.ascontiguousarray(result)).to(source.device)
