"""Perturbation and PerturbationAnalysis on small hand-made arrays and a toy model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import innspect
from innspect.evaluation.perturbation import Perturbation, PerturbationAnalysis


def test_region_ordering_ranks_per_sample_with_ties_in_order() -> None:
    aggregated = np.array([[[[3.0, 1.0], [4.0, 1.0]]], [[[0.0, 0.0], [0.0, 5.0]]]])
    ranks = Perturbation.compute_region_ordering(aggregated)
    np.testing.assert_array_equal(ranks[0, 0], [[1, 2], [0, 3]])
    np.testing.assert_array_equal(ranks[1, 0], [[1, 2], [3, 0]])
    mask = Perturbation.compute_perturbation_mask(ranks, 2)
    np.testing.assert_array_equal(mask[0, 0], [[True, False], [True, False]])


def test_padding_splits_before_and_after_per_axis() -> None:
    perturbation = Perturbation("zeros", region_shape=(2, 3))
    assert perturbation.padding((4, 6)) == ((0, 0), (0, 0))
    assert perturbation.padding((5, 6)) == ((0, 1), (0, 0))  # only one axis needs padding
    assert perturbation.padding((4, 4)) == ((0, 0), (1, 1))
    assert Perturbation("zeros", region_shape=(4, 4)).padding((5, 5)) == ((1, 2), (1, 2))


def test_aggregation_reduces_channels_and_averages_regions() -> None:
    analysis = np.zeros((1, 2, 4, 4))
    analysis[0, 0, 0, 0] = 4.0  # region (0, 0)
    analysis[0, 1, 3, 3] = -8.0  # region (1, 1)
    aggregated = Perturbation("zeros", region_shape=(2, 2)).aggregate_regions(analysis)
    # mean over 2 channels, then mean over 4 pixels
    np.testing.assert_allclose(aggregated, [[[[0.5, 0.0], [0.0, -1.0]]]])


def test_zeros_perturbs_top_region_in_every_channel() -> None:
    x = np.arange(1, 33, dtype=np.float64).reshape(1, 2, 4, 4)
    analysis = np.zeros_like(x)
    analysis[0, 0, 2:, :2] = 1.0  # bottom-left region is the most relevant
    result = Perturbation("zeros", 1, region_shape=(2, 2)).perturbate_on_batch(x, analysis)
    expected = x.copy()
    expected[0, :, 2:, :2] = 0.0
    np.testing.assert_array_equal(result, expected)
    assert x[0, 0, 2, 0] == 9.0  # not in place by default


def test_padding_case_perturbs_only_real_pixels_and_crops() -> None:
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5) + 1
    analysis = np.zeros_like(x)
    analysis[0, 0, 4, 4] = 10.0
    # Regions of 2 x 2 after padding 5 -> 6 at the end: the bottom-right region holds only
    # pixel (4, 4) of the image; its reflected neighbours hold zeros, so it ranks first.
    one = Perturbation("zeros", 1, region_shape=(2, 2)).perturbate_on_batch(x, analysis)
    expected = x.copy()
    expected[0, 0, 4, 4] = 0.0
    np.testing.assert_array_equal(one, expected)
    assert one.shape == x.shape
    # The next region is the first of the tied zero regions: the top-left one.
    two = Perturbation("zeros", 2, region_shape=(2, 2)).perturbate_on_batch(x, analysis)
    expected[0, 0, :2, :2] = 0.0
    np.testing.assert_array_equal(two, expected)


def test_mean_invert_callable_and_value_range() -> None:
    x = np.array([[[[1.0, 2.0], [3.0, 6.0]], [[0.5, 0.5], [0.5, 0.5]]]])  # (1, 2, 2, 2)
    analysis = np.ones_like(x)
    mean = Perturbation("mean", 1, region_shape=(2, 2)).perturbate_on_batch(x, analysis)
    np.testing.assert_array_equal(mean[0, 0], np.full((2, 2), 3.0))
    np.testing.assert_array_equal(mean[0, 1], np.full((2, 2), 0.5))
    inverted = Perturbation("invert", 1, region_shape=(2, 2), value_range=(-2.0, 2.0))
    np.testing.assert_array_equal(
        inverted.perturbate_on_batch(x, analysis)[0, 0], [[-1.0, -2.0], [-2.0, -2.0]]
    )
    doubled = Perturbation(lambda region: region * 2, 1, region_shape=(2, 2))
    np.testing.assert_array_equal(doubled.perturbate_on_batch(x, analysis), x * 2)


def test_gaussian_changes_only_chosen_regions_and_is_seeded() -> None:
    x = np.zeros((2, 3, 4, 4))
    analysis = np.zeros_like(x)
    analysis[:, :, :2, :2] = 1.0
    first = Perturbation("gaussian", 1, region_shape=(2, 2), seed=3).perturbate_on_batch(
        x, analysis
    )
    again = Perturbation("gaussian", 1, region_shape=(2, 2), seed=3).perturbate_on_batch(
        x, analysis
    )
    np.testing.assert_array_equal(first, again)
    assert np.all(first[:, :, :2, :2] != 0.0)
    np.testing.assert_array_equal(first[:, :, 2:, :], 0.0)
    np.testing.assert_array_equal(first[:, :, :, 2:], 0.0)
    assert 0.1 < first[:, :, :2, :2].std() < 0.6  # N(0, 0.3)


def test_tensor_three_axis_and_in_place_inputs() -> None:
    x = torch.arange(16.0).reshape(1, 4, 4)
    analysis = torch.zeros(1, 4, 4)
    analysis[0, 0, 0] = 1.0
    result = Perturbation("zeros", 1, region_shape=(2, 2)).perturbate_on_batch(x, analysis)
    assert isinstance(result, torch.Tensor) and result.shape == (1, 4, 4)
    assert float(result[0, :2, :2].abs().sum()) == 0.0 and float(result[0, 3, 3]) == 15.0
    array = np.ones((1, 1, 2, 2))
    same = Perturbation("zeros", 1, region_shape=(2, 2), in_place=True).perturbate_on_batch(
        array, np.ones_like(array)
    )
    assert same is array and array.sum() == 0.0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="perturbation function"):
        Perturbation("blur")
    with pytest.raises(ValueError, match="region_shape"):
        Perturbation("zeros", region_shape=(0, 2))
    with pytest.raises(ValueError, match="differs"):
        Perturbation("zeros").perturbate_on_batch(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 3)))


# -- PerturbationAnalysis on a model whose answer is known --------------------------------------
REGION_WEIGHTS = (4.0, 3.0, 2.0, 1.0)  # regions of a 4 x 4 image in raster order, 2 x 2 each


def toy_model() -> nn.Module:
    """Output 0 = sum over regions of weight x pixel sum; output 1 = constant 0."""
    weight = torch.zeros(2, 16)
    pixels = torch.zeros(4, 4)
    pixels[:2, :2], pixels[:2, 2:], pixels[2:, :2], pixels[2:, 2:] = REGION_WEIGHTS
    weight[0] = pixels.reshape(-1)
    linear = nn.Linear(16, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return nn.Sequential(nn.Flatten(), linear)


def _analysis(name: str, recompute: bool = False, **options):
    model = toy_model()
    data = torch.ones(64, 1, 4, 4)
    analyzer = innspect.create_analyzer(name, model, **options)
    perturbation = Perturbation("zeros", region_shape=(2, 2))
    return PerturbationAnalysis(
        analyzer,
        model,
        data,
        perturbation,
        steps=3,
        regions_per_step=1,
        recompute_analysis=recompute,
        batch_size=16,
    ).compute_perturbation_analysis()


def test_perfect_analysis_gives_the_known_curve_and_beats_random() -> None:
    perfect = _analysis("gradient")  # gradient = the weights: the exact ranking
    start = 4 * sum(REGION_WEIGHTS)  # 40
    np.testing.assert_allclose(perfect.scores, [start, start - 16, start - 28, start - 36])
    np.testing.assert_array_equal(perfect.n_regions, [0, 1, 2, 3])
    assert perfect.sample_scores.shape == (64, 4)
    assert perfect.aopc == pytest.approx((0 + 16 + 28 + 36) / 4)
    random = _analysis("random", seed=0)
    # A random order removes 10 per region on average: expected AOPC (0 + 10 + 20 + 30) / 4.
    assert random.aopc < perfect.aopc
    assert random.aopc == pytest.approx(15.0, abs=2.5)
    assert random.scores[0] == start


def test_recompute_analysis_never_perturbs_a_region_twice() -> None:
    # The gradient ignores the input, so each recomputed analysis ranks the same region first;
    # a correct recompute must move on to the next region not yet perturbed.
    recomputed = _analysis("gradient", recompute=True)
    np.testing.assert_allclose(recomputed.scores, [40, 24, 12, 4])


def test_scores_accuracy_and_targets() -> None:
    model = toy_model()
    data = torch.ones(4, 1, 4, 4)
    analyzer = innspect.create_analyzer("gradient", model)
    result = PerturbationAnalysis(
        analyzer,
        model,
        data,
        Perturbation("zeros", region_shape=(2, 2)),
        steps=4,
        score="accuracy",
        targets=[0, 0, 1, 1],
    ).compute_perturbation_analysis()
    # Targets 0 are predicted until every region is zero (then both outputs are 0 and argmax
    # is 0, still correct); targets 1 are never predicted.
    np.testing.assert_allclose(result.scores, [0.5] * 5)
    with pytest.raises(ValueError, match="score"):
        PerturbationAnalysis(analyzer, model, data, Perturbation("zeros"), score="loss")
