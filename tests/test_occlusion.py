"""Occlusion against Captum's Occlusion (float64, bit for bit) and a slow explicit loop."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

import innspect
from innspect.errors import InputError
from tests.captum_float64 import captum_keeps_float64


def _model(rank: int) -> nn.Module:
    """A small float64 model for samples of rank ``rank`` - 1 (1-D features, images, volumes)."""
    torch.manual_seed(0)
    if rank == 2:
        layers = [nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)]
    else:
        conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[rank]
        layers = [conv(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)]
    model = nn.Sequential(*layers).double().eval()
    return model


SHAPES = {2: (3, 7), 3: (2, 2, 11), 4: (2, 2, 7, 9), 5: (2, 2, 5, 4, 6)}
# Windows and strides that do not divide the input (the last window is cut off).
WINDOWS = {
    2: ((3,), (2,)),
    3: ((2, 4), (1, 3)),
    4: ((1, 3, 4), (1, 2, 3)),
    5: ((2, 2, 3, 4), (1, 2, 2, 3)),
}


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("tensor_baseline", [False, True])
def test_occlusion_equals_captum_exactly(rank: int, tensor_baseline: bool) -> None:
    model = _model(rank)
    x = torch.randn(*SHAPES[rank], dtype=torch.float64)
    model(x)  # materialise the lazy layer
    window, strides = WINDOWS[rank]
    baseline = torch.randn(*SHAPES[rank], dtype=torch.float64) if tensor_baseline else 0.5
    analyzer = innspect.create_analyzer(
        "occlusion", model, window_shape=window, strides=strides, baseline=baseline, batch_size=1
    )
    explanation = analyzer.explain(x)
    with captum_keeps_float64():
        expected = CaptumOcclusion(model).attribute(
            x,
            sliding_window_shapes=window,
            strides=strides,
            baselines=baseline,
            target=explanation.selected,
        )
    assert expected.dtype == torch.float64
    assert torch.equal(explanation.attribution, expected)
    # Several windows per forward pass: the same drops (up to the model's batch rounding).
    batched = innspect.create_analyzer(
        "occlusion", model, window_shape=window, strides=strides, baseline=baseline, batch_size=5
    ).analyze(x)
    torch.testing.assert_close(batched, expected, rtol=1e-12, atol=1e-12)


def test_occlusion_equals_an_explicit_loop_and_captum_float32_output() -> None:
    model = _model(4)
    x = torch.randn(*SHAPES[4], dtype=torch.float64)
    model(x)
    analyzer = innspect.create_analyzer(
        "occlusion", model, window_shape=(2, 2, 2), strides=(1, 2, 1), neuron_selection_mode="index"
    )
    ours = analyzer.analyze(x, neuron_selection=[1, 3])
    rows = torch.arange(2)
    score = model(x)[rows, [1, 3]]
    total = torch.zeros_like(x)
    count = torch.zeros_like(x)
    for c in range(0, 1):
        for i in range(0, 7, 2):
            for j in range(0, 8):
                occluded = x.clone()
                occluded[:, c : c + 2, i : i + 2, j : j + 2] = 0
                drop = score - model(occluded)[rows, [1, 3]]
                total[:, c : c + 2, i : i + 2, j : j + 2] += drop[:, None, None, None]
                count[:, c : c + 2, i : i + 2, j : j + 2] += 1
    torch.testing.assert_close(ours, total / count, rtol=1e-12, atol=1e-12)
    # Unpatched, Captum returns float32: innspect keeps the input's dtype.
    peer = CaptumOcclusion(model).attribute(
        x, sliding_window_shapes=(2, 2, 2), strides=(1, 2, 1), target=torch.tensor([1, 3])
    )
    assert peer.dtype == torch.float32 and ours.dtype == torch.float64
    torch.testing.assert_close(ours.float(), peer, rtol=1e-6, atol=1e-6)


def test_default_window_is_the_channels_and_an_eighth_of_each_axis() -> None:
    analyzer = innspect.create_analyzer("occlusion", _model(4))
    windows = analyzer.windows((3, 16, 20))
    assert len(windows) == 8 * 10  # 2x2 windows on 16x20, non-overlapping
    assert windows[0] == (slice(0, 3), slice(0, 2), slice(0, 2))
    assert windows[1] == (slice(0, 3), slice(2, 4), slice(0, 2))  # first axis varies fastest


def test_occlusion_mode_all_and_progress_bar() -> None:
    model = _model(2)
    x = torch.randn(3, 7, dtype=torch.float64)
    ours = innspect.create_analyzer(
        "occlusion", model, window_shape=(1,), neuron_selection_mode="all", verbose=True
    ).analyze(x)
    expected = torch.zeros_like(x)
    for i in range(7):
        occluded = x.clone()
        occluded[:, i] = 0
        expected[:, i] = model(x).sum(dim=1) - model(occluded).sum(dim=1)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_shape": (2, 9, 3)}, "larger than a sample"),
        ({"window_shape": (2, 3)}, "one size per axis"),
        ({"window_shape": (2, 3, 3), "strides": 0}, "positive integers"),
        ({"window_shape": (2, 3, 3), "strides": (1, 4, 1)}, "never be occluded"),
        ({"window_shape": (2, 3, 3), "baseline": torch.zeros(3, 7, 9)}, "does not broadcast"),
        ({"window_shape": (0, 3, 3)}, "positive integers"),
        ({"exact": "yes"}, "exact must be True, False or None"),
    ],
)
def test_bad_occlusion_options_raise_clear_errors(options: dict, message: str) -> None:
    model = _model(4)
    x = torch.randn(2, 2, 7, 9, dtype=torch.float64)
    with pytest.raises(InputError, match=message):
        innspect.create_analyzer("occlusion", model, **options).analyze(x)


class _LayoutProbe(nn.Module):
    """A conv net whose second convolution records whether its input was channels-last;
    ``view=True`` flattens with ``view``, which fails on a channels-last value."""

    def __init__(self, dtype: torch.dtype, view: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 10, 5)
        self.view = view
        self.channels_last: list[bool] = []
        self.second.register_forward_pre_hook(self._record)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-1, 1)
            self.norm.running_var.uniform_(0.5, 2)
        self.to(dtype).eval()

    def _record(self, module: nn.Module, args: tuple) -> None:
        self.channels_last.append(args[0].is_contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(torch.relu(self.norm(self.first(x))))
        return self.head(y.view(y.shape[0], -1) if self.view else torch.flatten(y, 1))


def _occlusion(model: nn.Module, x: torch.Tensor, exact: bool | None) -> torch.Tensor:
    analyzer = innspect.create_analyzer(
        "occlusion", model, window_shape=(3, 3, 3), strides=(3, 2, 2), batch_size=7, exact=exact
    )
    return analyzer.analyze(x)


def test_inexact_passes_fold_batchnorm_and_run_channels_last_on_cpu() -> None:
    model = _LayoutProbe(torch.float32)
    x = torch.randn(2, 3, 10, 12)
    fast = _occlusion(model, x, None)  # float32: not exact
    assert model.channels_last and all(model.channels_last)  # clean pass and every window
    model.channels_last.clear()
    exact = _occlusion(model, x, True)
    assert model.channels_last and not any(model.channels_last)
    # another summation order: equal to float32 rounding, and the map in the usual layout
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)
    assert fast.is_contiguous() and not torch.equal(fast, torch.zeros_like(fast))
    analyzer = innspect.create_analyzer("occlusion", model, window_shape=(3, 3, 3))
    analyzer.analyze(x)
    graphs = {exact: engine.graph(x) for exact, engine in analyzer._engines.items()}
    assert list(graphs) == [False] and len(graphs[False].folds) == 1  # the batch norm folded
    double = _LayoutProbe(torch.float64)
    _occlusion(double, x.double(), None)  # float64: exact, so equal to the bit to Captum
    assert double.channels_last and not any(double.channels_last)
    double.channels_last.clear()
    _occlusion(double, x.double(), False)
    assert double.channels_last and all(double.channels_last)


def test_inexact_passes_fall_back_where_the_model_fails_on_channels_last() -> None:
    model = _LayoutProbe(torch.float32, view=True)
    x = torch.randn(2, 3, 10, 12)
    fast = _occlusion(model, x, False)
    assert model.channels_last[0] and not any(model.channels_last[1:])  # one try, then exact
    assert torch.equal(fast, _occlusion(model, x, True))


def test_inner_attributed_nodes_run_exact_passes() -> None:
    """Folding would occlude a convolution's output after its batch norm: exact passes."""
    model = _LayoutProbe(torch.float32)
    x = torch.randn(2, 3, 10, 12)
    options = {"window_shape": (4, 3, 3), "strides": (4, 2, 2), "attribute_to": "first"}
    default = innspect.create_analyzer("occlusion", model, **options).analyze(x)
    assert model.channels_last and not any(model.channels_last)
    exact = innspect.create_analyzer("occlusion", model, exact=True, **options).analyze(x)
    assert default.shape == (2, 4, 10, 12) and torch.equal(default, exact)
    # The same map written out: the convolution's output occluded, the rest of the model run.
    with torch.no_grad():
        y = model.first(x)

        def rest(value: torch.Tensor) -> torch.Tensor:
            out = model.second(torch.relu(model.norm(value)))
            return model.head(torch.flatten(out, 1))

        selected = rest(y).argmax(dim=1)
        rows = torch.arange(2)
        total, count = torch.zeros_like(y), torch.zeros_like(y)
        for i in range(0, 10, 2):
            for j in range(0, 11, 2):
                occluded = y.clone()
                occluded[:, :, i : i + 3, j : j + 3] = 0
                drop = rest(y)[rows, selected] - rest(occluded)[rows, selected]
                total[:, :, i : i + 3, j : j + 3] += drop[:, None, None, None]
                count[:, :, i : i + 3, j : j + 3] += 1
    torch.testing.assert_close(default, total / count, rtol=1e-5, atol=1e-5)


def test_the_hostile_users_case_differs_from_captum_only_by_its_float32_division() -> None:
    # Issue 26 item 15: window (3, 4, 4), strides (3, 3, 2) on (3, 13, 11), float64: innspect
    # and Captum differed by 2.5e-8 (relative). Captum's last step is total.float() / counts
    # (captum.attr._core.feature_ablation.format_result): the float64 sums of overlapping
    # windows are rounded to float32 before the division. Without that cast the two are
    # equal to the bit, so innspect's float64 value is the right one.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 11 * 9, 5))
    model = model.double().eval()
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64)
    window, strides = (3, 4, 4), (3, 3, 2)
    explanation = innspect.create_analyzer(
        "occlusion", model, window_shape=window, strides=strides, batch_size=1
    ).explain(x)
    options = {"sliding_window_shapes": window, "strides": strides, "target": explanation.selected}
    with captum_keeps_float64():
        exact = CaptumOcclusion(model).attribute(x, **options)
    assert torch.equal(explanation.attribution, exact)
    rounded = CaptumOcclusion(model).attribute(x, **options)
    relative = float((rounded.double() - exact).norm() / exact.norm())
    assert 0 < relative < 1e-7  # float32's rounding, nothing else
