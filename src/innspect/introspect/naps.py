"""Neuron activation profiles (NAPs): exact per-group mean activations, streamed and mergeable.

A NAP of group g at a layer is the mean of the layer's activations over the group's samples
(Krug et al., "Neuron activation profiles for interpreting convolutional speech recognition
models", NeurIPS IRASL workshop 2018; iNNtrospect, ../shared/INTROSPECT.md sections 3-5).
Arrays are channels-last, (G, *spatial, C), as in iNNtrospect: PyTorch's channels-first
activations are moved by ``channel_axis``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from innspect.errors import InputError
from innspect.util.files import atomic_path, write_text

ArrayLike = np.ndarray | torch.Tensor


def group_sort_key(name: str) -> tuple[int, int, str]:
    """Integers in numeric order first ("2" before "10", unlike iNNtrospect's string sort),
    then the other names alphabetically."""
    stripped = name.strip()
    if stripped.lstrip("-").isdigit():
        return (0, int(stripped), name)
    return (1, 0, name)


def group_labels(groups: Iterable[Any]) -> list[str]:
    """Group labels as strings (``3``, ``np.int64(3)`` and ``"3"`` are the same group)."""
    if isinstance(groups, torch.Tensor):
        groups = groups.tolist()
    return [str(g.item() if isinstance(g, np.generic) else g) for g in groups]


def channels_last(array: ArrayLike, channel_axis: int) -> ArrayLike:
    """Move ``channel_axis`` (counted with the batch axis) to the end; 2-D arrays stay."""
    if array.ndim < 3:
        return array
    axis = channel_axis % array.ndim
    if axis == array.ndim - 1:
        return array
    if isinstance(array, torch.Tensor):
        return torch.movedim(array, axis, -1)
    return np.moveaxis(array, axis, -1)


def align_spatial(activations: ArrayLike, gradients: ArrayLike) -> ArrayLike:
    """Shift each sample's maps so its most salient position lands at the centre.

    The saliency map is ``mean_c |gradient|``; its first maximum (C order) moves to index
    ``size // 2`` along every spatial axis, with zero fill (iNNtrospect's ``align_data``,
    INTROSPECT.md section 3). Unlike iNNtrospect, the channel axis is never shifted
    (INTROSPECT.md section 10, bug 1). Samples with a constant saliency map are unchanged.

    Parameters
    ----------
    activations, gradients
        Channels-last batches of the same shape ``(B, *spatial, C)``, at least 3-D.

    Returns
    -------
    The aligned batch, same type, shape and dtype as ``activations``.
    """
    if activations.shape != gradients.shape:
        raise InputError(
            f"alignment needs gradients of the activations' shape {tuple(activations.shape)}, "
            f"got {tuple(gradients.shape)}"
        )
    if activations.ndim < 3:
        raise InputError(
            f"alignment needs spatial axes (B, *spatial, C); got shape {tuple(activations.shape)}"
        )
    is_numpy = not isinstance(activations, torch.Tensor)
    acts = torch.as_tensor(activations)
    saliency = torch.as_tensor(gradients).abs().mean(dim=-1)  # (B, *spatial)
    spatial = tuple(saliency.shape[1:])
    flat = saliency.reshape(saliency.shape[0], -1)
    peaks = flat.argmax(dim=1).tolist()  # the first maximum, as numpy's argmax
    constant = (flat.amax(dim=1) == flat.amin(dim=1)).tolist()
    out = torch.zeros_like(acts)
    for b, (peak, flat_map) in enumerate(zip(peaks, constant, strict=True)):
        if flat_map:
            out[b] = acts[b]
            continue
        index = np.unravel_index(peak, spatial)
        target, source = [b], [b]
        for size, position in zip(spatial, index, strict=True):
            shift = size // 2 - int(position)
            target.append(slice(max(shift, 0), size + min(shift, 0)))
            source.append(slice(max(-shift, 0), size - max(shift, 0)))
        out[tuple(target)] = acts[tuple(source)]
    return out.numpy() if is_numpy else out


@dataclass
class Naps:
    """Neuron activation profiles of several layers.

    Attributes
    ----------
    groups
        Group names; row i of every array is group ``groups[i]``.
    group_sizes
        Samples per group, int64 ``(G,)``.
    layers
        Layer name -> float64 array ``(G, *spatial, C)`` (channels last).
    samples, sample_groups
        Optional: a few samples per group and layer, flattened ``(n, D)``, and their n group
        names (``collect(keep_samples=...)``; for instance projections).
    gradients
        Optional: layer name -> per-group mean gradient of the target at the layer, shaped
        like ``layers`` (``collect(gradients=True)``).
    """

    groups: list[str]
    group_sizes: np.ndarray
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    sample_groups: list[str] = field(default_factory=list)
    gradients: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, layer: str) -> np.ndarray:
        if layer not in self.layers:
            raise InputError(
                f"no NAPs for layer '{layer}'; available: {', '.join(self.layers) or 'none'}"
            )
        return self.layers[layer]

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``naps.json`` and one ``layerNNN.npy`` per layer (plus ``_samples`` and
        ``_gradients`` files when present) into ``folder``, atomically per file; the manifest
        comes last and names every file, so a folder with a manifest is complete and files
        of an earlier run are never read."""
        folder = Path(folder)
        entries: dict[str, dict[str, str]] = {}
        for i, (name, array) in enumerate(self.layers.items()):
            stem = f"layer{i:03d}"
            entries[name] = {"naps": f"{stem}.npy"}
            for kind, arrays in (("samples", self.samples), ("gradients", self.gradients)):
                if name in arrays:
                    entries[name][kind] = f"{stem}_{kind}.npy"
            for kind, file in entries[name].items():
                source = array if kind == "naps" else getattr(self, kind)[name]
                _save_npy(folder / file, source)
        manifest = {
            "groups": self.groups,
            "group_sizes": [int(n) for n in self.group_sizes],
            "layers": entries,
            "sample_groups": self.sample_groups,
        }
        write_text(folder / "naps.json", json.dumps(manifest, indent=1))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Naps:
        """Read what :meth:`save` wrote."""
        folder = Path(folder)
        manifest_path = folder / "naps.json"
        if not manifest_path.is_file():
            raise InputError(f"{manifest_path} not found: not a folder written by Naps.save")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        layers, samples, gradients = {}, {}, {}
        for name, entry in manifest["layers"].items():
            layers[name] = np.load(folder / entry["naps"])
            for kind, found in (("samples", samples), ("gradients", gradients)):
                if kind in entry:
                    found[name] = np.load(folder / entry[kind])
        sizes = np.asarray(manifest["group_sizes"], np.int64)
        groups = list(manifest["groups"])
        sample_groups = list(manifest.get("sample_groups", []))
        return cls(groups, sizes, layers, samples, sample_groups, gradients)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


