"""Optional dependencies of the introspection package, imported where used."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA = "innspect[introspect]"

# import name -> pip name, for the error message
_PIP_NAMES = {
    "sklearn": "scikit-learn",
    "umap": "umap-learn",
    "minisom": "minisom",
    "networkx": "networkx",
    "scipy": "scipy",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pip_name = _PIP_NAMES.get(module.split(".")[0], module)
        raise ImportError(
            f"{purpose} needs {pip_name}: pip install '{EXTRA}' (or pip install {pip_name})"
        ) from error
