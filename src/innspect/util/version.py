"""innspect's version, read from the installed package's metadata (pyproject.toml is the
one place it is written)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("innspect")
except PackageNotFoundError:  # a source tree on sys.path without an install
    VERSION = "unknown"
