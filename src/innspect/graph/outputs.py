"""What a model returns, and which returned tensor is explained (``output=``).

A model may return a tensor, a tuple (a namedtuple), a dict (Hugging Face's
``ModelOutput``) or a dataclass, nested. Every returned tensor has a path: indices, keys
and field names from the top. ``output=`` names one by its path (an index, a key, a path
tuple) or is a callable on the returned structure; by default the only tensor is explained,
else the one named ``"logits"``. The same rules serve the captured graph (whose returned
structure holds fx nodes) and a plain autograd call of the model (``gradient.baseline``,
whose structure holds tensors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import fx

from innspect.errors import OutputSelectionError

Leaf = TypeVar("Leaf")
Path = tuple[Any, ...]


def graph_leaves(structure: Any) -> list[tuple[Path, fx.Node]]:
    """(path, node) of every node in a captured graph's returned structure (fx records a
    returned dataclass as a node calling its class with keyword arguments)."""

    def fields(node: Any) -> Any:
        if isinstance(node, fx.Node):
            if node.op == "call_function" and dataclasses.is_dataclass(node.target):
                return node.kwargs.items()
        return None

    return list(_walk(structure, (), lambda s: isinstance(s, fx.Node), fields))


def value_leaves(value: Any) -> list[tuple[Path, torch.Tensor]]:
    """(path, tensor) of every tensor in a returned value."""

    def fields(item: Any) -> Any:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return ((f.name, getattr(item, f.name)) for f in dataclasses.fields(item))
        return None

    return list(_walk(value, (), lambda v: isinstance(v, torch.Tensor), fields))


def _walk(
    structure: Any,
    path: Path,
    is_leaf: Callable[[Any], bool],
    dataclass_fields: Callable[[Any], Any],
) -> Iterator[tuple[Path, Any]]:
    named = dataclass_fields(structure)
    if named is not None:
        for key, value in named:
            yield from _walk(value, (*path, key), is_leaf, dataclass_fields)
    elif is_leaf(structure):
        yield path, structure
    elif isinstance(structure, dict):
        for key, value in structure.items():
            yield from _walk(value, (*path, key), is_leaf, dataclass_fields)
    elif isinstance(structure, tuple | list):
        names = getattr(structure, "_fields", None)  # a namedtuple: its field names too
        for index, value in enumerate(structure):
            yield from _walk(
                value, (*path, names[index] if names else index), is_leaf, dataclass_fields
            )


def choices(leaves: list[tuple[Path, Any]]) -> str:
    """The valid ``output=`` values, for messages."""
    return ", ".join(repr(path[0] if len(path) == 1 else path) for path, _ in leaves)


def choose(leaves: list[tuple[Path, Leaf]], output: Any) -> Leaf:
    """The leaf ``output`` (an index, key or path tuple) names; by default the only one,
    else ``"logits"``. OutputSelectionError listing the choices otherwise."""
    paths = dict(leaves)
    if output is None:
        if len(paths) == 1:
            return next(iter(paths.values()))
        if ("logits",) in paths:
            return paths[("logits",)]
        raise OutputSelectionError(
            f"the model returns {len(paths)} tensors; choose the one to explain with "
            f"output=... (one of {choices(leaves)}, or a callable on the result)"
        )
    path = tuple(output) if isinstance(output, tuple | list) else (output,)
    if path not in paths:
        raise OutputSelectionError(
            f"output={output!r} is not returned by the model; choose one of "
            f"{choices(leaves)} (or a callable on the result)"
        )
    return paths[path]


def select_output(result: Any, output: Any) -> torch.Tensor:
    """The explained tensor of a model's returned value, chosen as the graph chooses it:
    ``output`` an index, key, path tuple or callable; by default the only tensor, else
    ``"logits"``."""
    if callable(output):
        return output(result)
    return choose(value_leaves(result), output)


def rebuild(structure: Any, values: Any) -> Any:
    """A graph's returned structure with every node replaced by ``values[node]`` (what an
    ``output=`` callable is applied to)."""
    if isinstance(structure, fx.Node):
        if structure.op == "call_function" and dataclasses.is_dataclass(structure.target):
            kwargs = {k: rebuild(v, values) for k, v in structure.kwargs.items()}
            return structure.target(**kwargs)
        return values[structure]
    if isinstance(structure, dict):
        return Returned((k, rebuild(v, values)) for k, v in structure.items())
    if isinstance(structure, tuple | list):
        items = [rebuild(v, values) for v in structure]
        if hasattr(structure, "_fields"):
            return type(structure)(*items)
        return type(structure)(items)
    return structure


class Returned(dict):
    """A returned dict as an ``output=`` callable sees it. fx records a returned dict
    subclass (Hugging Face's ``ModelOutput``) as a plain dict, so this one also answers
    ``result.logits`` and ``result[0]`` as ModelOutput does."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int) and key not in self:
            return list(self.values())[key]
        return super().__getitem__(key)
