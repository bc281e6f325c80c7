"""The ``innspect`` command: a table of subcommands and the shared error handling.

Each subcommand lives in its own module with ``HELP``, ``DESCRIPTION``, ``configure(parser)``
(its arguments) and ``run(args) -> int``; a new one is one line in ``SUBCOMMANDS``. Modules keep
heavy imports inside ``run`` so ``innspect --help`` stays fast.

Bad input (missing or undecodable files, unknown methods, neuron indices out of range, weights
that do not fit, an unwritable output folder...) prints one line to stderr and exits with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from innspect.cli.common import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, CLIError
from innspect.errors import InnspectError, InternalError

# name -> module implementing it (HELP, DESCRIPTION, configure(parser), run(args) -> int).
SUBCOMMANDS: dict[str, str] = {
    "demo": "innspect.cli.demo",
    "analyze": "innspect.cli.analyze",
    "methods": "innspect.cli.methods",
    "patterns": "innspect.cli.patterns",
    "references": "innspect.cli.references",
    "introspect": "innspect.cli.introspect",
    "evaluate": "innspect.cli.evaluate",
    "text": "innspect.cli.text",
}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (status 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser, with one subparser per entry of ``SUBCOMMANDS``."""
    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser = _Parser(
        prog="innspect",
        description="Explain what PyTorch networks do (iNNvestigate's methods for PyTorch).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name,
            parents=[debug],
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    args.debug = debug

    try:
        return args._run(args)
    except InternalError as error:  # innspect's defect, not the user's mistake: status 1
        if debug:
            raise
        return _fail(EXIT_INTERNAL, f"{error} (rerun with --debug for the traceback)")
    except (CLIError, InnspectError) as error:
        if debug:
            raise
        return _fail(EXIT_BAD_INPUT, str(error))
    except KeyboardInterrupt:
        return _fail(130, "interrupted")
    except BrokenPipeError:
        # The reader went away (e.g. `innspect methods | head`): stop quietly.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the exit-time flush silent
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - anything else is a bug: say so in one line
        if debug:
            raise
        return _fail(
            EXIT_INTERNAL,
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for the "
            "traceback)",
        )


def _fail(status: int, message: str) -> int:
    one_line = " ".join(str(message).split())
    print(f"innspect: error: {one_line}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
