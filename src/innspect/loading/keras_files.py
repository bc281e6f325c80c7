"""Reading Keras model files with h5py alone: the model config and each layer's variables from
a legacy HDF5 ``.h5`` (tf.keras 2.x, Keras 3's ``model.save("m.h5")``) or a Keras 3 ``.keras``
zip (``config.json`` + ``model.weights.h5``). Nothing from a file is ever evaluated.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from innspect.errors import LoadingError, first_line

_RESAVE = (
    "load it with the Keras/TensorFlow that wrote it and save it with model.save('model.keras') "
    "or model.save('model.h5')"
)


@dataclass
class KerasFile:
    """A Keras model file's config and weights, open for reading."""

    path: Path
    config: dict[str, Any]  # {"class_name": ..., "config": {...}}
    keras_version: str
    weights: WeightStore
    _handles: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for handle in self._handles:
            handle.close()


def open_keras_file(path: str | Path) -> KerasFile:
    """Open ``path`` as a Keras model file; every failure is a one-line ``LoadingError``."""
    file = Path(path)
    if file.is_dir():
        if (file / "saved_model.pb").is_file() or (file / "saved_model.pbtxt").is_file():
            raise LoadingError(
                f"{file} is a TensorFlow SavedModel folder, which innspect cannot read without "
                f"TensorFlow: {_RESAVE} (tf.keras.models.load_model('{file}') first)"
            )
        raise LoadingError(f"{file} is a folder, not a Keras .h5 or .keras file")
    if not file.is_file():
        raise LoadingError(f"Keras model file not found: {file}")
    if zipfile.is_zipfile(file):
        return _open_keras_zip(file)
    try:
        is_hdf5 = h5py.is_hdf5(str(file))
    except OSError as error:
        raise LoadingError(f"cannot read {file}: {first_line(error)}") from error
    if not is_hdf5:
        kind = "a .keras zip" if file.suffix == ".keras" else "an HDF5 file"
        raise LoadingError(
            f"{file} is not {kind} (damaged or truncated?): innspect reads Keras models saved "
            "as .h5 (legacy HDF5) or .keras"
        )
    return _open_legacy_h5(file)


def _open_h5(source: Any, file: Path) -> h5py.File:
    try:
        return h5py.File(source, "r")
    except (OSError, ValueError) as error:
        raise LoadingError(
            f"cannot open {file} as HDF5 (damaged or truncated?): {first_line(error)}"
        ) from error


def _open_legacy_h5(file: Path) -> KerasFile:
    h5 = _open_h5(str(file), file)
    try:
        raw = h5.attrs.get("model_config")
        if raw is None:
            hint = (
                "it holds weights only (model.save_weights); save the whole model with "
                "model.save('model.h5') or model.save('model.keras')"
                if "layer_names" in h5.attrs or "model_weights" not in h5
                else "it has no model_config attribute"
            )
            raise LoadingError(f"{file} is not a Keras model file: {hint}")
        config = _json(raw, file, "model_config")
        if "model_weights" not in h5:
            raise LoadingError(f"{file} has a model config but no model_weights group")
        version = _text(h5.attrs.get("keras_version", ""))
        weights = LegacyWeights(h5["model_weights"], file)
    except LoadingError:
        h5.close()
        raise
    except Exception as error:  # noqa: BLE001 - h5py errors on damaged files are many kinds
        h5.close()
        raise LoadingError(f"cannot read {file}: {first_line(error)}") from error
    return KerasFile(file, config, version, weights, [h5])


