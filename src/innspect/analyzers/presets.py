"""Presets: named analyzers that are another analyzer with options fixed or derived.

A preset is a row of data (``Preset``); ``preset_class`` gives it a class of its own so it
keeps its name, signature, docstring and save/load. Method modules import this module, the
registry imports them: neither imports the other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


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
    family, title, summary, paper, innvestigate
        How the method describes itself (``Analyzer``'s attributes of the same names);
        ``family`` and ``paper`` default to the base's.
    """

    name: str
    base: type
    doc: str
    derive: Callable[..., dict[str, Any]] = field(default=lambda: {})
    fixed: dict[str, Any] = field(default_factory=dict)
    hint: str = ""
    family: str | None = None
    title: str = ""
    summary: str = ""
    paper: str | None = None
    innvestigate: str = ""


def preset_class(preset: Preset) -> type:
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
        "family": preset.family or base.family,
        "title": preset.title or preset.name,
        "summary": preset.summary or preset.doc.strip().splitlines()[0],
        "paper": base.paper if preset.paper is None else preset.paper,
        "innvestigate": preset.innvestigate,
    }
    return type(class_name, (base,), namespace)


def _same(given: Any, fixed: Any) -> bool:
    try:
        return bool(given == fixed)
    except Exception:  # noqa: BLE001 - e.g. comparing tensors: not the same option
        return False
