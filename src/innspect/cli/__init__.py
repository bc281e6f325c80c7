"""The ``innspect`` command: one module per subcommand, the only package that knows argparse,
exit codes and ``CLIError``."""

from innspect.cli.main import main

__all__ = ["main"]
