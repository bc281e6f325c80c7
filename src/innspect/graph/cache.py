"""Captured graphs shared by the analyses of one model, per input signature and shape.

A capture costs seconds on a Hugging Face model (torch.export) and is specialised to the
sizes it saw but the batch (``ModelGraph.serves``). An analyzer asks here before capturing: a
graph of the same model object, captured with the same options for the same call, module
tree and input sizes (by another analyzer, or by itself for another sequence length), is
taken as it is. Only the per-analyzer rules are built again (microseconds a node).

The registry is keyed weakly by the model and a graph holds its model weakly
(``ModelGraph.model``): the last ``PER_MODEL`` graphs of a model (with their folded layer
copies) live as long as the model does, and go with it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from innspect.graph.graph import ModelGraph

# Graphs kept per model: a few input sizes, or options (batch norms folded or not).
PER_MODEL = 4


class SharedGraphs:
    """``find`` a graph already captured for a model, ``add`` a new one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: weakref.WeakKeyDictionary[nn.Module, list[tuple[Hashable, ModelGraph]]] = (
            weakref.WeakKeyDictionary()
        )

    def find(self, model: nn.Module, key: Hashable, values: Sequence[Any]) -> ModelGraph | None:
        """A live graph of ``model`` made under ``key`` that computes the model on
        ``values`` (the inputs), or None."""
        with self._lock:
            entries = self._by_model.get(model, [])
            for index in range(len(entries) - 1, -1, -1):  # the latest first
                entry_key, graph = entries[index]
                if entry_key == key and graph.serves(values):
                    entries.append(entries.pop(index))  # the most recently used last
                    return graph
        return None

    def add(self, model: nn.Module, key: Hashable, graph: ModelGraph) -> None:
        """Remember ``graph`` as ``model``'s under ``key`` (the least recently used of the
        model's graphs goes beyond ``PER_MODEL``)."""
        with self._lock:
            entries = self._by_model.setdefault(model, [])
            entries.append((key, graph))
            del entries[:-PER_MODEL]

    def clear(self) -> None:
        """Forget every graph (the analyzers keep theirs)."""
        with self._lock:
            self._by_model.clear()


# What every nn.Module holds (parameters, buffers, hooks...): not the user's attributes.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def tensors_key(model: nn.Module) -> tuple[Any, ...]:
    """What a capture assumed of the model's tensors beyond the module tree: the shape of
    every parameter and buffer (a folded copy is made for them), and the tensors and
    containers the modules hold outside those (``self.scale = torch.tensor(...)``, a dict of
    tables that ``forward`` reads) by identity, since the graph holds the ones it saw.
    Containers changed in place keep their identity (a cache ``forward`` fills)."""
    shapes = tuple(
        (name, None if is_lazy(t) else tuple(t.shape), t.dtype)  # lazy: no shape yet
        for name, t in (*model.named_parameters(), *model.named_buffers())
    )
    held = tuple(
        (path, key, id(value))
        for path, module in model.named_modules()
        for key, value in vars(module).items()
        if key not in _MODULE_INTERNALS
        and isinstance(value, torch.Tensor | dict | list | set | tuple)
    )
    return shapes, held


def option_key(value: Any) -> Hashable:
    """An analyzer option as part of a key: itself when hashable (a callable ``output=``
    by identity), else its ``repr`` (a list path)."""
    try:
        hash(value)
    except TypeError:
        return ("repr", repr(value))
    return value


SHARED_GRAPHS = SharedGraphs()
