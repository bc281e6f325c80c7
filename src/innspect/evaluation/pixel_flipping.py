"""Pixel flipping (Samek et al., *Evaluating the visualization of what a deep neural network
has learned*, arXiv:1509.06321), as tensorflow-lrp's ``HeatmapEval`` does it (REFERENCES.md B9).

Per sample, the input features are flipped most relevant first (MoRF): each one in turn is
replaced by a value drawn from N(0, 1) in input space, cumulatively, and the model's output
for the true class is recorded every ``every`` flips. A good explanation makes the score fall
faster than a random ordering, the baseline (``random_heatmaps``).

Differences from tensorflow-lrp: the curve starts at 0 flips (tensorflow-lrp records after
1, 1 + k, 1 + 2k, ... flips), the noise is drawn once per sample and feature from ``seed``
(so the random baseline and reruns are reproducible), and all flip steps of a sample run as
a few batched forward passes instead of one pass per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from innspect.errors import InputError
from innspect.viz.files import save_figure


@dataclass
class PixelFlippingCurve:
    """The result of :func:`pixel_flipping`.

    Attributes
    ----------
    flipped
        Number of flipped features at each point of the curve: 0, every, 2 * every, ...
    scores
        Mean over samples of the true-class output at each point.
    per_sample
        (samples, points): each sample's true-class output.
    """

    flipped: np.ndarray
    scores: np.ndarray
    per_sample: np.ndarray

    @property
    def area(self) -> float:
        """Mean score over the curve's points (lower: the score fell faster)."""
        return float(self.scores.mean())


def random_heatmaps(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Standard-normal "heatmaps": the random ordering baseline."""
    return np.random.default_rng(seed).standard_normal(shape)


def pixel_flipping(
    model: nn.Module,
    x: Any,
    heatmaps: Any,
    labels: Any,
    every: int = 5,
    n_flips: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    batched: bool = True,
) -> PixelFlippingCurve:
    """Flip the most relevant features first and record the true-class output.

    Parameters
    ----------
    model
        Returns (N, classes) scores (logits).
    x, heatmaps
        Inputs and their heatmaps, the same shape (N, ...); numpy arrays or tensors.
    labels
        The true class of each sample (N,).
    every
        Record the score every ``every`` flips.
    n_flips
        How many features to flip (default: all).
    seed
        Seed of the N(0, 1) replacement values (one per sample and feature).
    batch_size
        Rows per forward pass in the batched mode.
    batched
        False: flip one feature at a time and run the model after every ``every`` flips (the
        tutorial's loop; same result, for checking).
    """
    x_np = _array(x, "x")
    h_np = _array(heatmaps, "heatmaps")
    if x_np.shape != h_np.shape:
        raise InputError(f"heatmaps {h_np.shape} must have the shape of x {x_np.shape}")
    labels_np = np.asarray(labels).reshape(-1)
    n = x_np.shape[0]
    if labels_np.shape != (n,) or labels_np.dtype.kind not in "iu":
        raise InputError(f"labels must be {n} integers (one true class per sample)")
    if every < 1:
        raise InputError(f"every must be >= 1, got {every}")
    flat_x = x_np.reshape(n, -1)
    features = flat_x.shape[1]
    n_flips = features if n_flips is None else int(n_flips)
    if not 0 <= n_flips <= features:
        raise InputError(f"n_flips must be in 0..{features}, got {n_flips}")
    # Most relevant first; a stable sort keeps ties in feature order (as np.argsort(-h)).
    order = np.argsort(-h_np.reshape(n, -1), axis=1, kind="stable")
    noise = np.random.default_rng(seed).standard_normal(flat_x.shape).astype(flat_x.dtype)
    flipped = np.arange(0, n_flips + 1, every)
    run = _batched if batched else _one_by_one
    per_sample = run(model, flat_x, x_np.shape, order, noise, flipped, labels_np, batch_size)
    return PixelFlippingCurve(flipped, per_sample.mean(axis=0), per_sample)


def _array(values: Any, label: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "fiu" or array.ndim < 2:
        raise InputError(
            f"{label} must be a numeric batch (N, ...), got {array.dtype} {array.shape}"
        )
    return array.astype(np.float64 if array.dtype == np.float64 else np.float32)


def _scores(model: nn.Module, rows: np.ndarray, shape: tuple, labels: np.ndarray) -> np.ndarray:
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else None
    batch = torch.as_tensor(rows.reshape((len(rows), *shape[1:])), dtype=dtype, device=device)
    with torch.no_grad():
        output = model(batch).reshape(len(rows), -1)
    return output[torch.arange(len(rows)), torch.as_tensor(labels)].double().cpu().numpy()


def _batched(model, flat_x, shape, order, noise, flipped, labels, batch_size) -> np.ndarray:
    n, features = flat_x.shape
    rank = np.empty_like(order)
    rows = np.arange(features)
    per_sample = np.empty((n, len(flipped)))
    was_training = model.training
    model.eval()
    try:
        for i in range(n):
            rank[i, order[i]] = rows  # rank of each feature in the flipping order
            # Step s has the features of rank < flipped[s] replaced: one row per step.
            mask = rank[i][None, :] < flipped[:, None]
            inputs = np.where(mask, noise[i][None, :], flat_x[i][None, :])
            for start in range(0, len(flipped), batch_size):
                chunk = slice(start, start + batch_size)
                per_sample[i, chunk] = _scores(
                    model, inputs[chunk], shape, np.full(len(inputs[chunk]), labels[i])
                )
    finally:
        model.train(was_training)
    return per_sample


def _one_by_one(model, flat_x, shape, order, noise, flipped, labels, batch_size) -> np.ndarray:
    n = flat_x.shape[0]
    current = flat_x.copy()
    per_sample = np.empty((n, len(flipped)))
    recorded = set(flipped.tolist())
    was_training = model.training
    model.eval()
    try:
        point = 0
        for step in range(int(flipped[-1]) + 1):
            if step in recorded:
                per_sample[:, point] = _scores(model, current, shape, labels)
                point += 1
            if step < order.shape[1]:
                columns = order[:, step]
                current[np.arange(n), columns] = noise[np.arange(n), columns]
    finally:
        model.train(was_training)
    return per_sample


def plot_pixel_flipping(
    curves: dict[str, PixelFlippingCurve], path: str | os.PathLike | None = None
) -> Any:
    """One curve per method (the name ``"random"`` drawn black and dashed); returns the
    matplotlib Figure and writes it to ``path`` (atomically) when given."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        style = {"color": "black", "linestyle": "--"} if name == "random" else {}
        axes.plot(curve.flipped, curve.scores, label=f"{name} (area {curve.area:.3g})", **style)
    axes.set_xlabel("flipped features (most relevant first)")
    axes.set_ylabel("mean true-class output")
    axes.set_title("Pixel flipping: the faster the score falls, the better")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    if path is not None:
        save_figure(figure, path, dpi=100)
    return figure
