"""What the subcommands share: ``CLIError`` (bad command-line input: one line, exit status
2), exit statuses, the parser of ``--option KEY=VALUE`` and of method names."""

from __future__ import annotations

import argparse
import ast
import difflib
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from innspect.analyzers.registry import list_analyzers

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class CLIError(Exception):
    """Bad input from the command line; the message is shown as one line, exit status 2."""


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict; values are Python literals or plain words."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"--option needs KEY=VALUE, got '{item}'")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text  # a plain word, e.g. --option postprocess=abs
    return options


# -- methods and options -----------------------------------------------------------------------
def resolve_methods(names: Sequence[str], methods_file: str | None) -> list[str]:
    """The analyzer names asked for, checked against the registry (with "did you mean")."""
    wanted = list(names)
    if methods_file is not None:
        file = Path(methods_file)
        if not file.is_file():
            raise CLIError(f"methods file not found: {file}")
        for line in file.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                wanted.extend(line.split())
    if not wanted:
        raise CLIError("no method given: use --method NAME... or --methods FILE")
    known = list_analyzers()
    by_lower = {name.lower(): name for name in known}
    result: list[str] = []
    for name in wanted:
        if name not in known:
            close = [by_lower[name.lower()]] if name.lower() in by_lower else []
            close = close or difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise CLIError(f"unknown method '{name}'; {hint}`innspect methods` lists them all")
        if name not in result:
            result.append(name)
    return result


def quiet_unless_debug(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``run(args)`` with torch's warnings and log lines held back: noise for a command-line
    user (``--debug`` keeps them)."""
    if args.debug:
        return run(args)
    logging.getLogger("torch").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(args)
