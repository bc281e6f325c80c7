"""The registry of analyzer names (iNNvestigate's names) and ``create_analyzer``.

Names come from two kinds of entries: analyzer classes (a method of its own) and
``Preset`` rows (``presets.py``: a class with some options fixed or derived, e.g.
``lrp.epsilon`` is ``lrp`` with ``rule=Epsilon(epsilon, bias)``). The method modules list
both in their ``ANALYZERS``; this module imports them when a name is first looked up, and
they do not import this module, so there is no import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torch import nn

from innspect.analyzers.presets import Preset, preset_class

if TYPE_CHECKING:
    from innspect.analyzers.base import Analyzer

# The modules whose ``ANALYZERS`` lists make up the catalogue.
METHOD_MODULES = (
    "innspect.analyzers.misc",
    "innspect.analyzers.gradient",
    "innspect.analyzers.wrappers",
    "innspect.analyzers.lrp",
    "innspect.analyzers.composites",
    "innspect.analyzers.deeptaylor",
    "innspect.analyzers.pattern",
    "innspect.analyzers.deeplift",
    "innspect.analyzers.occlusion",
)

_ANALYZERS: dict[str, type[Analyzer]] = {}
_loaded = False


def register(entry: Any) -> Any:
    """Make an analyzer class (by its ``name``) or a ``Preset`` available; returns it."""
    cls = preset_class(entry) if isinstance(entry, Preset) else entry
    if cls.name in _ANALYZERS and _ANALYZERS[cls.name] is not cls:
        raise ValueError(f"analyzer name {cls.name!r} registered twice")
    _ANALYZERS[cls.name] = cls
    return entry


def create_analyzer(name: str, model: nn.Module, **kwargs: Any) -> Analyzer:
    """Create the analyzer registered as ``name`` for ``model``.

    Raises
    ------
    KeyError
        If ``name`` is unknown; the message lists the known names.
    """
    return analyzer_class(name)(model, **kwargs)


def list_analyzers() -> list[str]:
    """Names of all registered analyzers, sorted."""
    _load_all()
    return sorted(_ANALYZERS)


def analyzer_class(name: str) -> type[Analyzer]:
    """The class registered as ``name`` (KeyError listing the known names otherwise)."""
    _load_all()
    if name not in _ANALYZERS:
        raise KeyError(
            f"no analyzer named {name!r}; known analyzers: {', '.join(sorted(_ANALYZERS))}"
        )
    return _ANALYZERS[name]


def describe_analyzers() -> dict[str, str]:
    """Each name with the first line of its class docstring."""
    _load_all()
    return {
        name: (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        for name, cls in sorted(_ANALYZERS.items())
    }


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for module_name in METHOD_MODULES:
        module = importlib.import_module(module_name)
        for entry in getattr(module, "ANALYZERS", ()):
            register(entry)
    _loaded = True
