"""``load_keras``: a Keras model file (legacy ``.h5`` or Keras 3 ``.keras``) rebuilt as a torch
module from torch's own layers, read with h5py alone (no TensorFlow, no Keras).

The module's submodules carry the Keras layer names (``model.conv2d_1`` is an ``nn.Conv2d``),
so plans, ``attribute_to`` and per-layer rules read as the Keras model does; a layer's
``activation=`` becomes a module of its own named ``<layer>_<activation>`` after it. By
default the module takes and returns tensors in Keras's layout (channels last), so an
iNNvestigate user's arrays and heatmaps work unchanged.
"""

from __future__ import annotations

import functools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from innspect.errors import LoadingError, first_line
from innspect.loading.keras_files import KerasFile, open_keras_file
from innspect.loading.keras_layers import (
    LAYERS,
    Builder,
    Deferred,
    LayerSpec,
    Step,
    TensorInfo,
    _call_all,
    _getitem,
)

_MODELS = ("Sequential", "Functional", "Model")
_UNKNOWN_SIZE = 32  # example size of a None axis while building (shapes only)


class KerasModel(nn.Module):
    """A Keras model rebuilt from torch's layers (see ``load_keras``).

    ``keras_name`` is the Keras model's name; ``keras_softmax`` names the module of a final
    softmax (``None`` without one): innspect's analyzers refuse it and
    ``innspect.model_wo_softmax`` removes it, as iNNvestigate's ``model_wo_softmax`` does.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.keras_name = name
        self.keras_softmax: str | None = None
        self._steps: list[Step] = []
        self._input_slots: list[int] = []
        self._output_slots: list[int] = []
        self._slots = 0

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self._run(inputs)

    def _run(self, inputs: tuple[Any, ...]) -> Any:
        values: list[Any] = [None] * self._slots
        for slot, x in zip(self._input_slots, inputs, strict=True):
            values[slot] = x
        for step in self._steps:
            values[step.output] = step.fn(self, [values[i] for i in step.inputs])
        outputs = [values[slot] for slot in self._output_slots]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


# torch.fx traces a root module's forward by its named parameters: one class per arity.
class KerasModel1(KerasModel):
    def forward(self, x: torch.Tensor) -> Any:  # noqa: D102
        return self._run((x,))


class KerasModel2(KerasModel):
    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> Any:  # noqa: D102
        return self._run((x0, x1))


class KerasModel3(KerasModel):
    def forward(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> Any:  # noqa: D102
        return self._run((x0, x1, x2))


class KerasModel4(KerasModel):
    def forward(  # noqa: D102
        self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor
    ) -> Any:
        return self._run((x0, x1, x2, x3))


_ROOTS: dict[int, type[KerasModel]] = {
    1: KerasModel1,
    2: KerasModel2,
    3: KerasModel3,
    4: KerasModel4,
}


def load_keras(path: str | Path, *, input_layout: str = "keras") -> KerasModel:
    """The Keras model in ``path`` as a torch module, in eval mode.

    Parameters
    ----------
    path
        A legacy HDF5 file (``model.save("m.h5")`` in tf.keras 2.x or Keras 3) or a Keras 3
        ``.keras`` zip. Sequential and functional models, nested models and shared layers.
    input_layout
        ``"keras"`` (default): inputs and outputs as Keras holds them (images ``(N, H, W, C)``
        for channels-last models), so attributions come back in that layout too.
        ``"torch"``: tensors of rank >= 3 channels-first (``(N, C, H, W)``).

    Raises
    ------
    LoadingError
        The file is missing, damaged, not a Keras model, or holds a layer outside those the
        loader rebuilds (named with its class and the file).
    """
    if input_layout not in ("keras", "torch"):
        raise LoadingError(f"input_layout must be 'keras' or 'torch', got {input_layout!r}")
    keras_file = open_keras_file(path)
    with ThreadPoolExecutor(max_workers=2) as pool:  # kernels' transposing copies
        try:
            # Shapes are worked out on the meta device: no initialisation, no compute.
            with torch.device("meta"):
                root, builder = _build_root(keras_file, input_layout, pool)
        finally:
            keras_file.close()
        _materialise(root, builder)
    return root.eval()


def _materialise(root: KerasModel, builder: Builder) -> None:
    """Give the modules built on the meta device the file's tensors."""
    for module, tensors in builder.loads:
        for name, value in tensors.items():
            tensor = value.result() if isinstance(value, Deferred) else value
            if name in module._parameters:
                module._parameters[name] = nn.Parameter(tensor, requires_grad=True)
            else:
                module._buffers[name] = tensor
    empty = [n for n, t in (*root.named_parameters(), *root.named_buffers()) if t.is_meta]
    if empty:  # a builder that forgot a tensor: never hand out uninitialised weights
        raise LoadingError(f"{builder.file}: innspect's Keras loader left {empty[0]} unset")


