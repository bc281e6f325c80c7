"""Saving and loading analyzers: their options (JSON) and fitted state (arrays) in an
``.npz`` file, written atomically and read without unpickling anything.

``Persistent`` is a base of ``Analyzer``; loading looks the saved name up in the registry
and validates the saved options exactly as on creation.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import numpy as np
from torch import nn

from innspect.analyzers.options import jsonable
from innspect.analyzers.registry import analyzer_class, create_analyzer
from innspect.errors import ConfigFileError, InnspectError
from innspect.util.files import write_npz


class Persistent:
    """Save and load for analyzers: ``get_config`` / ``get_state`` say what to keep."""

    name: ClassVar[str] = "analyzer"
    _options: dict[str, Any]

    def get_config(self) -> dict[str, Any]:
        """The options this analyzer was created with (JSON-serialisable)."""
        return {"name": self.name, "options": jsonable(self._options)}

    def get_state(self) -> dict[str, np.ndarray]:
        """Fitted state as arrays (empty for analyzers that are not trained)."""
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore state produced by ``get_state``."""

    def save(self) -> tuple[str, dict[str, Any]]:
        """Return (name, state) from which ``load`` rebuilds the analyzer (model excluded)."""
        return self.name, {"config": self.get_config(), "arrays": self.get_state()}

    @staticmethod
    def load(name: str, state: dict[str, Any], model: nn.Module) -> Any:
        """Rebuild an analyzer saved with ``save``; the model is passed again."""
        config = state["config"]
        analyzer = create_analyzer(name, model, **config["options"])
        analyzer.set_state(state.get("arrays", {}))
        return analyzer

    def save_npz(self, path: str | os.PathLike) -> None:
        """Write configuration and fitted state to an .npz file (atomically)."""
        name, state = self.save()
        payload = {f"state/{k}": v for k, v in state["arrays"].items()}
        payload["config"] = np.array(json.dumps({"name": name, **state["config"]}))
        write_npz(path, payload)

    @classmethod
    def load_npz(cls, path: str | os.PathLike, model: nn.Module) -> Any:
        """Rebuild an analyzer written by ``save_npz`` (``path`` with or without ``.npz``).

        The file is never unpickled, and its options are validated as on creation. Called
        on a subclass (``IntegratedGradients.load_npz``), the file must hold that analyzer.
        Any damaged, foreign or invalid file raises ConfigFileError naming it.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        path = _existing_npz(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if "config" not in data.files:
                    raise ValueError("it has no 'config' entry")
                config = json.loads(str(data["config"][()]))
                arrays = {
                    k[len("state/") :]: np.asarray(data[k])
                    for k in data.files
                    if k.startswith("state/")
                }
            name, options = _saved_config(config)
            saved_class = analyzer_class(name)
        except Exception as error:  # noqa: BLE001 - zip, npy, JSON and key errors alike
            raise ConfigFileError(
                f"{path} is not an analyzer file written by save_npz, or it is damaged "
                f"({type(error).__name__}: {error})"
            ) from error
        if not issubclass(saved_class, cls):
            raise ConfigFileError(
                f"{path} holds a {name!r} analyzer, not {cls.name!r}; load it with "
                "innspect.Analyzer.load_npz"
            )
        try:
            return Persistent.load(name, {"config": {"options": options}, "arrays": arrays}, model)
        except (TypeError, ValueError, KeyError, InnspectError) as error:
            raise ConfigFileError(
                f"{path}: its options are not valid for {name!r} ({error})"
            ) from error


def _existing_npz(path: str | os.PathLike) -> str:
    """The file ``save_npz(path)`` wrote: ``path`` itself, or ``path`` + ".npz"."""
    path = os.fspath(path)
    if not os.path.exists(path) and not path.endswith(".npz") and os.path.exists(path + ".npz"):
        return path + ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no analyzer file {path!r} (nor {path + '.npz'!r})")
    return path


def _saved_config(config: Any) -> tuple[str, dict[str, Any]]:
    """(name, options) of a saved configuration, or ValueError naming what is wrong."""
    if not isinstance(config, dict):
        raise ValueError(f"its config is a {type(config).__name__}, not an object")
    name, options = config.get("name"), config.get("options", {})
    if not isinstance(name, str):
        raise ValueError(f"its config has no analyzer name (got {name!r})")
    if not isinstance(options, dict):
        raise ValueError(f"its options are a {type(options).__name__}, not an object")
    return name, options
