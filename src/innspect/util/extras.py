"""Optional dependencies (the package's extras), imported where used with a clear error."""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> pip name, for the error message
_PIP_NAMES = {
    "sklearn": "scikit-learn",
    "umap": "umap-learn",
    "minisom": "minisom",
    "networkx": "networkx",
    "scipy": "scipy",
    "ray": "ray",
    "tqdm": "tqdm",
}


def require(module: str, purpose: str, extra: str) -> ModuleType:
    """Import ``module``, or raise an ImportError naming the extra ``innspect[extra]`` that
    provides it (and the package to install alone)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pip_name = _PIP_NAMES.get(module.split(".")[0], module)
        raise ImportError(
            f"{purpose} needs {pip_name}: pip install 'innspect[{extra}]' (or pip install "
            f"{pip_name})"
        ) from error
