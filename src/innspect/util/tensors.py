"""Small checks on tensors and models every layer shares: finiteness (cheap when all is
finite), and the device and dtype a model computes in."""

from __future__ import annotations

import torch


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry of a floating tensor is finite.

    The sum is checked first: one reduction, ~25x cheaper on CPU than ``isfinite(t).all()``
    (which allocates a mask as large as the tensor); a NaN or an infinity makes it
    non-finite, and only then (or when a sum of finite values overflows) is every entry
    looked at.
    """
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def nonfinite_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """``(NaN entries, infinite entries)`` of a tensor, for error messages."""
    n_nan = int(torch.isnan(tensor).sum())
    return n_nan, int((~torch.isfinite(tensor)).sum()) - n_nan


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of the model's first parameter or buffer (None if none):
    where and in which precision batches for the model go."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None