def _open_keras_zip(file: Path) -> KerasFile:
    try:
        with zipfile.ZipFile(file) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise LoadingError(f"{file} is a zip without config.json: not a .keras model")
            config = _json(archive.read("config.json"), file, "config.json")
            metadata = (
                _json(archive.read("metadata.json"), file, "metadata.json")
                if "metadata.json" in names
                else {}
            )
            if "model.weights.h5" not in names:
                sharded = any(n.endswith(".json") and "weights" in n for n in names)
                raise LoadingError(
                    f"{file} holds no model.weights.h5"
                    + (" (sharded weights are not supported)" if sharded else "")
                    + f": the model's weights are missing; {_RESAVE}"
                )
            data = archive.read("model.weights.h5")
    except LoadingError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise LoadingError(
            f"cannot read {file} as a .keras zip (damaged or truncated?): {first_line(error)}"
        ) from error
    h5 = _open_h5(io.BytesIO(data), file)
    version = str(metadata.get("keras_version", "3"))
    return KerasFile(file, config, version, Keras3Weights(h5, file), [h5])


def _json(raw: Any, file: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_text(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LoadingError(f"{file}: {what} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise LoadingError(f"{file}: {what} is not a JSON object")
    return value


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes | np.bytes_) else str(raw)


# -- weights -----------------------------------------------------------------------------------
class WeightStore:
    """A layer's variables by its path of layer names from the top model (nested models)."""

    def variables(self, path: list[str], keras_path: list[str], count: int) -> list[np.ndarray]:
        """The layer's ``count`` variables in Keras's order. ``path`` names the layers from the
        top model down; ``keras_path`` the same as Keras 3's weight-file paths."""
        raise NotImplementedError


def _array(dataset: Any, file: Path, where: str) -> np.ndarray:
    try:
        return np.asarray(dataset[()])
    except Exception as error:  # noqa: BLE001 - a truncated dataset fails here
        raise LoadingError(f"cannot read weight {where} in {file}: {first_line(error)}") from error


class LegacyWeights(WeightStore):
    """``model_weights/<top layer>/`` with its ``weight_names`` (tf.keras 2.x and Keras 3)."""

    def __init__(self, group: h5py.Group, file: Path) -> None:
        self.group = group
        self.file = file

    def variables(self, path: list[str], keras_path: list[str], count: int) -> list[np.ndarray]:
        if count == 0:
            return []
        top = path[0]
        if top not in self.group:
            raise LoadingError(f"{self.file} holds no weights for layer '{top}'")
        layer = self.group[top]
        names = [_text(n) for n in layer.attrs.get("weight_names", [])]
        if len(path) > 1:
            # A nested model lists every variable of its layers (trainable ones first):
            # a layer's own are those whose name ends in <layer>/<variable>.
            leaf = path[-1]
            names = [n for n in names if _parts(n)[-2:-1] == [leaf]]
        if len(names) != count:
            raise LoadingError(
                f"{self.file}: layer '{'/'.join(path)}' has {len(names)} weights in the file, "
                f"its config needs {count}"
            )
        return [_array(layer[name], self.file, name) for name in names]


def _parts(name: str) -> list[str]:
    return re.sub(r":\d+$", "", name).split("/")


class Keras3Weights(WeightStore):
    """``model.weights.h5`` of a ``.keras`` zip: ``layers/<snake_case class>[_k]/vars/<i>``."""

    def __init__(self, h5: h5py.File, file: Path) -> None:
        self.h5 = h5
        self.file = file

    def variables(self, path: list[str], keras_path: list[str], count: int) -> list[np.ndarray]:
        where = "/".join(keras_path) + "/vars"
        group = self.h5.get(where)
        if group is None:
            if count == 0:
                return []
            raise LoadingError(f"{self.file} holds no weights for layer '{'/'.join(path)}'")
        name = group.attrs.get("name")
        if name is not None and _text(name) != path[-1]:
            raise LoadingError(
                f"{self.file}: weights at {where} belong to layer '{_text(name)}', expected "
                f"'{path[-1]}'"
            )
        if len(group) != count:
            raise LoadingError(
                f"{self.file}: layer '{'/'.join(path)}' has {len(group)} weights in the file, "
                f"its config needs {count}"
            )
        return [_array(group[str(i)], self.file, f"{where}/{i}") for i in range(count)]
