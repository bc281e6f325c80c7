"""Import paths of innspect 0.1 that moved in the package's restructuring (one layer per
folder), kept working for one release: importing one warns with a DeprecationWarning
naming the new path, and gives the module (or names) now there.

A meta-path finder serves the old names, so the tree holds no shim modules: a folder is
what it says. Remove this module, and its installation in ``innspect/__init__.py``, in the
release after 0.2.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# Old module -> new module (the old name gives the new module itself).
MODULES: dict[str, str] = {
    "innspect.fileio": "innspect.util.files",
    "innspect.progress": "innspect.util.progress",
    "innspect.model_utils": "innspect.graph.strip",
    "innspect.oracle": "innspect.conformance.oracle",
    "innspect.references": "innspect.conformance",
    "innspect.references.check": "innspect.conformance.check",
    "innspect.references.files": "innspect.conformance.files",
    "innspect.references.generate": "innspect.conformance.generate",
    "innspect.references.layers": "innspect.conformance.layers",
    "innspect.references.names": "innspect.conformance.names",
    "innspect.tools.conservation": "innspect.evaluation.conservation",
    "innspect.tools.perturbation": "innspect.evaluation.perturbation",
    "innspect.tools.pixel_flipping": "innspect.evaluation.pixel_flipping",
    "innspect.tools.patterns": "innspect.patterns.computer",
    "innspect.graph.kinds": "innspect.graph.ops",
    "innspect.engine.strategy": "innspect.rules.strategy",
    "innspect.analyzers.wrappers": "innspect.analyzers.averaged",
    "innspect.analyzers.pattern": "innspect.patterns.analyzers",
    "innspect.viz.families": "innspect.analyzers.families",
    "innspect.distributed.stats": "innspect.distributed.reduce",
}

# Old module whose names now live in several modules -> {name: new module}.
NAMES: dict[str, dict[str, str]] = {
    "innspect.tools": {
        "PatternComputer": "innspect.patterns.computer",
        "Perturbation": "innspect.evaluation.perturbation",
        "PerturbationAnalysis": "innspect.evaluation.perturbation",
        "PerturbationResult": "innspect.evaluation.perturbation",
    },
    "innspect.data": {
        "Batch": "innspect.util.batches",
        "as_tensor": "innspect.util.batches",
        "iter_batches": "innspect.util.batches",
        "num_batches": "innspect.util.batches",
        "all_finite": "innspect.util.tensors",
        "nonfinite_counts": "innspect.util.tensors",
        "model_device_dtype": "innspect.util.tensors",
    },
    "innspect.dataset": {
        "explain_dataset": "innspect.distributed.dataset",
        "ShardRunner": "innspect.distributed.dataset",
        "read_shards": "innspect.distributed.shards",
        "write_shard": "innspect.distributed.shards",
        "ShardIndex": "innspect.distributed.shards",
        "INDEX_NAME": "innspect.distributed.shards",
        "ModelSpec": "innspect.loading.models",
        "model_fingerprint": "innspect.loading.models",
        "DataSource": "innspect.loading.sources",
        "ArraySource": "innspect.loading.sources",
        "NpySource": "innspect.loading.sources",
        "H5Source": "innspect.loading.sources",
        "ImageFolderSource": "innspect.loading.sources",
        "TorchDatasetSource": "innspect.loading.sources",
        "as_source": "innspect.loading.sources",
    },
    "innspect.analyzers.base": {
        "Analyzer": "innspect.analyzers.api",
        "Explanation": "innspect.analyzers.api",
        "ReverseAnalyzer": "innspect.analyzers.reverse",
    },
    "innspect.analyzers.io": {
        "ModelInputs": "innspect.engine.inputs",
        "model_inputs": "innspect.engine.inputs",
        "select_output": "innspect.graph.outputs",
        "target_gradient": "innspect.engine.selection",
        "check_target": "innspect.engine.selection",
    },
}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path works until the release after innspect 0.2",
        DeprecationWarning,
        stacklevel=4,
    )


class _Names(types.ModuleType):
    """An old module whose names are fetched from their new modules on first use."""

    def __init__(self, name: str, table: dict[str, str]) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package: its old submodules are found too
        self._table = table

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") or attribute not in self._table:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")
        new = self._table[attribute]
        _warn(f"{self.__name__}.{attribute}", f"{new}.{attribute}")
        return getattr(importlib.import_module(new), attribute)

    def __dir__(self) -> list[str]:
        return sorted(self._table)


class _Loader(importlib.abc.Loader):
    def __init__(self, old: str) -> None:
        self.old = old

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.old in NAMES:
            return _Names(self.old, NAMES[self.old])
        _warn(self.old, MODULES[self.old])
        return importlib.import_module(MODULES[self.old])

    def exec_module(self, module: types.ModuleType) -> None:
        # The new module is already executed; an old name only makes it reachable.
        sys.modules[self.old] = module


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old import paths listed in ``MODULES`` and ``NAMES``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname in MODULES or fullname in NAMES:
            return importlib.machinery.ModuleSpec(fullname, _Loader(fullname), is_package=True)
        return None


def install() -> None:
    """Serve the old paths (once per process)."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