def _build_root(
    keras_file: KerasFile, input_layout: str, pool: ThreadPoolExecutor
) -> tuple[KerasModel, Builder]:
    file = keras_file.path
    class_name = keras_file.config.get("class_name")
    config = keras_file.config.get("config")
    if class_name not in _MODELS or not isinstance(config, dict | list):
        raise LoadingError(
            f"{file} holds a {class_name} model: innspect rebuilds Sequential and functional "
            "Keras models (a subclassed model's code is not in the file)"
        )
    count = 1 if class_name == "Sequential" else len(_refs(config.get("input_layers", [])))
    if count not in _ROOTS:
        raise LoadingError(f"{file}: a model with {count} inputs (innspect takes 1 to 4)")
    name = config.get("name", "model") if isinstance(config, dict) else "model"
    root = _ROOTS[count](str(name))
    builder = Builder(root, file, keras_file.keras_version, keras_file.weights, _build_nested)
    builder.pool = pool
    channels_last = not _mentions_channels_first(config)
    torch_layout = input_layout == "torch" and channels_last
    outputs = _build_container(builder, class_name, config, None, [], [], torch_layout)
    outputs = [builder.want(t, torch_layout) for t in outputs]
    _finish(root, builder, [], outputs)
    root._input_slots = list(range(count))
    for t in outputs:
        if t.slot in builder.softmax_slots:
            step = next(s for s in builder.steps if s.output == t.slot)
            root.keras_softmax = step.fn.keywords.get("attr")
    root.input_layout = input_layout
    # What a caller that holds images as (C, H, W) must convert (the command line).
    root.channels_last_input = input_layout == "keras" and channels_last
    return root, builder


def _finish(
    module: KerasModel, builder: Builder, inputs: list[TensorInfo], outputs: list[TensorInfo]
) -> None:
    module._steps = builder.steps
    module._input_slots = [t.slot for t in inputs]
    module._output_slots = [t.slot for t in outputs]
    module._slots = builder.slots


def _mentions_channels_first(config: Any) -> bool:
    if isinstance(config, dict):
        if config.get("data_format") == "channels_first":
            return True
        return any(_mentions_channels_first(v) for v in config.values())
    if isinstance(config, list):
        return any(_mentions_channels_first(v) for v in config)
    return False


