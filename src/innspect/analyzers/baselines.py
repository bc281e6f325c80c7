"""Reference inputs and baselines given as a number, one array for all samples or one per sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from innspect.errors import InputError


def named_baseline(value: Any, x: torch.Tensor, name: str, what: str) -> torch.Tensor:
    """The baseline of the attributed input or node ``name``: ``value`` itself, or, for a
    dict from names to baselines (several inputs), its entry (0 where it has none)."""
    if isinstance(value, dict):
        return broadcast_baseline(value.get(name, 0.0), x, f"{what} for {name!r}")
    return broadcast_baseline(value, x, what)


def broadcast_baseline(value: Any, x: torch.Tensor, what: str) -> torch.Tensor:
    """``value`` (number, array or tensor) broadcast to ``x``'s shape, dtype and device.

    Raises InputError naming the option ``what`` when the shapes do not broadcast.
    """
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    tensor = tensor.to(device=x.device, dtype=x.dtype)
    try:
        return torch.broadcast_to(tensor, x.shape)
    except RuntimeError as error:
        raise InputError(
            f"{what} of shape {tuple(tensor.shape)} does not broadcast to the input's shape "
            f"{tuple(x.shape)}; give a number, one array for all samples or one per sample"
        ) from error
