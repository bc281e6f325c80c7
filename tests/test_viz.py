"""Visualisation functions: value ranges, sign handling, shapes, numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from innspect.viz import GridLayout, clip_quantile, gamma, graymap, heatmap, plot_grid, project


def test_project_maps_symmetric_range_per_sample() -> None:
    X = np.array([[-2.0, 0.0, 1.0], [0.0, 0.5, -0.25]])
    original = X.copy()
    result = project(X)
    np.testing.assert_allclose(result, [[0.0, 0.5, 0.75], [0.5, 1.0, 0.25]])
    np.testing.assert_array_equal(X, original)  # the input is never modified


def test_project_output_range_positive_only_and_absmax() -> None:
    X = np.array([[-2.0, 0.0, 1.0, 2.0]])
    np.testing.assert_allclose(project(X, output_range=(0, 255)), [[0, 127.5, 191.25, 255]])
    np.testing.assert_allclose(project(X, input_is_positive_only=True), [[0, 0, 0.5, 1]])
    np.testing.assert_allclose(project(X, absmax=4.0), [[0.25, 0.5, 0.625, 0.75]])


def test_project_zero_sample_and_rank_four_batch() -> None:
    X = np.zeros((2, 3, 4, 5))
    X[1, 0, 0, 0] = -8.0
    result = project(X)
    assert result.shape == X.shape
    np.testing.assert_allclose(result[0], 0.5)
    assert result[1, 0, 0, 0] == 0.0 and result[1, 1, 1, 1] == 0.5


def test_project_tensor_in_tensor_out() -> None:
    X = torch.tensor([[-1.0, 1.0]])
    result = project(X)
    assert isinstance(result, torch.Tensor)
    torch.testing.assert_close(result, torch.tensor([[0.0, 1.0]]))


def test_heatmap_shapes_channels_last_and_first() -> None:
    rng = np.random.default_rng(0)
    last = rng.normal(size=(2, 5, 6, 3))
    first = np.moveaxis(last, -1, 1)
    colours_last = heatmap(last)
    colours_first = heatmap(first, reduce_axis=1)
    assert colours_last.shape == (2, 5, 6, 3) and colours_last.dtype == np.float32
    assert colours_first.shape == (2, 3, 5, 6)
    np.testing.assert_array_equal(np.moveaxis(colours_first, 1, -1), colours_last)
    assert heatmap(last, alpha_cmap=True).shape == (2, 5, 6, 4)
    assert colours_last.min() >= 0.0 and colours_last.max() <= 1.0


def test_heatmap_signs_red_positive_blue_negative_white_zero() -> None:
    X = np.array([[[1.0], [-1.0], [0.0]]])  # (1, 3, 1): three pixels, one channel
    red, blue, neutral = heatmap(X)[0]
    assert red[0] > 0.4 and red[2] < 0.05  # the positive end of "seismic" is red
    assert blue[2] > 0.2 and blue[0] < 0.05  # the negative end is blue
    assert np.all(neutral > 0.95)  # zero is (nearly) white


def test_heatmap_reduce_ops() -> None:
    X = np.array([[[1.0, -3.0]]])  # one pixel, two channels: sum -2, absmax -3
    assert heatmap(X, reduce_op="absmax")[0, 0, 2] > heatmap(X, reduce_op="absmax")[0, 0, 0]
    np.testing.assert_array_equal(
        heatmap(X, reduce_op="sum"), heatmap(np.array([[[-2.0]]]), reduce_op="sum")
    )
    with pytest.raises(ValueError, match="reduce_op"):
        heatmap(X, reduce_op="max")


def test_heatmap_tensor_keeps_kind() -> None:
    colours = heatmap(torch.randn(2, 3, 4, 4), reduce_axis=1)
    assert isinstance(colours, torch.Tensor) and colours.shape == (2, 3, 4, 4)


def test_graymap_is_gray_from_black_to_white() -> None:
    X = np.array([[[-1.0], [0.0], [1.0]]])
    colours = graymap(X)[0]
    np.testing.assert_allclose(colours[:, 0], colours[:, 1])
    np.testing.assert_allclose(colours[:, 0], colours[:, 2])
    assert colours[0, 0] == 0.0 and colours[2, 0] == 1.0
    assert 0.45 < colours[1, 0] < 0.55


def test_gamma_keeps_sign_and_order() -> None:
    X = np.array([-4.0, -1.0, 0.0, 1.0, 4.0])
    result = gamma(X, gamma=0.5)
    np.testing.assert_allclose(result, [-4.0, -2.0, 0.0, 2.0, 4.0])
    np.testing.assert_allclose(gamma(X, gamma=1.0), X)
    np.testing.assert_allclose(gamma(np.zeros(3)), np.zeros(3))  # no division by zero
    shifted = gamma(X + 10, gamma=0.5, minamp=10)
    np.testing.assert_allclose(shifted, result + 10)
    assert isinstance(gamma(torch.tensor(X)), torch.Tensor)


def test_clip_quantile_returns_clipped_copy() -> None:
    X = np.arange(101.0)
    result = clip_quantile(X, 10)
    assert result.min() == 10.0 and result.max() == 90.0
    assert X.min() == 0.0  # unchanged input
    pair = clip_quantile(X, (0, 50))
    assert pair.min() == 0.0 and pair.max() == 50.0


def _png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_plot_grid_size_is_exact(tmp_path) -> None:
    layout = GridLayout(cell=40, label_width=50, header=30, dpi=100)
    rng = np.random.default_rng(0)
    grid = [[rng.random((8, 8)), rng.random((8, 8, 3))] for _ in range(3)]
    path = tmp_path / "grid.png"
    plot_grid(grid, ["a", "b", "c"], ["x", "y"], file_name=path, layout=layout)
    assert _png(path).shape == (3 * 40 + 30, 50 + 2 * 40, 3)
    assert layout.size(3, 2) == (130, 150)


def test_plot_grid_blocks_repeat_fixed_columns() -> None:
    layout = GridLayout()
    assert layout.blocks(7, max_columns=4, fixed_columns=1) == [[0, 1, 2, 3], [0, 4, 5, 6]]
    assert layout.blocks(5, max_columns=None) == [[0, 1, 2, 3, 4]]
    width, height = layout.size(2, 7, max_columns=4, fixed_columns=1)
    assert width == layout.label_width + 4 * layout.cell
    assert height == 2 * (layout.header + 2 * layout.cell)


def test_plot_grid_channels_first_equals_channels_last(tmp_path) -> None:
    image = np.random.default_rng(1).random((6, 6, 3))
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    plot_grid([[torch.tensor(np.moveaxis(image, -1, 0))]], file_name=first)
    plot_grid([[image]], file_name=last)
    np.testing.assert_array_equal(_png(first), _png(last))


def test_plot_grid_rejects_bad_labels_and_cells() -> None:
    with pytest.raises(ValueError, match="row labels"):
        plot_grid([[np.zeros((4, 4))]], row_labels=["a", "b"])
    with pytest.raises(ValueError, match="grid cell"):
        plot_grid([[np.zeros((5, 5, 7))]])


def test_plot_grid_column_groups_pack_into_blocks(tmp_path) -> None:
    layout = GridLayout(cell=10, label_width=20, header=10, dpi=100)
    groups = [("A", [1, 2, 3]), ("B", [4, 5]), ("C", [6, 7, 8, 9, 10, 11, 12])]
    arranged = layout.arrange(13, max_columns=6, fixed_columns=1, column_groups=groups)
    assert arranged == [
        [(None, [0]), ("A", [1, 2, 3]), ("B", [4, 5])],
        [(None, [0]), ("C", [6, 7, 8, 9])],
        [(None, [0]), ("C (continued)", [10, 11, 12])],
    ]
    cells = [[np.zeros((4, 4))] * 13 for _ in range(2)]
    plot_grid(
        cells,
        None,
        None,
        file_name=tmp_path / "g.png",
        layout=layout,
        max_columns=6,
        fixed_columns=1,
        column_groups=groups,
    )
    from PIL import Image

    with Image.open(tmp_path / "g.png") as image:
        # Widest block: the fixed column and 5 more; 3 blocks of (band + header + 2 rows).
        assert image.size == layout.size(2, 13, 6, 1, groups) == (20 + 6 * 10, 3 * (22 + 10 + 20))


def test_overlay_shows_the_picture_where_neutral_and_the_colour_where_strong() -> None:
    from innspect.viz.overlay import overlay_rgb

    picture = np.full((2, 3, 3), 0.5)
    values = np.array([[0.0, 1.0, -1.0], [np.nan, 0.0, 0.0]])
    rgb = overlay_rgb(picture, values)
    grey = 0.35 + 0.65 * 0.5
    np.testing.assert_allclose(rgb[0, 0], grey)  # neutral: the (faded) picture
    np.testing.assert_allclose(rgb[1, 0], grey)  # not explained (outside the crop)
    assert rgb[0, 1, 0] > 0.45 and rgb[0, 1, 2] < 0.05  # strongest positive: dark red
    assert rgb[0, 2, 2] > 0.25 and rgb[0, 2, 0] < 0.05  # strongest negative: dark blue
