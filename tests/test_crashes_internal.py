"""Crashes once reported as input errors (issue 25 item 5).

Models that run natively must run under innspect: torchvision's ``swin3d_t`` (its
``_get_window_and_shift_size`` assigns into a list argument, which fx stores as an
``immutable_list``; its ``shifted_window_attention_3d`` is written out like the 2-D one) and
timm's ``fastvit_t8`` (``0 + branch``: an in-place addition whose other term is a number).
And when innspect fails where the model runs, the error says it is innspect's
(``InternalError``, with what to report), never the input's.
"""

from __future__ import annotations

import importlib
import pickle

import pytest
import torch
from torch import fx, nn

import innspect
from innspect.engine import forward
from innspect.errors import InputError, InternalError
from innspect.graph.graph import ModelGraph


@torch.fx.wrap
def _shrunk(window: list[int], size: int) -> list[int]:
    # Like torchvision's _get_window_and_shift_size: the list argument is changed in place.
    window[0] = min(window[0], size)
    return window


class _ListMutating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.window = [5]
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = _shrunk(self.window.copy(), x.shape[-1])
        return self.linear(x)[..., : window[0]]


def test_a_function_may_change_its_list_argument() -> None:
    torch.manual_seed(0)
    model = _ListMutating().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    for method in ("gradient", "lrp.epsilon"):
        result = innspect.create_analyzer(method, model).analyze(x)
        assert torch.isfinite(result).all()
    assert model.window == [5]  # the model's own list is never changed
    # The graph keeps its list constant as fx stored it: each run gets a fresh copy.
    graph = ModelGraph(model)
    node = next(n for n in graph.module.graph.nodes if n.target is _shrunk)
    assert isinstance(node.args[0], fx.immutable_collections.immutable_list)


