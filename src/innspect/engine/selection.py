"""What a call explains: the neuron selection or ``target=`` turned into the selected output
neurons, the explained scores and the signal the reverse walk starts from.

Every analyzer resolves its call here, once, on the explained output (``resolve``);
wrappers that explain many rows per sample (integrated gradients, SmoothGrad,
DeepLiftShap, occlusion) resolve on the clean input and hand each batch of rows
``selection.rows(samples)``, never an index down into another analyzer's internals.
The modes are iNNvestigate's (``max_activation``, ``index``, ``all``); ``target=`` is output
weights ``w`` (Zennit's ``attr_output``: ``t = sum(w * y)``) or a callable ``f(y) -> (N,)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from innspect.errors import NeuronSelectionError, OutputSelectionError

Target = torch.Tensor | np.ndarray | Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClassTarget:
    """``target=`` given as class indices (Captum's convention: ``target=3``, a list of ints
    or an integer tensor, one index for the batch or one per sample), explained like
    ``neuron_selection_mode="index"`` on an output of shape ``(N, C)``."""

    indices: torch.Tensor  # int64 on the CPU, 0-d or (N,)


def check_target(target: Any) -> Target | ClassTarget | None:
    """Validate ``target=`` at creation: None, class indices (ints), output weights (a
    floating array or number) or a callable.

    Integers are class indices, never weights: ``target=3`` explains class 3, as in Captum,
    not ``3 * sum(y)``.
    """
    if target is None or callable(target) or isinstance(target, ClassTarget):
        return target
    if isinstance(target, bool) or (
        isinstance(target, torch.Tensor | np.ndarray) and target.dtype in (torch.bool, np.bool_)
    ):
        raise OutputSelectionError(
            f"target must be class indices (ints), output weights (floating point) or a "
            f"callable, got booleans {target!r}; for a mask of outputs pass it as floats "
            "(mask.float())"
        )
    if isinstance(target, torch.Tensor):
        if target.is_floating_point():
            return target
        if target.is_complex():
            raise OutputSelectionError("target weights must be real, got a complex tensor")
        return _class_target(target.detach().cpu().numpy())
    if isinstance(target, numbers.Integral):
        return _class_target(np.asarray(int(target)))
    if isinstance(target, list | tuple | float | np.ndarray | numbers.Real):
        try:
            array = np.asarray(target)
        except ValueError as error:
            raise OutputSelectionError(f"target {target!r} is not a regular array") from error
        if array.dtype.kind in "iu":
            return _class_target(array)
        if array.dtype.kind == "f":
            return array.astype(np.float64) if not isinstance(target, np.ndarray) else target
        raise OutputSelectionError(
            f"target must be class indices (ints), output weights (floating point) or a "
            f"callable, got an array of {array.dtype}"
        )
    raise OutputSelectionError(
        f"target must be class indices (ints), a tensor of output weights or a callable "
        f"f(output) -> (N,), got {type(target).__name__}"
    )


def _class_target(array: np.ndarray) -> ClassTarget:
    """Integer ``target=`` as class indices: one for the batch or one per sample."""
    if array.ndim > 1:
        raise OutputSelectionError(
            f"target as class indices takes one int or one per sample, got shape "
            f"{array.shape}; for weights on the outputs pass a floating tensor"
        )
    if (array < 0).any():
        raise OutputSelectionError(f"target class index {int(array.min())} is negative")
    return ClassTarget(torch.as_tensor(array.astype(np.int64)))


def check_explained_output(output: Any, n_samples: int | None) -> None:
    """The explained output must be a floating tensor with one row per sample: a scalar, an
    integer output (``argmax``) or rows that are not the samples have nothing to explain."""
    if not isinstance(output, torch.Tensor):
        return
    if output.dim() == 0:
        raise OutputSelectionError(
            "the model's explained output is a scalar (shape ()): innspect explains each "
            "sample's output, so return one row per sample (N, ...), e.g. without summing "
            "over the batch in forward"
        )
    if not (output.is_floating_point() or output.is_complex()):
        raise OutputSelectionError(
            f"the model's explained output is {output.dtype} (shape {tuple(output.shape)}), "
            "which has no gradient (an argmax or a class label?): return the logits and "
            "choose the class with target= or neuron_selection"
        )
    if n_samples is not None and output.shape[0] != n_samples:
        raise OutputSelectionError(
            f"the model returned {output.shape[0]} rows (output shape "
            f"{tuple(output.shape)}) for {n_samples} samples: the first axis of the input "
            "must be the batch and the output must keep it; for a single sample pass X[None]"
        )


def target_gradient(output: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """``dt/dy`` and ``t`` per sample for a target ``t`` of the explained output ``y``.

    Output weights ``w`` (broadcastable to ``y``, Zennit's ``attr_output``) mean
    ``t = sum(w * y)`` per sample, so ``dt/dy = w``. A callable ``f(y) -> (N,)`` is
    differentiated by autograd; each ``t[i]`` must depend on sample ``i`` only (a contrast
    ``y[:, a] - y[:, b]``, a region's mean, a cosine similarity to a fixed vector).
    """
    y = output.detach()
    n = y.shape[0]
    if callable(target):
        leaf = y.clone().requires_grad_(True)
        with torch.enable_grad():
            value = target(leaf)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
            got = (
                f"shape {tuple(value.shape)}"
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            raise OutputSelectionError(
                f"the target callable must return one value per sample, shape ({n},), for an "
                f"output of shape {tuple(y.shape)}; got {got} (reduce the other axes, e.g. "
                "y[:, a] - y[:, b] or y.flatten(1).mean(1))"
            )
        if not bool(torch.isfinite(value.detach()).all()):
            raise OutputSelectionError("the target callable returned NaN or infinite values")
        grad = None
        if value.requires_grad:
            (grad,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
        if grad is None:
            # A value cut from the output (.detach(), .item(), numpy, a constant) would
            # explain nothing: every attribution would be zero.
            raise OutputSelectionError(
                "the target callable's value does not depend on the output it was given "
                "(no gradient): compute it from that argument with torch operations, "
                "without .detach(), .item(), numpy or torch.no_grad()"
            )
        return grad.detach(), value.detach()
    weights = torch.as_tensor(np.asarray(target) if isinstance(target, np.ndarray) else target)
    weights = weights.to(device=y.device, dtype=y.dtype)
    try:
        weights = torch.broadcast_to(weights, y.shape)
    except RuntimeError as error:
        raise OutputSelectionError(
            f"target weights of shape {tuple(weights.shape)} do not broadcast to the explained "
            f"output's shape {tuple(y.shape)}"
        ) from error
    return weights.clone(), (weights * y).reshape(n, -1).sum(dim=1)


def target_rows(
    target: Target | None, rows: torch.Tensor, n_samples: int, output_dim: int
) -> Target | None:
    """The target for a batch whose row r is a point of sample ``rows[r]`` (integrated
    gradients, SmoothGrad): per-sample weights are picked by row; a callable sees, for each
    run of rows that are distinct samples, a batch of ``n_samples`` rows in sample order
    (those rows in place, zeros elsewhere), so it may hold per-sample data."""
    if target is None:
        return None
    if callable(target):
        return _per_sample_callable(target, rows, n_samples)
    weights = torch.as_tensor(np.asarray(target) if isinstance(target, np.ndarray) else target)
    if weights.dim() == output_dim and weights.shape[0] == n_samples and n_samples > 1:
        return weights.to(rows.device)[rows]
    return weights


def _per_sample_callable(
    target: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, n_samples: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    # Rows come point by point, samples in order: a new run starts where the sample index
    # does not grow, and within a run every sample appears at most once.
    order = rows.tolist()
    starts = [0] + [i for i in range(1, len(order)) if order[i] <= order[i - 1]] + [len(order)]

    def per_run(y: torch.Tensor) -> torch.Tensor:
        values = []
        for begin, end in zip(starts[:-1], starts[1:], strict=True):
            samples = rows[begin:end]
            full = y.new_zeros((n_samples, *y.shape[1:])).index_put((samples,), y[begin:end])
            values.append(target(full)[samples])
        return torch.cat(values)

    return per_run


NEURON_SELECTION_MODES = ("max_activation", "index", "all")


def neuron_indices(neuron_selection: Any, n_outputs: int) -> torch.Tensor:
    """``neuron_selection`` as an int64 tensor, or a NeuronSelectionError saying why not.

    Checked before any conversion: torch would raise its own TypeError on strings and None,
    and wrap an unsigned 2**64 - 1 around to -1.
    """
    usage = "give an int for the whole batch or a sequence of ints, one per sample"
    if isinstance(neuron_selection, torch.Tensor) and neuron_selection.device.type == "meta":
        raise NeuronSelectionError(
            f"neuron_selection is on the meta device (a shape without values); {usage}"
        )
    if isinstance(neuron_selection, torch.Tensor):
        if (
            neuron_selection.is_floating_point()
            or neuron_selection.is_complex()
            or (neuron_selection.dtype == torch.bool)
        ):
            raise NeuronSelectionError(
                f"neuron_selection must be integers, got {neuron_selection.dtype}; {usage}"
            )
        values = neuron_selection.detach().cpu()
        if values.dtype == torch.uint64:  # values above int64's range must not wrap around
            array = values.numpy()
        else:
            return values.long()
    else:
        try:
            array = np.asarray(neuron_selection)
        except Exception as error:  # noqa: BLE001 - ragged nesting and the like
            raise NeuronSelectionError(
                f"neuron_selection {neuron_selection!r} is not a sequence of ints; {usage}"
            ) from error
    if array.dtype.kind == "O":  # Python ints beyond 64 bits, None, mixed types
        for value in array.reshape(-1):
            if isinstance(value, int | np.integer) and not isinstance(value, bool):
                continue
            raise NeuronSelectionError(
                f"neuron_selection must be integers, got {value!r} in {neuron_selection!r}; {usage}"
            )
        array = np.array([int(v) for v in array.reshape(-1)], dtype=object).reshape(array.shape)
    elif array.dtype.kind not in "iu":
        raise NeuronSelectionError(
            f"neuron_selection must be integers, got {neuron_selection!r} ({array.dtype}); {usage}"
        )
    flat = array.reshape(-1)
    too_large = [int(v) for v in flat if int(v) >= n_outputs or int(v) < 0]
    if too_large:
        raise NeuronSelectionError(
            f"neuron index {too_large[0]} is out of range: the model has {n_outputs} outputs "
            f"(valid: 0 .. {n_outputs - 1})"
        )
    return torch.as_tensor(array.astype(np.int64))


def check_selection_arguments(mode: str, neuron_selection: Any, target: Any = None) -> None:
    """Refuse a call whose arguments do not fit the analyzer's mode: ``target`` with a neuron
    selection, mode "index" without one, a neuron selection in another mode."""
    if target is not None:
        if neuron_selection is not None or mode != "max_activation":
            raise NeuronSelectionError(
                "target= replaces the neuron selection; pass either target or "
                "neuron_selection (with neuron_selection_mode='index'), not both"
            )
        return
    if mode == "index" and neuron_selection is None:
        raise NeuronSelectionError(
            'neuron_selection_mode="index" needs analyze(X, neuron_selection=...) '
            "(an int or one int per sample)"
        )
    if mode != "index" and neuron_selection is not None:
        raise NeuronSelectionError(
            f'neuron_selection is only allowed with neuron_selection_mode="index" '
            f"(this analyzer uses {mode!r})"
        )


def select_neurons(output: torch.Tensor, mode: str, neuron_selection: Any) -> torch.Tensor | None:
    """Flattened output indices per sample (the largest output for "max_activation", the
    given ones for "index"), or None for mode "all"."""
    flat = output.reshape(output.shape[0], -1)
    n, k = flat.shape
    if mode == "all":
        return None
    if mode == "max_activation":
        return flat.detach().argmax(dim=1)
    index = neuron_indices(neuron_selection, k).to(flat.device)
    if index.dim() == 0:
        index = index.expand(n)
    index = index.reshape(-1).long()
    if index.numel() != n:
        raise NeuronSelectionError(
            f"neuron_selection has {index.numel()} indices for a batch of {n} samples; "
            "give one int for all or one per sample"
        )
    bad = (index < 0) | (index >= k)
    if bool(bad.any()):
        raise NeuronSelectionError(
            f"neuron index {int(index[bad][0])} is out of range: the model has {k} outputs "
            f"(valid: 0 .. {k - 1})"
        )
    return index


StartValue = Callable[[torch.Tensor], torch.Tensor]
"""The signal value at the explained outputs as a function of their values: ones for the
gradient methods, the value itself for the relevance methods, ``max(0, y)`` for Deep
Taylor."""


@dataclass(frozen=True)
class OutputSelection:
    """What a call explains on an output batch, row by row.

    Attributes
    ----------
    selected
        The flattened output index explained per row; None for mode "all" (every output)
        and for a target.
    scores
        Per row, the explained value: the selected output, the sum over outputs ("all"),
        or the target's value ``t``.
    target
        Output weights or a callable (see ``target_gradient``), for these rows; None for a
        neuron selection.
    target_grad
        ``dt/dy`` on the output the selection was resolved on (None until known: a
        selection handed to other rows computes it on their output).
    """

    selected: torch.Tensor | None
    scores: torch.Tensor
    target: Target | None = None
    target_grad: torch.Tensor | None = None

    def start(self, output: torch.Tensor, start_value: StartValue) -> torch.Tensor:
        """The start signal on ``output`` (rows as this selection's): ``start_value(y)`` at
        the selected neurons (every output for "all") and 0 elsewhere, or
        ``start_value(y) * dt/dy`` for a target, which sums to ``t`` for a linear ``t`` when
        ``start_value`` is the identity (relevance methods)."""
        if self.target is not None:
            grad = self.target_grad
            if grad is None:
                grad = target_gradient(output, self.target)[0]
            return start_value(output.detach()) * grad
        flat = output.detach().reshape(output.shape[0], -1)
        value = start_value(flat)
        if self.selected is None:
            return value.reshape(output.shape)
        start_flat = torch.zeros_like(flat)
        rows = torch.arange(flat.shape[0], device=flat.device)
        start_flat[rows, self.selected] = value[rows, self.selected]
        return start_flat.reshape(output.shape)

    def scores_of(self, output: torch.Tensor) -> torch.Tensor:
        """The explained value of each row of another ``output`` whose rows are this
        selection's (occlusion: the score after a window is replaced)."""
        if self.target is not None:
            return target_gradient(output, self.target)[1]
        flat = output.reshape(output.shape[0], -1)
        if self.selected is None:
            return flat.sum(dim=1)
        return flat[torch.arange(flat.shape[0], device=flat.device), self.selected]

    def rows(self, samples: torch.Tensor, output_dim: int) -> OutputSelection:
        """The selection for a batch whose row r is a point of sample ``samples[r]`` (the
        points of integrated gradients, SmoothGrad, DeepLiftShap, occlusion): per-sample
        neurons, scores and target weights picked by row; a callable target as
        ``target_rows`` gives it."""
        n = self.scores.shape[0]
        return OutputSelection(
            None if self.selected is None else self.selected[samples],
            self.scores[samples],
            target_rows(self.target, samples, n, output_dim),
        )


def resolve(
    output: torch.Tensor,
    mode: str,
    neuron_selection: Any = None,
    target: Target | ClassTarget | None = None,
    n_samples: int | None = None,
) -> OutputSelection:
    """The selection of a call on the explained ``output`` (checked arguments first; with
    ``n_samples``, the output must have one row per sample)."""
    check_selection_arguments(mode, neuron_selection, target)
    check_explained_output(output, n_samples)
    if isinstance(target, ClassTarget):
        if output.dim() != 2:
            raise OutputSelectionError(
                f"target as class indices needs an output of shape (N, classes), got "
                f"{tuple(output.shape)}; for this output pass floating weights of its shape "
                "or a callable f(y) -> (N,)"
            )
        mode, neuron_selection, target = "index", target.indices, None
    if target is not None:
        grad, scores = target_gradient(output, target)
        return OutputSelection(None, scores, target, grad)
    selected = select_neurons(output, mode, neuron_selection)
    flat = output.detach().reshape(output.shape[0], -1)
    if selected is None:
        return OutputSelection(None, flat.sum(dim=1))
    rows = torch.arange(flat.shape[0], device=flat.device)
    return OutputSelection(selected, flat[rows, selected])
