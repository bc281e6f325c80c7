"""What goes into an analyzer and what comes out: inputs, attribution targets, output weights.

``ModelInputs`` turns what the user passes to ``analyze`` (a tensor or array, a tuple of
them, a dict of keyword inputs) into checked tensors bound to the forward's parameters, and
puts attributions back into the same structure. ``target_gradient`` turns ``target=``
(output weights or a callable) into the gradient the reverse walk starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.errors import InputError
from innspect.graph.call import CallSpec, bind_call
from innspect.util.tensors import all_finite, nonfinite_counts

"""What ``target=`` takes: output weights or a callable ``f(y) -> (N,)``."""


@dataclass
class ModelInputs:
    """The inputs of one call, bound to the model's forward.

    Attributes
    ----------
    call
        Which forward parameters are given (``call.names``) and which keep defaults.
    values
        One checked tensor (or other value) per name of ``call.names``.
    structure
        "tensor" (one tensor or array), "tuple" (positional inputs) or "dict" (keywords).
    numpy
        Whether the inputs came as numpy arrays (attributions are returned as arrays).
    order
        Every name the caller gave, in its order (inputs and fixed Python values).
    """

    call: CallSpec
    values: list[Any]
    structure: str
    numpy: bool
    order: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return self.call.names

    @property
    def batch_size(self) -> int:
        """The number of samples (every tensor input's first axis; they agree)."""
        return next(v.shape[0] for v in self.values if isinstance(v, torch.Tensor))

    def by_name(self) -> dict[str, Any]:
        return dict(zip(self.call.names, self.values, strict=True))

    def floating(self) -> tuple[str, ...]:
        """Names of the floating-point inputs (the ones attributed by default)."""
        return tuple(
            n
            for n, v in zip(self.call.names, self.values, strict=True)
            if isinstance(v, torch.Tensor) and v.is_floating_point()
        )

    def default_sources(self) -> tuple[str, ...]:
        """Every floating-point input; a model with one (integer) input keeps it (the
        relevance methods map token ids through their embedding's relevance)."""
        floating = self.floating()
        if not floating and len(self.values) == 1:
            return self.call.names
        return floating

    def key(self) -> tuple[Any, ...]:
        """What a captured graph depends on: the call and which inputs are floating."""
        return (self.call.key(), self.floating())

    def restore(self, attributions: dict[str, torch.Tensor], attribute_to: Any) -> Any:
        """Attributions in the structure the inputs came in (or ``attribute_to`` named).

        One tensor in gives one tensor out; a tuple gives a tuple and a dict a dict over
        the same positions / keys (None where an input got no attribution). A string
        ``attribute_to`` gives that one attribution, a list of names a tuple in its order.
        """

        def convert(value: torch.Tensor | None) -> Any:
            if value is None:
                return None
            value = value.detach()
            return value.cpu().numpy() if self.numpy else value

        if isinstance(attribute_to, str):
            return convert(attributions[attribute_to])
        if attribute_to is not None:
            return tuple(convert(attributions[name]) for name in attribute_to)
        if self.structure == "tensor":
            return convert(next(iter(attributions.values())))
        order = self.order or self.call.names
        if self.structure == "tuple":
            return tuple(convert(attributions.get(name)) for name in order)
        return {name: convert(attributions.get(name)) for name in order}


def attribute_names(attribute_to: Any) -> tuple[str, ...] | None:
    """``attribute_to`` as a tuple of names (None: the default inputs)."""
    if attribute_to is None:
        return None
    if isinstance(attribute_to, str):
        return (attribute_to,)
    if isinstance(attribute_to, Sequence) and all(isinstance(a, str) for a in attribute_to):
        if not attribute_to:
            raise InputError("attribute_to is empty; name at least one input or node")
        return tuple(attribute_to)
    raise InputError(
        f"attribute_to must be an input or node name or a list of names, got {attribute_to!r}"
    )


def model_inputs(
    model: nn.Module,
    X: Any,
    device: torch.device | None,
    dtype: torch.dtype | None,
) -> ModelInputs:
    """Check and convert ``X`` (tensor/array, tuple of them, or dict of keyword inputs).

    In a tuple or dict, Python values (None, bools, numbers, strings) are not inputs: they
    are fixed arguments of the call, captured as constants (``return_dict=False``).
    """
    if isinstance(X, dict):
        if not X:
            raise InputError("the input dict is empty; pass the model's inputs by name")
        keys = list(X)
        bad = [k for k in keys if not isinstance(k, str)]
        if bad:
            raise InputError(f"input dict keys must be parameter names, got {bad[0]!r}")
        call = bind_call(model, keywords=keys)
        given = dict(X)
        order = tuple(keys)
        structure = "dict"
    elif isinstance(X, tuple):
        if not X:
            raise InputError("the input tuple is empty; pass one value per model input")
        call = bind_call(model, n_positional=len(X))
        given = dict(zip(call.names, X, strict=True))
        order = call.names
        structure = "tuple"
    else:
        call = bind_call(model, n_positional=1)
        given = {call.names[0]: X}
        order = call.names
        structure = "tensor"
    if structure != "tensor":
        call = call.with_fixed({n: v for n, v in given.items() if _is_python_value(v)})
        if not call.names:
            raise InputError(
                "no tensor or array among the inputs (Python values such as None or "
                "numbers are fixed arguments, not inputs)"
            )
    items = [(name, given[name]) for name in call.names]
    single = structure == "tensor"
    values, numpy_flags = [], []
    for name, value in items:
        tensor, was_numpy = to_tensor(value, device, dtype, None if single else name, single)
        values.append(tensor)
        numpy_flags.append(was_numpy)
    batch = {v.shape[0] for v in values if isinstance(v, torch.Tensor)}
    if len(batch) > 1:
        shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in zip(call.names, values, strict=True))
        raise InputError(f"the inputs disagree on the batch size (first axis): {shapes}")
    return ModelInputs(call, values, structure, any(numpy_flags), order)


