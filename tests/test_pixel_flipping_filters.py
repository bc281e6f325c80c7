"""Pixel flipping and the filter plot (the LRP tutorial's tools)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from innspect.errors import InputError
from innspect.evaluation.pixel_flipping import (
    pixel_flipping,
    plot_pixel_flipping,
    random_heatmaps,
)
from innspect.viz import filter_images, plot_filters


def known_model() -> tuple[nn.Module, np.ndarray, np.ndarray, np.ndarray]:
    """A linear model whose class-0 score is a known sum of contributions x_i w_i >= 0."""
    rng = np.random.default_rng(0)
    features = 40
    weight = np.zeros((2, features))
    weight[0] = rng.uniform(0, 3, features) * (rng.uniform(size=features) < 0.5)
    model = nn.Linear(features, 2, bias=False).double()
    model.weight.data = torch.from_numpy(weight)
    x = rng.uniform(1, 2, (6, features))
    relevance = x * weight[0]  # exactly each feature's contribution to the score
    return model, x, relevance, np.zeros(6, dtype=int)


def test_relevance_order_removes_the_score_faster_than_random() -> None:
    model, x, relevance, labels = known_model()
    ordered = pixel_flipping(model, x, relevance, labels, every=2, seed=3)
    rnd = pixel_flipping(model, x, random_heatmaps(x.shape, seed=1), labels, every=2, seed=3)
    np.testing.assert_array_equal(ordered.flipped, np.arange(0, 41, 2))
    np.testing.assert_allclose(ordered.scores[0], relevance.sum(axis=1).mean())  # 0 flips
    # Replaced values are the same noise either way, so both curves end at the same point.
    np.testing.assert_allclose(ordered.scores[-1], rnd.scores[-1])
    assert ordered.area < rnd.area
    # After flipping the k most relevant features, what is left of the score is at most
    # the sum of the rest plus the noise's contribution; the random order leaves more.
    half = len(ordered.scores) // 2
    assert (ordered.scores[1:half] < rnd.scores[1:half]).all()


def test_batched_and_one_by_one_give_the_same_curve(tmp_path) -> None:
    model, x, relevance, labels = known_model()
    conv = nn.Sequential(nn.Unflatten(1, (1, 5, 8)), nn.Conv2d(1, 3, 3), nn.Flatten()).double()
    for net, heat in ((model, relevance), (conv, random_heatmaps(x.shape, 2))):
        batched = pixel_flipping(net, x, heat, labels, every=3, n_flips=31, batch_size=4)
        single = pixel_flipping(net, x, heat, labels, every=3, n_flips=31, batched=False)
        np.testing.assert_allclose(batched.per_sample, single.per_sample, rtol=1e-12)
        assert batched.flipped[-1] == 30
    figure = plot_pixel_flipping({"lrp": batched, "random": single}, tmp_path / "flip.png")
    assert (tmp_path / "flip.png").stat().st_size > 1000 and figure.axes


def test_pixel_flipping_bad_input() -> None:
    model, x, relevance, labels = known_model()
    with pytest.raises(InputError, match="shape of x"):
        pixel_flipping(model, x, relevance[:, :3], labels)
    with pytest.raises(InputError, match="labels must be 6 integers"):
        pixel_flipping(model, x, relevance, labels[:2])
    with pytest.raises(InputError, match="n_flips"):
        pixel_flipping(model, x, relevance, labels, n_flips=41)


def test_dense_and_full_size_convolution_show_the_same_filters(tmp_path) -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    conv = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    conv[0].weight.data = dense[1].weight.data.reshape(10, 1, 8, 8).clone()
    conv[0].bias.data = dense[1].bias.data.clone()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(dense(x), conv(x))  # the same linear map
    images = filter_images(conv)
    assert images.shape == (10, 8, 8)
    np.testing.assert_array_equal(filter_images(dense, image_shape=(1, 8, 8)), images)
    figure = plot_filters(conv, path=tmp_path / "filters.png")
    assert len(figure.axes) == 10 and (tmp_path / "filters.png").is_file()
    rgb = filter_images(nn.Conv2d(3, 4, 5))
    assert rgb.shape == (4, 5, 5, 3)
    with pytest.raises(InputError, match="image_shape"):
        filter_images(dense)
    with pytest.raises(InputError, match="no Conv2d or Linear"):
        filter_images(nn.ReLU())
