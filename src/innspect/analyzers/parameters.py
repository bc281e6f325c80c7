"""The options an analyzer class accepts, read from its constructor (and its bases')."""

from __future__ import annotations

import inspect


def analyzer_parameters(cls: type, inherited: bool = True) -> tuple[set[str], set[str], bool]:
    """(accepted option names, required names, takes ``**kwargs``) of ``cls.__init__``.

    The first two parameters (self, model) are not options. With ``inherited``, options that
    ``**kwargs`` forwards to base classes count as accepted.
    """
    from innspect.analyzers.base import Analyzer

    signature = inspect.signature(cls.__init__)
    accepted: set[str] = set()
    required: set[str] = set()
    var_keyword = False
    for index, (name, parameter) in enumerate(signature.parameters.items()):
        if index < 2:  # self, model
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            accepted.add(name)
            if parameter.default is inspect.Parameter.empty:
                required.add(name)
    if var_keyword and inherited:
        for base in cls.__mro__[1:]:
            if "__init__" in base.__dict__ and issubclass(base, Analyzer):
                base_accepted, _, _ = analyzer_parameters(base)
                accepted |= base_accepted
    return accepted, required, var_keyword