class _StartsFromZero(nn.Module):
    """timm's FastViT blocks: ``out = 0`` then ``out = out + branch(x)`` for each branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        out = out + self.bn(self.conv(x))
        return self.head(torch.relu(out).flatten(1))


def test_an_addition_of_a_number_runs_in_a_freeing_forward() -> None:
    torch.manual_seed(0)
    model = _StartsFromZero().double().eval()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    window = (2, 3, 3)
    ours = innspect.create_analyzer(
        "occlusion", model, window_shape=window, strides=window, batch_size=4
    ).analyze(x)
    score = model(x).argmax(1)
    rows = torch.arange(2)
    clean = model(x)[rows, score]
    expected = torch.zeros_like(x)
    for i in (0, 3):
        for j in (0, 3):
            occluded = x.clone()
            occluded[:, :, i : i + 3, j : j + 3] = 0
            drop = clean - model(occluded)[rows, score]
            expected[:, :, i : i + 3, j : j + 3] = drop[:, None, None, None]
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def _gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    y = model(x)
    y[torch.arange(len(x)), y.argmax(1)].sum().backward()
    return x.grad


import timm  # noqa: E402 - the test extra installs it: missing, the suite fails loudly
import torchvision  # noqa: E402


@pytest.mark.slow
def test_swin3d_t_is_explained() -> None:
    torch.manual_seed(0)
    model = torchvision.models.video.swin3d_t().double().eval()
    windows = [(b.attn.window_size[:], b.attn.shift_size[:]) for b in _swin_blocks(model)]
    # T=2, H=W=8 after the patch embedding: the first stage shifts its 7x7 windows (the
    # mask), later stages shrink the window to the input (no shift).
    x = torch.randn(1, 3, 4, 32, 32, dtype=torch.float64)
    gradient = innspect.create_analyzer("gradient", model).analyze(x)
    torch.testing.assert_close(gradient, _gradient(model, x), rtol=1e-10, atol=1e-12)
    # The written-out 3-D window attention computes what torchvision's function does.
    graph = ModelGraph(model)
    torch.testing.assert_close(graph.module(x), model(x), rtol=1e-12, atol=1e-12)
    written = [n for n in graph.module.graph.nodes if n.op == "call_function"]
    assert not any("shifted_window_attention_3d" in str(n.target) for n in written)
    for method in ("lrp.epsilon", "lrp.z"):
        relevance = innspect.create_analyzer(method, model).analyze(x)
        assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    assert [(b.attn.window_size, b.attn.shift_size) for b in _swin_blocks(model)] == windows


def _swin_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "attn") and hasattr(m.attn, "shift_size")]


@pytest.mark.slow
def test_fastvit_t8_integrated_gradients_and_occlusion_after_another_analysis() -> None:
    torch.manual_seed(0)
    model = timm.create_model("fastvit_t8", pretrained=False).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    gradient = innspect.create_analyzer("gradient", model).analyze(x)
    torch.testing.assert_close(gradient, _gradient(model, x), rtol=1e-10, atol=1e-12)
    # Integrated gradients, riemann_left with 4 points: x * mean_k grad f(k/4 x).
    steps = 4
    ours = innspect.create_analyzer("integrated_gradients", model, steps=steps).analyze(x)
    target = model(x).argmax(1)
    expected = torch.zeros_like(x)
    for k in range(steps):
        point = (k / steps * x).requires_grad_(True)
        model(point)[0, target].sum().backward()
        expected += point.grad / steps
    torch.testing.assert_close(ours, x * expected, rtol=1e-9, atol=1e-12)
    window = (3, 32, 32)
    occlusion = innspect.create_analyzer(
        "occlusion", model, window_shape=window, strides=window
    ).analyze(x)
    clean = model(x)[0, target]
    for i in (0, 32):
        for j in (0, 32):
            occluded = x.clone()
            occluded[:, :, i : i + 32, j : j + 32] = 0
            drop = (clean - model(occluded)[0, target]).item()
            patch = occlusion[:, :, i : i + 32, j : j + 32]
            torch.testing.assert_close(patch, torch.full_like(patch, drop), rtol=1e-10, atol=1e-12)


class _Reshaping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(-1, 4)


def test_a_failure_of_the_input_is_an_input_error() -> None:
    model = _Reshaping().double()
    with pytest.raises(InputError, match="without innspect too") as caught:
        innspect.create_analyzer("gradient", model).analyze(torch.randn(1, 6, dtype=torch.float64))
    assert not isinstance(caught.value, InternalError)
    assert "'view'" in str(caught.value)


def test_a_failure_of_innspect_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that fails under innspect while the model runs natively: innspect's defect."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    original = forward._call

    def failing(module, node, args, kwargs):  # noqa: ANN001, ANN202 - a test double
        if node.name == "_2":  # the last Linear
            raise RuntimeError("a broken mapping")
        return original(module, node, args, kwargs)

    monkeypatch.setattr(forward, "_call", failing)
    for method in ("gradient", "lrp.epsilon", "occlusion"):
        with pytest.raises(InternalError) as caught:
            innspect.create_analyzer(method, model).analyze(x)
        error = caught.value
        assert not isinstance(error, InputError)
        message = str(error)
        assert message.startswith(
            "internal error: innspect failed at node '2' (Linear: module Linear)"
        )
        assert "the model itself runs on this input" in message
        assert "RuntimeError: a broken mapping" in message
        assert "not of your input" in message and "torch " in message
        assert error.node == "2" and set(error.versions) == {"innspect", "torch", "python"}
        copied = pickle.loads(pickle.dumps(error))  # Ray sends errors between processes
        assert str(copied) == message and copied.node == "2"


def test_the_command_line_reports_an_internal_error_with_status_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    cli = importlib.import_module("innspect.cli.main")  # the module (cli.main is a function)
    methods = importlib.import_module("innspect.cli.methods")

    def run(args: object) -> int:
        raise InternalError("2", "Linear: module Linear", "RuntimeError: a broken mapping")

    monkeypatch.setattr(methods, "run", run)
    assert cli.main(["methods"]) == 1  # 2 is for the user's mistakes
    err = capsys.readouterr().err.strip()
    assert err.startswith("innspect: error: internal error: innspect failed at node '2'")
    assert len(err.splitlines()) == 1 and "--debug" in err
