"""The registry of analyzer names (iNNvestigate's names) and ``create_analyzer``.

Names come from two kinds of entries: analyzer classes (a method of its own) and
``Preset`` rows (a class with some options fixed or derived, e.g. ``lrp.epsilon`` is
``lrp`` with ``rule=Epsilon(epsilon, bias)``). The method modules list both in their
``ANALYZERS``; this module imports them only when a name is first looked up, and they do
not import this module, so there is no import cycle.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

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
)

_ANALYZERS: dict[str, type[Analyzer]] = {}
_loaded = False


@dataclass(frozen=True)
class Preset:
    """A named analyzer that is another one with options fixed or derived from its own.

    Parameters
    ----------
    name
        The analyzer name (iNNvestigate's or Zennit's).
    base
        The analyzer class it configures.
    doc
        One line (the first of the docstring), then details.
    derive
        A function of the preset's own options (its keyword parameters, with defaults)
        returning options for ``base``; e.g. ``lambda epsilon=1e-7, bias=True:
        {"rule": Epsilon(epsilon=epsilon, bias=bias)}``.
    fixed
        Options of the preset's own that it fixes: giving the same value is accepted,
        another value is refused with ``hint`` (iNNvestigate's ``bias`` on
        ``lrp.alpha_2_beta_1``).
    hint
        What to use instead, for the refusals.
    """

    name: str
    base: type
    doc: str
    derive: Callable[..., dict[str, Any]] = field(default=lambda: {})
    fixed: dict[str, Any] = field(default_factory=dict)
    hint: str = ""


def preset_class(preset: Preset) -> type[Analyzer]:
    """A class for ``preset``: ``base`` with the preset's signature and name."""
    base = preset.base
    own = inspect.signature(preset.derive).parameters

    def __init__(self: Any, model: nn.Module, **options: Any) -> None:
        for key, value in preset.fixed.items():
            if key in options and not _same(options.pop(key), value):
                raise ValueError(
                    f"{preset.name} fixes {key}={value!r}; {preset.hint or 'use another name'}"
                )
        derived = preset.derive(**{k: options.pop(k) for k in list(options) if k in own})
        clash = sorted(set(derived) & set(options))
        if clash:
            raise TypeError(
                f"{preset.name} fixes its rules; it does not take {', '.join(clash)}= "
                f"({preset.hint or 'use the general analyzer for other rules'})"
            )
        base.__init__(self, model, **derived, **options)

    parameters = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.values()),
        *(
            inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
            for k, v in preset.fixed.items()
            if k not in own
        ),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    __init__.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    class_name = "".join(part.capitalize() for part in preset.name.replace(".", "_").split("_"))
    namespace = {
        "name": preset.name,
        "__init__": __init__,
        "__doc__": preset.doc,
        "__module__": base.__module__,
        "preset": preset,
    }
    return type(class_name, (base,), namespace)


def _same(given: Any, fixed: Any) -> bool:
    try:
        return bool(given == fixed)
    except Exception:  # noqa: BLE001 - e.g. comparing tensors: not the same option
        return False


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
