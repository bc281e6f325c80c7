"""The registry of analyzer names (iNNvestigate's names) and ``create_analyzer``."""

from __future__ import annotations

from typing import Any

from torch import nn

from innspect.analyzers.base import Analyzer

_ANALYZERS: dict[str, type[Analyzer]] = {}


def register(cls: type[Analyzer]) -> type[Analyzer]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _ANALYZERS and _ANALYZERS[cls.name] is not cls:
        raise ValueError(f"analyzer name {cls.name!r} registered twice")
    _ANALYZERS[cls.name] = cls
    return cls


def create_analyzer(name: str, model: nn.Module, **kwargs: Any) -> Analyzer:
    """Create the analyzer registered as ``name`` for ``model``.

    Raises
    ------
    KeyError
        If ``name`` is unknown; the message lists the known names.
    """
    _load_all()
    try:
        cls = _ANALYZERS[name]
    except KeyError:
        raise KeyError(
            f"no analyzer named {name!r}; known analyzers: {', '.join(sorted(_ANALYZERS))}"
        ) from None
    return cls(model, **kwargs)


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
    # Importing the method modules registers their classes.
    from innspect.analyzers import methods  # noqa: F401
