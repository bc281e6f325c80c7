"""``python benchmarks/run.py --only keras``: loading a VGG16-sized Keras ``.h5``.

The file is written here with h5py alone, as tf.keras 2.x's ``model.save("vgg16.h5")`` lays it
out (``model_config`` JSON, ``model_weights/<layer>/<layer>/kernel:0`` with ``weight_names``):
VGG16's 13 convolutions, 5 max poolings, Flatten and 3 dense layers, 138,357,544 random
float32 weights (528 MiB), nothing downloaded. Rows: reading every weight into NumPy with
h5py alone (the floor any loader pays), and ``innspect.load_keras`` (read, transpose the
kernels to torch's layout, build the module). Target (issue 29): at most 2x the h5py read.
Median of ``--repeats`` runs of each, alternating, after one warm-up (the file is in the page
cache for both).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

import innspect

TARGET = 2.0
_CONVS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]  # (filters, convolutions) per block


def _layer(class_name: str, name: str, **config: object) -> dict:
    return {"class_name": class_name, "config": {"name": name, "trainable": True, **config}}


def write_vgg16(path: Path, size: int = 224, seed: int = 0) -> int:
    """A tf.keras-2-style VGG16 ``.h5`` with random weights; its number of weights."""
    rng = np.random.default_rng(seed)
    layers = [
        _layer("InputLayer", "input_1", batch_input_shape=[None, size, size, 3], dtype="float32")
    ]
    weights: dict[str, list[tuple[str, np.ndarray]]] = {}
    channels = 3
    for block, (filters, count) in enumerate(_CONVS, start=1):
        for i in range(1, count + 1):
            name = f"block{block}_conv{i}"
            conv = dict(filters=filters, kernel_size=[3, 3], strides=[1, 1], padding="same")
            conv.update(data_format="channels_last", dilation_rate=[1, 1], groups=1)
            layers.append(_layer("Conv2D", name, activation="relu", use_bias=True, **conv))
            kernel = rng.standard_normal((3, 3, channels, filters), dtype=np.float32) * 0.05
            weights[name] = [("kernel:0", kernel), ("bias:0", np.zeros(filters, np.float32))]
            channels = filters
        pool = dict(pool_size=[2, 2], strides=[2, 2], padding="valid")
        layers.append(_layer("MaxPooling2D", f"block{block}_pool", **pool))
    layers.append(_layer("Flatten", "flatten", data_format="channels_last"))
    features = channels * (size // 32) ** 2
    dense = (("fc1", 4096, "relu"), ("fc2", 4096, "relu"), ("predictions", 1000, "softmax"))
    for name, units, act in dense:
        layers.append(_layer("Dense", name, units=units, activation=act, use_bias=True))
        kernel = rng.standard_normal((features, units), dtype=np.float32) * 0.01
        weights[name] = [("kernel:0", kernel), ("bias:0", np.zeros(units, np.float32))]
        features = units
    config = {"class_name": "Sequential", "config": {"name": "vgg16", "layers": layers}}
    total = 0
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.14.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [layer["config"]["name"].encode() for layer in layers]
        for layer in layers:
            name = layer["config"]["name"]
            g = group.create_group(name)
            names = [f"{name}/{var}" for var, _ in weights.get(name, [])]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for full, (_, array) in zip(names, weights.get(name, []), strict=True):
                g.create_dataset(full, data=array)
                total += array.size
    return total


def read_with_h5py(path: Path) -> int:
    """Every weight of the file into NumPy, with h5py alone."""
    arrays = []
    with h5py.File(path, "r") as f:
        f["model_weights"].visititems(
            lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return sum(a.size for a in arrays)


def _paired_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median times of ``first`` and ``second`` run alternately (after one warm-up each), so
    that both see the same machine: the page cache, other processes and the allocator's
    state change over a run, and timing one after the other blocks gave one of them the
    quieter half."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, kept in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def section(repeats: int, size: int = 224) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vgg16.h5"
        count = write_vgg16(path, size)
        megabytes = path.stat().st_size / 2**20
        model = innspect.load_keras(path)
        assert sum(p.numel() for p in model.parameters()) == count
        del model
        read, load = _paired_medians(
            lambda: read_with_h5py(path), lambda: innspect.load_keras(path), repeats
        )
    ratio = load / read
    verdict = "met" if ratio <= TARGET else "NOT met"
    return "\n".join(
        [
            "## Keras loading (VGG16-sized .h5)\n",
            f"tf.keras-2-style VGG16 `.h5` written with h5py ({count:,} random float32 weights, "
            f"{megabytes:.0f} MiB, input {size}x{size}); median of {repeats} runs each, "
            "alternating, after a warm-up.\n",
            "| step | seconds | x h5py read |",
            "| --- | ---: | ---: |",
            f"| h5py: read every weight | {read:.3f} | 1.00 |",
            f"| innspect.load_keras | {load:.3f} | {ratio:.2f} |",
            "",
            f"Target: load_keras <= {TARGET:.0f}x the h5py read: {verdict} ({ratio:.2f}x).\n",
        ]
    )
