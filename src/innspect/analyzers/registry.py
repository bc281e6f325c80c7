"""The registry of analyzer names (iNNvestigate's names) and ``create_analyzer``.

Names come from two kinds of entries: analyzer classes (a method of its own) and
``Preset`` rows (``presets.py``: a class with some options fixed or derived, e.g.
``lrp.epsilon`` is ``lrp`` with ``rule=Epsilon(epsilon, bias)``). Each method module lists
both in its ``ANALYZERS``; the package that holds it registers them when it is imported
(``innspect.analyzers`` and ``innspect.patterns``, both imported by ``import innspect``),
so the registry is complete before any call and is never filled lazily.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torch import nn

from innspect.analyzers.presets import Preset, preset_class

if TYPE_CHECKING:
    from innspect.analyzers.api import Analyzer

_ANALYZERS: dict[str, type[Analyzer]] = {}


def register(entry: Any) -> Any:
    """Make an analyzer class (by its ``name``) or a ``Preset`` available; returns it."""
    cls = preset_class(entry) if isinstance(entry, Preset) else entry
    if cls.name in _ANALYZERS and _ANALYZERS[cls.name] is not cls:
        raise ValueError(f"analyzer name {cls.name!r} registered twice")
    _ANALYZERS[cls.name] = cls
    return entry


def register_all(entries: Iterable[Any]) -> None:
    """``register`` each entry of a method module's ``ANALYZERS``."""
    for entry in entries:
        register(entry)


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
    return sorted(_ANALYZERS)


def registered() -> list[str]:
    """Names of all registered analyzers in registration order (method families in the
    order ``innspect.analyzers`` registers them, each in its ``ANALYZERS`` order)."""
    return list(_ANALYZERS)


def analyzer_class(name: str) -> type[Analyzer]:
    """The class registered as ``name`` (KeyError listing the known names otherwise)."""
    if name not in _ANALYZERS:
        raise KeyError(
            f"no analyzer named {name!r}; known analyzers: {', '.join(sorted(_ANALYZERS))}"
        )
    return _ANALYZERS[name]


def describe_analyzers() -> dict[str, str]:
    """Each name with its one-sentence ``summary`` (else its docstring's first line)."""
    return {name: _summary(cls) for name, cls in sorted(_ANALYZERS.items())}


def _summary(cls: type) -> str:
    summary = getattr(cls, "summary", "")
    if summary:
        return summary
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