class NapAccumulator:
    """Per-group sums and counts, updated batch by batch: memory independent of corpus size.

    Sums are float64, so the result equals the mean over the concatenated activations up to
    float64 rounding. Two accumulators over disjoint parts of a corpus ``merge`` into the one
    of the whole corpus; ``state_dict``/``from_state_dict`` carry one between processes.

    Parameters
    ----------
    align
        Align each sample's maps on its gradient before summing (:func:`align_spatial`);
        layers without spatial axes are not aligned. Needs gradients in :meth:`update`.
    """

    def __init__(self, align: bool = False) -> None:
        self.align = align
        self.counts: dict[str, int] = {}
        self.sums: dict[str, dict[str, np.ndarray]] = {}  # layer -> group -> sum

    def update(
        self,
        activations: Mapping[str, ArrayLike],
        groups: Sequence[Any],
        gradients: Mapping[str, ArrayLike] | None = None,
    ) -> None:
        """Add one batch: channels-last ``(B, *spatial, C)`` arrays per layer, B group labels."""
        labels = group_labels(groups)
        for name, acts in activations.items():
            if acts.shape[0] != len(labels):
                raise InputError(
                    f"layer '{name}' has {acts.shape[0]} samples in this batch but "
                    f"{len(labels)} group labels were given"
                )
            if self.align and acts.ndim >= 3:
                if gradients is None or name not in gradients:
                    raise InputError(
                        f"aligned NAPs need the gradients of layer '{name}' "
                        "(collect with gradients=True)"
                    )
                acts = align_spatial(acts, gradients[name])
            self._add(name, acts, labels)
        for label in labels:
            self.counts[label] = self.counts.get(label, 0) + 1

    def _add(self, name: str, acts: ArrayLike, labels: list[str]) -> None:
        unique = sorted(set(labels), key=group_sort_key)
        sums = self.sums.setdefault(name, {})
        if isinstance(acts, torch.Tensor):
            # Reduce on the tensor's device; only (groups in batch, *shape) leaves it.
            acts = acts.detach()
            batch_sums = np.stack(
                [
                    _sum_rows(acts, [i for i, x in enumerate(labels) if x == g]).cpu().numpy()
                    for g in unique
                ]
            )
        else:
            label_array = np.asarray(labels)
            batch_sums = np.stack(
                [np.add.reduce(acts[label_array == g], axis=0, dtype=np.float64) for g in unique]
            )
        for g, total in zip(unique, batch_sums, strict=True):
            if g in sums:
                sums[g] += total
            else:
                sums[g] = total.copy()

    def merge(self, other: NapAccumulator) -> NapAccumulator:
        """Add ``other``'s sums and counts into this accumulator (returns self)."""
        if other.align != self.align:
            raise InputError("cannot merge aligned and unaligned NAP accumulators")
        for group, n in other.counts.items():
            self.counts[group] = self.counts.get(group, 0) + n
        for name, sums in other.sums.items():
            mine = self.sums.setdefault(name, {})
            for group, total in sums.items():
                mine[group] = mine[group] + total if group in mine else total.copy()
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain data (lists and arrays) from which :meth:`from_state_dict` rebuilds this."""
        return {
            "align": self.align,
            "counts": dict(self.counts),
            "sums": {name: dict(sums) for name, sums in self.sums.items()},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> NapAccumulator:
        accumulator = cls(align=bool(state["align"]))
        accumulator.counts = dict(state["counts"])
        accumulator.sums = {name: dict(sums) for name, sums in state["sums"].items()}
        return accumulator

    def result(self, groups: Sequence[Any] | None = None) -> Naps:
        """The NAPs: per-group means, groups in ``groups`` order (default: sorted names).

        A group named in ``groups`` without samples is an error.
        """
        if not self.counts:
            raise InputError("no samples were seen: the data stream was empty")
        names = sorted(self.counts, key=group_sort_key) if groups is None else group_labels(groups)
        empty = [g for g in names if self.counts.get(g, 0) == 0]
        if empty:
            raise InputError(
                f"group(s) {', '.join(repr(g) for g in empty)} have no samples; groups with "
                f"samples: {', '.join(sorted(self.counts, key=group_sort_key))}"
            )
        sizes = np.array([self.counts[g] for g in names], dtype=np.int64)
        layers = {
            name: np.stack([sums[g] / self.counts[g] for g in names])
            for name, sums in self.sums.items()
        }
        return Naps(names, sizes, layers)


def naps(
    activations: Mapping[str, ArrayLike] | ArrayLike,
    groups: Sequence[Any],
    *,
    gradients: Mapping[str, ArrayLike] | ArrayLike | None = None,
    align: bool = False,
    channel_axis: int = -1,
) -> Naps:
    """NAPs from activations already in memory (any framework's, as numpy arrays).

    Parameters
    ----------
    activations
        Layer name -> ``(N, ...)`` array, or one array (layer name ``"layer"``).
    groups
        N group labels.
    gradients
        Same structure as ``activations``; needed with ``align=True``.
    align
        Align each sample's spatial maps on its gradient saliency first (:func:`align_spatial`).
    channel_axis
        Where the channels are in the given arrays (``1`` for PyTorch's NCHW); moved last.

    Returns
    -------
    :class:`Naps`, groups sorted by name (integers numerically).
    """
    if not isinstance(activations, Mapping):
        activations = {"layer": activations}
        if gradients is not None and not isinstance(gradients, Mapping):
            gradients = {"layer": gradients}
    acts = {name: channels_last(a, channel_axis) for name, a in activations.items()}
    grads = None
    if gradients is not None:
        grads = {name: channels_last(g, channel_axis) for name, g in gradients.items()}
    accumulator = NapAccumulator(align=align)
    accumulator.update(acts, groups, grads)
    return accumulator.result()


def contrastive_naps(
    profiles: Naps, groups: Sequence[Any] | None = None, weight_by_group_size: bool = False
) -> Naps:
    """NAPs minus their (weighted) mean over the selected groups.

    ``CNAP_i = NAP_i - sum_j w_j NAP_j`` with ``w_j = 1/G'`` or, with
    ``weight_by_group_size``, ``w_j = n_j / sum n`` over the G' selected groups
    (iNNtrospect's ``compute_contrastive_naps``, INTROSPECT.md section 5). Unlike iNNtrospect,
    an unknown group name is an error instead of being dropped silently.
    """
    if groups is None:
        selected = list(profiles.groups)
    else:
        selected = sorted(set(group_labels(groups)), key=group_sort_key)
        unknown = [g for g in selected if g not in profiles.groups]
        if unknown:
            raise InputError(
                f"unknown group(s) {', '.join(repr(g) for g in unknown)}; "
                f"available: {', '.join(profiles.groups)}"
            )
    if not selected:
        raise InputError("contrastive NAPs need at least one group")
    index = [profiles.groups.index(g) for g in selected]
    sizes = profiles.group_sizes[index]
    if weight_by_group_size:
        weights = sizes / sizes.sum()
    else:
        weights = np.full(len(index), 1.0 / len(index))
    layers = {}
    for name, array in profiles.layers.items():
        chosen = array[index].astype(np.float64)
        mean = np.tensordot(weights, chosen, axes=1)
        layers[name] = chosen - mean
    return Naps(selected, sizes.copy(), layers)


def _sum_rows(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``tensor[rows].sum(0)`` in float64, row after row.

    Adding each row into one float64 total is ~10x faster on CPU than
    ``sum(dim=0, dtype=torch.float64)`` (which converts the whole batch first) and never
    copies the batch; the total keeps the rows' memory layout (channels-last views of
    channels-first activations included).
    """
    total = tensor[rows[0]].to(torch.float64)
    for row in rows[1:]:
        total.add_(tensor[row])
    return total