def _snake(name: str) -> str:
    # keras.src.utils.naming.to_snake_case: Keras 3 names weight groups by class.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _Namer:
    """Keras 3's unique names of a container's layers (``dense``, ``dense_1``...)."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def __call__(self, class_name: str) -> str:
        name = _snake(class_name)
        if name in self.used:
            self.used[name] += 1
            return f"{name}_{self.used[name]}"
        self.used[name] = 0
        return name


def _input(builder: Builder, config: dict[str, Any], torch_layout: bool) -> TensorInfo:
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if shape is None and config.get("shape") is not None:
        shape = [None, *config["shape"]]
    if not shape:
        raise LoadingError(f"{builder.file}: the model's input has no shape in its config")
    dims = list(shape[1:])
    known = all(d is not None for d in dims)
    sizes = [_UNKNOWN_SIZE if d is None else int(d) for d in dims]
    dtype = str(config.get("dtype", "float32"))
    integer = "int" in dtype
    value = torch.zeros((1, *sizes), dtype=torch.long if integer else torch.float32)
    cf = torch_layout and value.dim() >= 3 and not integer
    if cf:
        value = value.permute(0, value.dim() - 1, *range(1, value.dim() - 1))
    return TensorInfo(builder.new_slot(), value, cf, known)


def _refs(value: Any) -> list[tuple[str, int, int]]:
    """[name, node, tensor] references: one (Keras 3) or a list of them."""
    if not value:
        return []
    if isinstance(value[0], str):
        return [(value[0], int(value[1]), int(value[2]))]
    return [(v[0], int(v[1]), int(v[2])) for v in value]


def _keras_tensors(value: Any, found: list[tuple[str, int, int]]) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = value["config"]["keras_history"]
            found.append((history[0], int(history[1]), int(history[2])))
            return
        for item in value.values():
            _keras_tensors(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _keras_tensors(item, found)


def _inbound(layer: dict[str, Any], file: Path) -> list[list[tuple[str, int, int]]]:
    """Each call's input tensors, from either config format."""
    calls = []
    for node in layer.get("inbound_nodes", []):
        refs: list[tuple[str, int, int]] = []
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
            _keras_tensors(node.get("args", []), refs)
            extra: list[tuple[str, int, int]] = []
            _keras_tensors(node.get("kwargs", {}), extra)
            if extra:
                raise LoadingError(
                    f"{file}: layer '{layer.get('name')}' is called with tensors as keyword "
                    "arguments (e.g. masks), which innspect's Keras loader does not support"
                )
        else:  # tf.keras 2: [[name, node, tensor, kwargs], ...]
            refs = [(e[0], int(e[1]), int(e[2])) for e in node]
        calls.append(refs)
    return calls


def _layer_name(layer: dict[str, Any]) -> str:
    return str(layer.get("config", {}).get("name") or layer.get("name"))


def _build_container(
    builder: Builder,
    class_name: str,
    config: Any,
    inputs: list[TensorInfo] | None,
    path: list[str],
    keras_path: list[str],
    torch_layout: bool,
) -> list[TensorInfo]:
    namer = _Namer()
    if class_name == "Sequential":
        layers = config["layers"] if isinstance(config, dict) else config
        x = inputs[0] if inputs else None
        for layer in layers:
            cls, cfg = layer["class_name"], layer.get("config", {})
            if cls == "InputLayer":
                if x is None:
                    x = _input(builder, cfg, torch_layout)
                continue
            if x is None:
                first = dict(cfg)
                if "batch_input_shape" not in first and isinstance(config, dict):
                    first["batch_shape"] = config.get("build_input_shape")
                x = _input(builder, first, torch_layout)
            spec = LayerSpec(
                _layer_name(layer), cls, cfg, [*path, _layer_name(layer)],
                [*keras_path, "layers", namer(cls)],
            )  # fmt: skip
            (x,) = _build_layer(builder, spec, [x])
        if x is None:
            raise LoadingError(f"{builder.file}: the Sequential model has no layers")
        return [x]

    layers = config["layers"]
    tensors: dict[tuple[str, int, int], TensorInfo] = {}
    for k, ref in enumerate(_refs(config.get("input_layers", []))):
        if inputs is not None:
            tensors[ref] = inputs[k]
        else:
            layer = next((la for la in layers if _layer_name(la) == ref[0]), None)
            if layer is None:
                raise LoadingError(f"{builder.file}: input layer '{ref[0]}' is not in the model")
            tensors[ref] = _input(builder, layer.get("config", {}), torch_layout)
    pending = []
    for layer in layers:
        cls = layer["class_name"]
        name = _layer_name(layer)
        spec = LayerSpec(
            name, cls, layer.get("config", {}), [*path, name], [*keras_path, "layers", namer(cls)]
        )
        if cls == "InputLayer":
            continue
        pending.extend((spec, n, refs) for n, refs in enumerate(_inbound(layer, builder.file)))
    while pending:
        ready = [p for p in pending if all(r in tensors for r in p[2])]
        if not ready:
            missing = sorted({r[0] for p in pending for r in p[2] if r not in tensors})
            raise LoadingError(
                f"{builder.file}: layer '{pending[0][0].name}' needs outputs that no layer "
                f"makes ({', '.join(missing)})"
            )
        for spec, n, refs in ready:
            outputs = _build_layer(builder, spec, [tensors[r] for r in refs])
            for j, t in enumerate(outputs):
                tensors[(spec.name, n, j)] = t
        pending = [p for p in pending if p not in ready]
    try:
        return [tensors[ref] for ref in _refs(config.get("output_layers", []))]
    except KeyError as error:
        raise LoadingError(f"{builder.file}: model output {error} is not computed") from error


