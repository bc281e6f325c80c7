"""The operations table (graph/ops.py): the maps derived from its rows say what the rows mean.

A row that names a missing ATen overload, pairs an overload with a function of another
operation or of other arguments, or builds a layer from the wrong arguments fails here.
"""

from __future__ import annotations

import operator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import fx

from innspect.graph import ops

aten = torch.ops.aten
_generator = torch.Generator().manual_seed(0)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=_generator)


# Arguments to call each ATen overload of the table with (tensors first, then constants as
# torch.export and TorchScript conversion write them). A new ``Aten`` entry needs one.
SAMPLES: dict[str, tuple[Any, ...]] = {
    "linear.default": (_randn(2, 5), _randn(3, 5), _randn(3)),
    "conv1d.default": (_randn(2, 4, 9), _randn(6, 2, 3), _randn(6), [2], [1], [1], 2),
    "conv2d.default": (_randn(2, 2, 7, 7), _randn(4, 2, 3, 3), None, [1, 2], [1, 0], [2, 1], 1),
    "conv3d.default": (_randn(1, 2, 5, 5, 5), _randn(3, 2, 3, 3, 3), _randn(3), [1], [1], [1], 1),
    "batch_norm.default": (
        _randn(2, 3, 4, 4),
        _randn(3),
        _randn(3),
        _randn(3),
        _randn(3).abs() + 0.5,
        False,
        0.1,
        1e-3,
        False,
    ),
    "relu.default": (_randn(2, 3),),
    "max_pool2d.default": (_randn(2, 3, 7, 7), [3, 3], [2, 2], [1, 1], [1, 1], True),
    "avg_pool2d.default": (_randn(2, 3, 7, 7), [2, 2], [1, 1], [1, 1], False, False),
    "adaptive_avg_pool2d.default": (_randn(2, 3, 7, 7), [2, 3]),
    "mean.dim": (_randn(2, 3, 4), [1, 2], True),
    "add.Tensor": (_randn(2, 3), _randn(2, 3)),
    "flatten.using_ints": (_randn(2, 3, 4), 1),
    "view.default": (_randn(2, 3, 4), [2, 12]),
    "reshape.default": (_randn(2, 3, 4), [6, 4]),
    "cat.default": ([_randn(2, 3), _randn(2, 1)], 1),
    "dropout.default": (_randn(2, 3), 0.5, False),
}


def _spelling(overload: Any) -> str:
    return f"{ops.aten_name(overload)}.{overload._overloadname}"


def _name(target: Any) -> str:
    """A stable test id (str() of a builtin holds its address, which differs between
    pytest-xdist workers)."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{getattr(target, '__name__', str(target))}"


def _aten_entries() -> list[tuple[ops.Op, ops.Aten]]:
    return [(op, entry) for op in ops.OPERATIONS for entry in op.aten]


def _cloned(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize(
    ("op", "entry"), _aten_entries(), ids=[e.overload for _, e in _aten_entries()]
)
def test_each_aten_entry_is_an_overload_of_its_row(op: ops.Op, entry: ops.Aten) -> None:
    packet, _, name = entry.overload.partition(".")
    overload = getattr(getattr(aten, packet), name)  # fails where torch lacks the overload
    assert entry.overload in SAMPLES, f"add call arguments for {entry.overload} to SAMPLES"
    graph = fx.Graph()
    node = graph.call_function(overload, (graph.placeholder("x"),))
    assert ops.op_of(node, None) is op  # the row that lists it is the row its name selects
    if entry.function is not None:
        assert ops.ATEN_TO_TORCH[overload] is entry.function
    if entry.layer is not None:
        assert ops.LAYER_CALLS[overload] is entry.layer


@pytest.mark.parametrize("overload", list(ops.ATEN_TO_TORCH), ids=_spelling)
def test_torchscript_map_gives_the_same_operation_and_value(overload: Any) -> None:
    function = ops.ATEN_TO_TORCH[overload]
    twin = ops.out_of_place(overload) or overload
    assert twin in ops.ATEN_TO_TORCH and ops.ATEN_TO_TORCH[twin] is function
    graph = fx.Graph()
    x = graph.placeholder("x")
    by_aten, by_function = graph.call_function(twin, (x,)), graph.call_function(function, (x,))
    assert ops.op_of(by_aten, None) is ops.op_of(by_function, None) is not None
    assert ops.classify(by_aten, None) is ops.classify(by_function, None)
    # Same positional arguments, same value (in-place overloads on copies of the inputs).
    args = SAMPLES[_spelling(twin)]
    torch.testing.assert_close(function(*_cloned(args)), overload(*_cloned(args)))


@pytest.mark.parametrize("overload", list(ops.LAYER_CALLS), ids=_spelling)
def test_layer_entries_build_their_module_from_the_call(overload: Any) -> None:
    layer = ops.LAYER_CALLS[overload]
    # The tensors are named and ordered as ATen's arguments after the input.
    schema = [a.name for a in overload._schema.arguments[1 : 1 + len(layer.tensors)]]
    assert schema == list(layer.tensors)
    x, *args = SAMPLES[_spelling(overload)]
    built = layer.build(args, x.dim())
    assert isinstance(built, layer.module)
    assert type(built).__module__.startswith("torch.nn.")  # export matches only torch's own
    for name, value in zip(layer.tensors, args, strict=False):
        held = getattr(built, name)
        assert held is None if value is None else torch.equal(held, value), name
    torch.testing.assert_close(built.to(x.dtype)(x), overload(x, *args))


def test_export_reuses_only_layers_whose_tensors_it_can_check() -> None:
    """capture's export path reads a call back as the model's layer by its tensors."""
    with_tensors = {_spelling(o) for o, layer in ops.LAYER_CALLS.items() if layer.tensors}
    assert with_tensors == {
        "linear.default",
        "conv1d.default",
        "conv2d.default",
        "conv3d.default",
        "batch_norm.default",
    }


def test_training_batch_norm_is_no_layer() -> None:
    layer = ops.LAYER_CALLS[aten.batch_norm.default]
    _, *args = SAMPLES["batch_norm.default"]
    args[4] = True  # training: batch statistics
    assert layer.build(args, 4) is None


@pytest.mark.parametrize(
    ("target", "twin"),
    [
        (aten.add_.Tensor, aten.add.Tensor),
        (aten.relu_.default, aten.relu.default),
        (torch.relu_, torch.relu),
        (F.relu_, torch.relu),
        (operator.iadd, operator.add),
        (operator.imul, operator.mul),
        (operator.itruediv, operator.truediv),
        ("add_", "add"),
        ("mul_", "mul"),
    ],
    ids=_name,
)
def test_out_of_place_twins(target: Any, twin: Any) -> None:
    assert ops.out_of_place(target) == twin
    graph = fx.Graph()
    x = graph.placeholder("x")
    if isinstance(target, str):
        node = graph.call_method(target, (x, x))
    else:
        node = graph.call_function(target, (x, x))
    assert ops.out_of_place(node) == twin


@pytest.mark.parametrize(
    "target",
    [aten.add.Tensor, aten._softmax.default, torch.relu, operator.add, "add", "__iadd__", "_foo_"],
    ids=_name,
)
def test_out_of_place_operations_have_no_twin(target: Any) -> None:
    assert ops.out_of_place(target) is None


def test_in_place_overloads_are_derived_not_listed() -> None:
    listed = {entry.overload for _, entry in _aten_entries()}
    derived = {_spelling(o) for o in ops.ATEN_TO_TORCH} - listed
    assert derived >= {"relu_.default", "add_.Tensor"}
    assert not any(name.split(".")[0].endswith("_") for name in listed)