def _is_python_value(value: Any) -> bool:
    """None, a bool, a number or a string: a fixed argument, not an input."""
    return value is None or isinstance(value, bool | int | float | complex | str)


def to_tensor(
    X: Any,
    device: torch.device | None,
    dtype: torch.dtype | None,
    name: str | None = None,
    bool_to_float: bool = True,
) -> tuple[torch.Tensor, bool]:
    """One input as a checked tensor (batch first, finite, on the model's device/dtype).

    Returns the tensor and whether it came as a numpy array. ``name`` names the input in
    messages of a model with several inputs. A numpy boolean array becomes floating point
    for a one-input model (wave 1's behaviour) and stays a mask otherwise.
    """
    what = "input" if name is None else f"input {name!r}"
    if isinstance(X, torch.Tensor):
        x, was_numpy = X, False
        if x.is_inference():
            # A tensor made under torch.inference_mode() cannot take part in autograd; a
            # copy made outside inference mode can (and the caller's tensor is untouched).
            with torch.inference_mode(False):
                x = x.clone()
        if dtype is not None and x.is_floating_point() and x.dtype != dtype:
            raise InputError(
                f"{what} dtype {x.dtype} does not match the model's {dtype}; "
                f"convert it with X.to({dtype})"
            )
        if device is not None and x.device != device:
            raise InputError(
                f"{what} is on {x.device} but the model is on {device}; move it with "
                f"X.to('{device}')"
            )
    else:
        try:
            array = np.asarray(X)
        except Exception as error:  # noqa: BLE001
            raise InputError(
                f"cannot convert {what} of type {type(X).__name__}: {error}"
            ) from error
        if array.dtype.kind not in "fiub":
            raise InputError(f"{what} must be numeric, got an array of dtype {array.dtype}")
        x = torch.as_tensor(array, device=device)
        if x.is_floating_point() or (array.dtype.kind == "b" and bool_to_float):
            # A model without tensors of its own takes numpy's float64 as it is.
            x = x.to(dtype or (torch.float64 if array.dtype == np.float64 else torch.float32))
        was_numpy = True
    if x.dim() == 0 or x.shape[0] == 0:
        raise InputError(
            f"{what} must be a batch (first axis = samples) with at least one sample, got "
            f"shape {tuple(x.shape)}; for a single sample use X[None]"
        )
    if not all_finite(x):
        n_nan, n_inf = nonfinite_counts(x)
        raise InputError(
            f"{what} contains {n_nan} NaN and {n_inf} infinite values; clean or impute "
            "them before analysis"
        )
    return x, was_numpy