def _build_layer(builder: Builder, spec: LayerSpec, inputs: list[TensorInfo]) -> list[TensorInfo]:
    make = LAYERS.get(spec.class_name)
    if make is None:
        hint = (
            ": it holds Python code, which innspect never runs; rebuild the model with built-in "
            "layers"
            if spec.class_name in ("Lambda", "TFOpLambda", "SlicingOpLambda")
            else f"; innspect rebuilds {', '.join(sorted(k for k in LAYERS if k not in _MODELS))}"
        )
        raise LoadingError(
            f"{builder.file}: layer '{spec.name}' ({spec.class_name}) is not supported by "
            f"innspect's Keras loader{hint}"
        )
    builder.layer = spec.name
    try:
        out = make(builder, spec, inputs)
    except LoadingError:
        raise
    except Exception as error:  # noqa: BLE001 - a config this loader misreads is still bad input
        raise LoadingError(
            f"{builder.file}: cannot rebuild layer '{spec.name}' ({spec.class_name}): "
            f"{type(error).__name__}: {first_line(error)}"
        ) from error
    return out if isinstance(out, list) else [out]


def _build_nested(builder: Builder, spec: LayerSpec, inputs: list[TensorInfo]) -> list[TensorInfo]:
    """A model used as a layer: a KerasModel submodule (shared when called again)."""
    shared = builder.nested_models.get(spec.name)
    if shared is None:
        sub = KerasModel(spec.name)
        inner = Builder(sub, builder.file, builder.keras_version, builder.weights, _build_nested)
        inner.loads = builder.loads  # one list: the root materialises every module
        inner.pool = builder.pool
        ins = [TensorInfo(inner.new_slot(), t.value, t.cf, t.known) for t in inputs]
        outs = _build_container(
            inner, spec.class_name, spec.config, ins, spec.path, spec.keras_path, False
        )
        _finish(sub, inner, ins, outs)
        attr = builder.add_module(spec.name, sub)
        shared = (attr, [t.cf for t in ins], [t.cf for t in outs])
        builder.nested_models[spec.name] = shared
    attr, in_cf, out_cf = shared
    inputs = [builder.want(t, cf) for t, cf in zip(inputs, in_cf, strict=True)]
    call = functools.partial(_call_all, attr=attr)
    if len(out_cf) == 1:
        return [builder.op(call, inputs, cf=out_cf[0], where=spec)]
    with torch.no_grad():
        values = call(builder.module, [t.value for t in inputs])
    slot = builder.new_slot()
    builder.steps.append(Step(call, [t.slot for t in inputs], slot))
    whole = TensorInfo(slot, values, False, all(t.known for t in inputs))
    outputs = []
    for j, cf in enumerate(out_cf):
        out = builder.op(functools.partial(_getitem, index=j), [whole], cf=cf)
        outputs.append(out)
    return outputs
