"""``innspect methods``: list every analyzer with its options."""

from __future__ import annotations

import argparse
import inspect

HELP = "list the analyzers and their options"
_COMMON_OPTIONS = {"neuron_selection_mode"}


def configure(parser: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(args: argparse.Namespace) -> int:
    """Print each analyzer, its description and options."""
    from innspect.analyzers.registry import analyzer_class, describe_analyzers

    descriptions = describe_analyzers()
    width = max(len(name) for name in descriptions) + 2
    for name, description in descriptions.items():
        print(f"{name:<{width}}{description}")
        options = own_options(analyzer_class(name))
        if options:
            print(f"{'':<{width}}options: {', '.join(options)}")
    print(
        "\nEvery analyzer also takes neuron_selection_mode ('max_activation', 'index', 'all');"
        " pass options with `innspect analyze --option KEY=VALUE`."
    )
    return 0


def own_options(cls: type) -> list[str]:
    """The class's own constructor options as ``name=default`` (or ``name (required)``)."""
    signature = inspect.signature(cls.__init__)
    options = []
    for index, (name, parameter) in enumerate(signature.parameters.items()):
        if index < 2 or name in _COMMON_OPTIONS or name.startswith("reverse_"):
            continue
        if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if parameter.default is inspect.Parameter.empty:
            options.append(f"{name} (required)")
        else:
            options.append(f"{name}={parameter.default!r}")
    return options
