"""Capture: turn a user's nn.Module into a torch.fx graph without touching the module."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from innspect.errors import NotAnalyzableModelError
from innspect.graph import attention


class _LeafTracer(fx.Tracer):
    """fx tracer keeping every torch.nn layer as one node and tracing through user modules.

    fx's default already treats torch.nn modules (except containers) as leaves; user modules
    and torchvision blocks are traced through, so their additions and concatenations become
    nodes of their own. Attention (``nn.MultiheadAttention``, ``nn.TransformerEncoder``
    and its layers, ``F.scaled_dot_product_attention``) is written out in plain operations
    (``graph/attention.py``) so the relevance rules reach its projections and softmax.
    """

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if isinstance(m, nn.MultiheadAttention):
            return attention.multihead_attention(m, m.out_proj, *args, **kwargs)
        if isinstance(m, nn.TransformerEncoderLayer):
            return attention.encoder_layer(m, *args, **kwargs)
        if isinstance(m, nn.TransformerEncoder):
            return attention.encoder(m, *args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any):
        if kind == "call_function":
            if target is F.scaled_dot_product_attention:
                return attention.sdpa(*args, **kwargs)
            qualname = f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"
            if qualname in attention.DECOMPOSED:
                return attention.DECOMPOSED[qualname](*args, **kwargs)
        return super().create_proxy(kind, target, args, kwargs, *rest, **kw)


def capture(model: nn.Module, example_input: torch.Tensor | None = None) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule that shares (never copies) the model's layers.

    Tries torch.fx symbolic tracing first; if that fails and an example input is given,
    torch.export. Raises NotAnalyzableModelError naming both failures otherwise.
    """
    if isinstance(model, fx.GraphModule):
        # Already a graph: copy the graph so canonicalisation never edits the user's one.
        return fx.GraphModule(model, _copy_graph(model.graph), class_name=type(model).__name__)
    if isinstance(model, torch.jit.ScriptModule):
        raise NotAnalyzableModelError(
            "TorchScript modules cannot be traced by torch.fx; pass the original nn.Module "
            "(or load its weights into the Python class)."
        )
    try:
        tracer = _LeafTracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
    except Exception as fx_error:  # noqa: BLE001 - any tracing failure leads to the fallback
        if example_input is None:
            raise NotAnalyzableModelError(
                f"torch.fx could not trace {type(model).__name__}: {fx_error}"
            ) from fx_error
        try:
            exported = torch.export.export(model, (example_input,), strict=False)
            return exported.module()
        except Exception as export_error:  # noqa: BLE001
            raise NotAnalyzableModelError(
                f"{type(model).__name__} could not be captured: torch.fx failed with "
                f"'{fx_error}', torch.export failed with '{export_error}'. Make the model's "
                "forward free of data-dependent Python control flow, or wrap the untraceable "
                "part in a submodule."
            ) from export_error


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    new_graph = fx.Graph()
    output = new_graph.graph_copy(graph, {})
    new_graph.output(output)
    return new_graph
