"""Which layers a NAP pass observes (by default the output of every activation that follows
a linear layer) and which output it takes gradients of (a corpus row's output index)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from innspect.engine.collect import node_names
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph


def default_layers(graph: ModelGraph) -> list[str]:
    """The output of every activation that follows a linear layer (through BatchNorm)."""
    names = []
    for info in graph.linear_nodes():
        activation = graph.following_activation(info)
        if activation is not None and activation.node is not graph.output_node:
            names.append(activation.name)
    return list(dict.fromkeys(names))


def output_index_target(index: int) -> Any:
    """The target ``y[:, index]`` for every sample: a corpus row names one output index for
    all its samples, however many batches they fill."""

    def target(output: torch.Tensor) -> torch.Tensor:
        flat = output.reshape(output.shape[0], -1)
        if not 0 <= index < flat.shape[1]:
            raise InputError(
                f"output index {index} from corpus.csv is out of range: the model "
                f"has {flat.shape[1]} outputs"
            )
        return flat[:, index]

    return target


def observed_layers(graph: ModelGraph, layers: Sequence[str] | None) -> list[str]:
    """``layers``, or the default layers of ``graph`` (an error when it has none)."""
    chosen = default_layers(graph) if layers is None else list(layers)
    if not chosen:
        raise InputError(
            "the model has no activation after a linear layer: name the layers, from "
            f"{', '.join(node_names(graph))}"
        )
    return chosen
