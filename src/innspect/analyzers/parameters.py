"""The options an analyzer class accepts, read from its constructor (and its bases'), and
how one set of options is shared out among several methods (``innspect analyze``,
``explain_dataset``)."""

from __future__ import annotations

import difflib
from typing import Any

from innspect.analyzers.api import Analyzer, analyzer_parameters
from innspect.analyzers.averaged import Averaged
from innspect.analyzers.registry import analyzer_class
from innspect.errors import OptionError


def _accepted(cls: type, options: dict[str, Any]) -> set[str]:
    """The options ``cls`` takes; for a method averaged over points (integrated gradients,
    SmoothGrad) also those of the inner method it averages (``inner=``), which it passes on."""
    accepted = analyzer_parameters(cls)[0]
    if issubclass(cls, Averaged) and "inner" in accepted:
        try:
            inner = analyzer_class(options.get("inner") or cls.default_inner)
        except (KeyError, TypeError):
            return accepted  # the analyzer refuses the name itself, with its own message
        accepted = accepted | analyzer_parameters(inner)[0]
    return accepted


# Options every analyzer takes (iNNvestigate's): not worth listing in an error message.
_EVERY_ANALYZER = {"neuron_selection_mode", "disable_model_checks", "allow_lambda_layers"}


def options_for_methods(
    methods: list[str], options: dict[str, Any], seed: int, neuron: int | None
) -> dict[str, dict[str, Any]]:
    """Each method's options: every option of ``options`` it takes, the seed where it has
    one, ``neuron_selection_mode="index"`` when a ``neuron`` is given.

    An option no chosen method takes is an error listing the options they do take.
    """
    accepted = {m: _accepted(analyzer_class(m), options) for m in methods}
    for key in options:
        if not any(key in accepted[m] for m in methods):
            # Listed: the methods' own options, not those every analyzer takes (neuron
            # selection, target, output, attribute_to...) nor the reverse_* ones.
            shared = analyzer_parameters(Analyzer)[0] | _EVERY_ANALYZER
            valid = sorted(set().union(*accepted.values()))
            which = methods[0] if len(methods) == 1 else ", ".join(methods)
            listed = ", ".join(v for v in valid if v not in shared and not v.startswith("reverse_"))
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise OptionError(
                f"'{key}' is not an option of {which}; {hint}valid options: {listed or 'none'} "
                "(and the reverse_* options and those every analyzer takes; see "
                "`innspect methods`)"
            )
    result = {}
    for method in methods:
        own = {k: v for k, v in options.items() if k in accepted[method]}
        if "seed" in accepted[method]:
            own.setdefault("seed", seed)
        if neuron is not None:
            own["neuron_selection_mode"] = "index"
        result[method] = own
    return result
