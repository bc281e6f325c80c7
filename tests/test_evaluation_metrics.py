"""innspect.evaluation on hand-computed cases, where the papers' definitions give the answer,
plus the properties every metric keeps: batching changes nothing, seeded draws repeat,
the model is untouched, and bad input gets a clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from innspect import evaluation as ev
from innspect.errors import InputError, OptionError


def linear(weights: list[float], bias: bool = False) -> nn.Module:
    """Two classes on len(weights) features; class 0's score is ``weights . x``."""
    model = nn.Linear(len(weights), 2, bias=bias).double()
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0] = torch.tensor(weights, dtype=torch.float64)
        model.weight[1] = -model.weight[0]
        if bias:
            model.bias.fill_(0.5)
    return model.eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    ).double()


# -- hand-computed cases ------------------------------------------------------------------------
def test_pixel_flipping_removes_most_relevant_first_by_hand() -> None:
    model = linear([1, 2, 3, 4])
    x = torch.ones(1, 4, dtype=torch.float64)
    a = torch.tensor([[4.0, 1.0, 3.0, 2.0]])  # order: feature 0, 2, 3, 1
    result = ev.PixelFlipping(perturb_baseline=0.0, softmax=False)(model, x, 0, a)
    assert result.curves.tolist() == [[9.0, 6.0, 2.0, 0.0]]
    assert result.scores.item() == pytest.approx(7.5 + 4.0 + 1.0)
    assert result.higher_is_better is False


def test_monotonicity_adds_features_least_relevant_first_by_hand() -> None:
    # The paper (Arya et al. 2019) starts from the baseline and adds the input's features back
    # in increasing order of attribution; Quantus 0.6.0's input never changes.
    model = linear([1, 2, 3, 4])
    x = torch.ones(1, 4, dtype=torch.float64)
    a = torch.tensor([[4.0, 1.0, 3.0, 2.0]])  # ascending: feature 1, 3, 2, 0
    result = ev.Monotonicity(perturb_baseline=0.0, softmax=False)(model, x, 0, a)
    assert result.curves.tolist() == [[2.0, 6.0, 9.0, 10.0]]
    assert result.scores.item() == 1.0
    # a feature that lowers the score, added first, breaks monotonicity
    model = linear([1, -2, 3, 4])
    result = ev.Monotonicity(perturb_baseline=0.0, softmax=False, abs=False)(model, x, 0, a)
    assert result.curves.tolist() == [[-2.0, 2.0, 5.0, 6.0]]
    result = ev.Monotonicity(perturb_baseline=0.0, softmax=False)(model, x, 0, -a)
    assert result.scores.item() == 1.0  # abs: same order as a


def test_exact_linear_attribution_is_perfectly_faithful_and_random_is_near_chance() -> None:
    torch.manual_seed(3)
    features, n = 40, 48
    w = torch.rand(features, dtype=torch.float64) + 0.1
    model = linear(w.tolist())
    x = torch.rand(n, features, dtype=torch.float64) + 0.5
    exact = w * x
    options = {"perturb_baseline": 0.0, "softmax": False}
    correlation = ev.FaithfulnessCorrelation(nr_runs=30, subset_size=8, **options)
    assert torch.allclose(
        correlation(model, x, 0, exact).scores, torch.ones(n, dtype=torch.float64)
    )
    estimate = ev.FaithfulnessEstimate(features_in_step=4, **options)
    assert torch.allclose(estimate(model, x, 0, exact).scores, torch.ones(n, dtype=torch.float64))
    assert (ev.Monotonicity(**options)(model, x, 0, exact).scores == 1).all()
    random = torch.randn(
        n, features, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    chance = correlation(model, x, 0, random).scores
    # each of the 48 correlations (30 runs) has sd ~0.18: their mean has sd ~0.027
    assert abs(chance.mean().item()) < 0.12
    assert (chance < 0.95).all()


def test_irof_on_three_channels_with_given_segments_by_hand() -> None:
    # x: (1, 3, 2, 2), class 0 = sum of every value; segments: top row 0, bottom row 1.
    model = nn.Sequential(nn.Flatten(), linear([1.0] * 12))
    x = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    x[:, :, 1] = 2.0  # bottom row: 2 per value -> f(x) = 6 + 12 = 18
    a = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    a[:, :, 1] = 1.0  # the bottom segment first
    segments = torch.tensor([[[0, 0], [1, 1]]])
    result = ev.IROF(perturb_baseline=0.0, softmax=False)(model, x, 0, a, segments=segments)
    assert result.curves.tolist() == [[6 / 18, 0.0]]
    assert result.scores.item() == pytest.approx(2 - (6 / 18) / 2)


def test_completeness_holds_for_exact_linear_attribution() -> None:
    model = linear([1, -2, 3, 4])
    x = torch.tensor([[1.0, 2.0, 0.5, -1.0]], dtype=torch.float64)
    exact = torch.tensor([[1.0, -2.0, 3.0, 4.0]], dtype=torch.float64) * x
    metric = ev.Completeness(perturb_baseline=0.0)
    result = metric(model, x, 0, exact)
    assert result.scores.item() == 1.0 and abs(result.extras["gap"].item()) < 1e-12
    wrong = metric(model, x, 0, exact * 2)
    assert wrong.scores.item() == 0.0
    assert wrong.extras["gap"].item() == pytest.approx(exact.sum().item())


def test_non_sensitivity_counts_disagreeing_features_by_hand() -> None:
    model = linear([1, 0, 2, 0])
    x = torch.ones(1, 4, dtype=torch.float64)
    metric = ev.NonSensitivity(perturb_baseline=0.0, softmax=False, normalise=False)
    assert metric(model, x, 0, torch.tensor([[1.0, 0.0, 2.0, 0.0]])).scores.item() == 0
    # feature 2 matters but gets nothing; feature 3 gets relevance but does not matter
    assert metric(model, x, 0, torch.tensor([[1.0, 0.0, 0.0, 0.5]])).scores.item() == 2
    grouped = ev.NonSensitivity(
        perturb_baseline=0.0, softmax=False, normalise=False, features_in_step=2
    )
    assert grouped(model, x, 0, torch.tensor([[1.0, 0.0, 0.0, 0.0]])).scores.item() == 1


def test_localisation_by_hand() -> None:
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0, 0, 0], a[0, 0, 3, 3] = 3.0, 1.0
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2, :2] = True  # 4 of 16 features
    x = torch.zeros(1, 1, 4, 4)
    assert ev.PointingGame()(None, x, None, a, mask=mask).scores.item() == 1.0
    weighted = ev.PointingGame(weighted=True)(None, x, None, a, mask=mask).scores.item()
    assert weighted == pytest.approx(1 - 4 / 16)
    inside = ev.AttributionLocalisation()(None, x, None, a, mask=mask).scores.item()
    assert inside == pytest.approx(3 / 4, rel=1e-8)
    share = ev.AttributionLocalisation(weighted=True)(None, x, None, a, mask=mask).scores.item()
    assert share == pytest.approx(3 / 4 * 4 / 16, rel=1e-8)
    mass = ev.RelevanceMassAccuracy()(None, x, None, a, mask=mask).scores.item()
    assert mass == pytest.approx(3 / 4, rel=1e-7)
    # the 4 most relevant: (0,0), (3,3), then zeros in feature order (0,1), (0,2): 2 inside
    rank = ev.RelevanceRankAccuracy()(None, x, None, a, mask=mask).scores.item()
    assert rank == 2 / 4


def test_auc_counts_ties_half() -> None:
    a = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    mask = torch.tensor([[True, False, True, False]])
    x = torch.zeros(1, 4)
    # positive/negative pairs: 0.9>0.5, 0.9>0.1, 0.5=0.5 (half), 0.5>0.1
    assert ev.AUC(normalise=False)(None, x, None, a, mask=mask).scores.item() == 3.5 / 4


def test_focus_quadrants_follow_the_last_two_axes() -> None:
    a = torch.zeros(2, 1, 4, 6)
    a[:, :, :2, 3:] = 1.0  # top right
    a[1, :, 2:, :3] = 3.0  # bottom left, sample 1
    labels = torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0]])
    scores = ev.Focus()(None, torch.zeros(2, 1, 4, 6), None, a, mosaic_labels=labels).scores
    assert scores[0].item() == pytest.approx(1.0)
    assert scores[1].item() == pytest.approx(6 / (6 + 18))


def test_complexity_by_hand() -> None:
    x = torch.zeros(2, 4)
    a = torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    entropy = ev.Complexity()(None, x, None, a).scores
    assert entropy[0].item() == pytest.approx(0.0, abs=1e-9)
    assert entropy[1].item() == pytest.approx(math.log(4), rel=1e-9)
    gini = ev.Sparseness()(None, x, None, a).scores
    assert gini[0].item() == pytest.approx(3 / 4, rel=1e-5) and abs(gini[1].item()) < 1e-9
    assert ev.EffectiveComplexity(eps=0.5)(None, x, None, a).scores.tolist() == [1.0, 4.0]


# -- properties --------------------------------------------------------------------------------
def test_scores_do_not_depend_on_the_batch_or_batch_size() -> None:
    model = small_cnn()
    torch.manual_seed(4)
    x, a = torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.randn(3, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 2, 0])
    for metric_class, options in [
        (ev.PixelFlipping, {"features_in_step": 24}),
        (ev.RegionPerturbation, {"patch_size": 3}),
        (ev.EffectiveComplexity, {"eps": 0.2}),
    ]:
        whole = metric_class(batch_size=256, **options)(model, x, y, a)
        small = metric_class(batch_size=5, **options)(model, x, y, a)
        assert torch.allclose(whole.scores, small.scores, rtol=1e-12, atol=1e-12)
        for i in range(3):
            alone = metric_class(**options)(model, x[i : i + 1], y[i : i + 1], a[i : i + 1])
            assert torch.allclose(alone.scores, whole.scores[i : i + 1], rtol=1e-10, atol=1e-12)


def test_seeded_draws_repeat_and_seeds_differ() -> None:
    model = small_cnn()
    x, a = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    metric = ev.FaithfulnessCorrelation(nr_runs=10, subset_size=20, seed=5)
    first, again = metric(model, x, 0, a), metric(model, x, 0, a)
    assert torch.equal(first.scores, again.scores)
    other = ev.FaithfulnessCorrelation(nr_runs=10, subset_size=20, seed=6)(model, x, 0, a)
    assert not torch.equal(first.scores, other.scores)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(
        metric(model, x, 0, a, generator=g1).scores, metric(model, x, 0, a, generator=g2).scores
    )


def test_any_rank_signals_and_tables() -> None:
    torch.manual_seed(5)
    signal_model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 14, 4)).double()
    x, a = torch.rand(2, 2, 16, dtype=torch.float64), torch.randn(2, 2, 16, dtype=torch.float64)
    curve = ev.RegionPerturbation(patch_size=4, regions_evaluation=3)(signal_model, x, 1, a).curves
    assert curve.shape == (2, 3)
    table_model = linear([1.0, 2.0, 3.0])
    result = ev.PixelFlipping()(
        table_model, torch.rand(4, 3, dtype=torch.float64), 0, torch.rand(4, 3)
    )
    assert result.curves.shape == (4, 3)


def test_the_model_is_not_modified() -> None:
    model = small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, a = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ev.PixelFlipping(features_in_step=48)(model, x, 0, a)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- evaluate ---------------------------------------------------------------------------------
def test_evaluate_builds_a_methods_by_metrics_table(tmp_path) -> None:
    model = small_cnn()
    torch.manual_seed(6)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(7)  # the "random" method draws from torch's global generator
    table = ev.evaluate(
        model,
        x,
        methods=["gradient", "input_t_gradient", "random"],
        metrics=["pixel_flipping", "sparseness", "faithfulness_correlation"],
        metric_options={
            "pixel_flipping": {"features_in_step": 24},
            "faithfulness_correlation": {"nr_runs": 10, "subset_size": 16},
        },
    )
    assert table.methods == ["gradient", "input_t_gradient", "random"]
    predicted = model(x).argmax(dim=1)
    assert torch.equal(table.targets, predicted)
    rows = table.rows()
    assert len(rows) == 9
    for row in rows:
        assert row["n"] == 4 and row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert sorted(table.ranks("pixel_flipping").values()) == [1, 2, 3]
    # the table's cell is the metric called directly on the method's attributions
    import innspect

    gradient = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")
    direct = ev.PixelFlipping(features_in_step=24)(
        model, x, predicted, gradient.analyze(x, neuron_selection=predicted)
    )
    assert torch.equal(table.scores("gradient", "pixel_flipping"), direct.scores)
    torch.manual_seed(7)
    again = ev.evaluate(model, x, methods=["random"], metrics=["faithfulness_correlation"],
                        metric_options={"faithfulness_correlation": {"nr_runs": 10, "subset_size": 16}})  # fmt: skip
    assert torch.equal(
        again.scores("random", "faithfulness_correlation"),
        table.scores("random", "faithfulness_correlation"),
    )
    text = table.to_csv(tmp_path / "results.csv")
    assert text.splitlines()[0].startswith("method,metric,mean,ci_low,ci_high")
    assert (tmp_path / "results.csv").read_text() == text
    assert "gradient" in str(table)


def test_evaluate_with_precomputed_attributions_and_masks() -> None:
    x = torch.rand(3, 1, 4, 4)
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2] = True
    inside = mask.float() + 0.01
    table = ev.evaluate(
        nn.Sequential(nn.Flatten(), nn.Linear(16, 2)),
        x,
        methods={"inside": inside, "outside": 1 - inside},
        metrics=["pointing_game", "relevance_mass_accuracy"],
        target=1,
        mask=mask,
    )
    assert table.scores("inside", "pointing_game").tolist() == [1.0, 1.0, 1.0]
    assert table.ranks("relevance_mass_accuracy") == {"inside": 1, "outside": 2}


# -- bad input --------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match=r"attributions of shape \(2, 3, 7, 8\) do not fit"):
        ev.PixelFlipping()(model, x, 0, torch.rand(2, 3, 7, 8))
    with pytest.raises(InputError, match="NaN"):
        ev.PixelFlipping()(model, x, 0, torch.full((2, 3, 8, 8), math.nan))
    with pytest.raises(InputError, match=r"mask of shape \(2, 1, 8, 7\) does not fit"):
        ev.PointingGame()(None, x, None, torch.rand(2, 1, 8, 8), mask=torch.ones(2, 1, 8, 7))
    with pytest.raises(InputError, match="needs mask="):
        ev.AUC()(None, x, None, torch.rand(2, 1, 8, 8))
    with pytest.raises(OptionError, match="did you mean 'pixel_flipping'"):
        ev.create_metric("pixel_fliping")
    with pytest.raises(OptionError, match="did you mean 'pixel_flipping'"):
        ev.evaluate(model, x, methods=["gradient"], metrics=["pixelflipping"])
    with pytest.raises(InputError, match="class outside 0..4"):
        ev.PixelFlipping(features_in_step=48)(model, x, 7, torch.rand(2, 3, 8, 8))
    with pytest.raises(InputError, match="takes no input mask="):
        ev.Sparseness()(None, x, None, torch.rand(2, 3, 8, 8), mask=torch.ones(2, 3, 8, 8))
    with pytest.raises(OptionError, match="features_in_step must be an int >= 1"):
        ev.PixelFlipping(features_in_step=0)
    with pytest.raises(OptionError, match="perturb_baseline must be"):
        ev.PixelFlipping(perturb_baseline="blak")(model, x, 0, torch.rand(2, 3, 8, 8))
    with pytest.raises(OptionError, match="unexpected keyword"):
        ev.create_metric("pixel_flipping", feature_in_step=3)


# -- randomisation and robustness ---------------------------------------------------------------
class _Ignored(nn.Module):
    """Class scores from ``used``; ``ignored`` runs but is multiplied by 0."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(20, 3)
        self.ignored = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(torch.tanh(x)) + 0.0 * self.ignored(x)


def test_mprt_on_a_layer_that_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    from innspect.evaluation import randomisation

    copies = []
    deepcopy = randomisation.copy.deepcopy
    monkeypatch.setattr(randomisation.copy, "deepcopy", lambda m: copies.append(m) or deepcopy(m))
    torch.manual_seed(8)
    model = _Ignored().double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 20, dtype=torch.float64)
    rng_state = torch.random.get_rng_state()
    result = ev.MPRT("gradient", layer_order="independent")(model, x, 1)
    assert result.labels == ["used", "ignored"]
    # randomising the ignored layer leaves the explanation as it was: similarity exactly 1
    assert torch.equal(result.curves[:, 1], torch.ones(5, dtype=torch.float64))
    assert (result.curves[:, 0] < 0.99).all()
    assert len(copies) == 1  # one copy of the model for all layers
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # global RNG untouched


def test_robustness_of_an_input_independent_explanation_is_zero() -> None:
    # "input" as attribution of a linear model... gradient of a linear model does not move
    model = linear([1.0, -2.0, 0.5])
    x = torch.rand(3, 3, dtype=torch.float64)
    for metric in (
        ev.MaxSensitivity("gradient", nr_samples=4),
        ev.AvgSensitivity("gradient", nr_samples=4),
    ):
        assert torch.equal(metric(model, x, 0).scores, torch.zeros(3, dtype=torch.float64))
    # x * w moves by exactly the noise * w: Lipschitz constant |w . noise| / |noise| <= max|w|
    lipschitz = ev.LocalLipschitzEstimate("input_t_gradient", nr_samples=6, normalise=False)
    values = lipschitz(model, x, 0).scores
    assert (values <= 2.0 + 1e-9).all() and (values > 0).all()


def test_robustness_predicts_only_when_its_score_needs_the_output() -> None:
    """The sensitivities and the Lipschitz estimate only explain the noisy inputs; they run
    the model on them only to drop those whose prediction changed (when asked), and the
    output stability always (its denominator). Same scores either way when none changes."""
    model = small_cnn()
    calls = []

    def count(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if not torch.is_grad_enabled():  # predictions; explanations record gradients
            calls.append(args[0].shape[0])

    model[0].register_forward_hook(count)
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    noise = 1e-3 * torch.rand(4, *x.shape, dtype=torch.float64)
    for cls in (ev.MaxSensitivity, ev.AvgSensitivity, ev.LocalLipschitzEstimate):
        calls.clear()
        plain = cls("gradient", nr_samples=4)(model, x, 0, noise=noise)
        assert calls == [], cls.name
        checked = cls("gradient", nr_samples=4, return_nan_when_prediction_changes=True)
        kept = checked(model, x, 0, noise=noise)
        assert sum(calls) == 3 + 4 * 3, cls.name  # the clean batch and every noisy row
        torch.testing.assert_close(kept.scores, plain.scores)
    calls.clear()
    output = ev.RelativeOutputStability(
        "gradient", nr_samples=4, return_nan_when_prediction_changes=False
    )
    output(model, x, 0, noise=noise)
    assert sum(calls) == 3 + 4 * 3
    # The representation stability's hooked copy (deep copies keep the counting hook) runs
    # each noisy row once: that pass gives the representations and, when asked, the
    # prediction (no second pass of the model over the noisy rows).
    calls.clear()
    plain = ev.RelativeRepresentationStability(
        "gradient", nr_samples=4, return_nan_when_prediction_changes=False
    )(model, x, 0, noise=noise)
    assert sum(calls) == 3 + 4 * 3  # the clean representations and every noisy row
    calls.clear()
    checked = ev.RelativeRepresentationStability(
        "gradient", nr_samples=4, return_nan_when_prediction_changes=True
    )(model, x, 0, noise=noise)
    assert sum(calls) == 3 + 3 + 4 * 3  # and the clean prediction
    torch.testing.assert_close(checked.scores, plain.scores)


def test_robustness_needs_a_method() -> None:
    with pytest.raises(InputError, match="give method="):
        ev.MaxSensitivity(nr_samples=2)(
            linear([1.0, 2.0]), torch.rand(2, 2, dtype=torch.float64), 0
        )


def test_evaluate_runs_reexplaining_metrics_with_each_method() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    table = ev.evaluate(
        model,
        x,
        methods=["gradient", "lrp.epsilon"],
        metrics=[ev.MaxSensitivity(nr_samples=3), ev.MPRT(), "random_logit"],
        metric_options={"random_logit": {"num_classes": 5, "similarity_func": "spearman"}},
        target=1,
    )
    assert table.metrics == ["max_sensitivity", "mprt", "random_logit"]
    direct = ev.MaxSensitivity("lrp.epsilon", nr_samples=3)(model, x, 1)
    assert torch.allclose(table.scores("lrp.epsilon", "max_sensitivity"), direct.scores)
    with pytest.raises(InputError, match="re-explains the inputs"):
        ev.evaluate(model, x, methods={"given": torch.rand(2, 3, 8, 8)}, metrics=["mprt"], target=1)


def test_consistency_groups_by_the_most_relevant_features() -> None:
    # the paper discretises an explanation by its top features: samples 0 and 1 share them
    model = linear([1.0, -1.0, 0.0, 0.0])
    x = torch.tensor([[2.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 2.0, 0, 0]], dtype=torch.float64)
    a = torch.tensor([[5.0, 4.0, 0, 1.0], [4.0, 5.0, 1.0, 0], [0, 0, 5.0, 4.0]])
    scores = ev.Consistency(n=2)(model, x, 0, a).scores
    # 0 and 1 share {0, 1} and both predict class 0; 2 shares with nobody
    assert scores[:2].tolist() == pytest.approx([1.0, 1.0]) and scores[2].item() == 0.0


def test_input_invariance_gradient_yes_input_times_gradient_no() -> None:
    # Kindermans et al.: shifting the input by a constant the first layer's bias cancels
    # leaves the gradient unchanged but not input x gradient
    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model = model.double().eval()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    shifted = ev.axiomatic.shifted_copy(model, -1.0)
    assert torch.allclose(shifted(x - 1.0), model(x), atol=1e-12)
    assert model[0].bias is not shifted[0].bias  # a copy: the user's model is untouched
    assert ev.InputInvariance("gradient")(model, x, 2).scores.tolist() == [1.0, 1.0, 1.0]
    assert ev.InputInvariance("input_t_gradient")(model, x, 2).scores.tolist() == [0.0] * 3


def test_road_imputation_reproduces_linear_images_by_hand() -> None:
    from innspect.evaluation.road import linear_imputation

    # the kernel is a symmetric mean: a linear ramp is its own interpolation, exactly
    rows, cols = np.meshgrid(np.arange(6.0), np.arange(7.0), indexing="ij")
    image = np.stack([2 * rows + cols, -rows + 0.5 * cols])
    removed = np.zeros(42, dtype=bool)
    removed[[8, 9, 15, 16, 22, 30]] = True  # interior pixels, some adjacent
    values = linear_imputation(image, removed)
    np.testing.assert_allclose(values, image.reshape(2, -1)[:, removed], atol=1e-12)
    # the noise: seeded draws repeat
    model = nn.Sequential(nn.Flatten(), linear([1.0] * 42))
    x = torch.as_tensor(image[:1][None])
    road = ev.ROAD(percentages=[10, 50, 90], noise=0.5)
    assert torch.equal(road(model, x, 0, x).curves, road(model, x, 0, x).curves)


def test_infidelity_of_the_exact_linear_attribution_is_zero() -> None:
    # f linear without bias, a = w (its gradient): sum(a * (x - x')) is f(x) - f(x') exactly
    # for every perturbation x' (Yeh et al.: the gradient has infidelity 0 on a linear model)
    torch.manual_seed(10)
    w = torch.randn(2 * 6 * 6, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), linear(w.tolist()))
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    exact = w.reshape(1, 2, 6, 6).expand_as(x)
    metric = ev.Infidelity(perturb_patch_sizes=[2, 4], perturb_baseline=0.0)
    assert metric(model, x, 0, exact).scores.abs().max() < 1e-20
    assert (metric(model, x, 0, 2 * exact).scores > 1e-3).all()


def test_translation_by_hand() -> None:
    from innspect.evaluation.robustness import translate

    x = torch.arange(1.0, 5.0).reshape(1, 1, 1, 4)
    fill = torch.tensor([0.0])
    assert translate(x, 1, fill).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert translate(x, -2, fill).flatten().tolist() == [3.0, 4.0, 0.0, 0.0]
    assert translate(x, 5, fill).flatten().tolist() == [0.0] * 4


def test_representation_stability_hooks_a_copy_only() -> None:
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    metric = ev.RelativeRepresentationStability("gradient", nr_samples=2, layer_indices=[-1])
    scores = metric(model, x, 1).scores
    assert scores.shape == (2,)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(InputError, match="no layer chosen"):
        ev.RelativeRepresentationStability("gradient", nr_samples=2, layer_names=["nope"])(
            model, x, 1
        )


def test_histogram_entropy_by_hand() -> None:
    from innspect.evaluation.randomisation import histogram_entropy

    # two values in two bins, equally often: log 2; one value: 0
    rows = torch.tensor([[0.0, 1.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    entropy = histogram_entropy(rows, n_bins=2)
    assert entropy[0].item() == pytest.approx(math.log(2)) and entropy[1].item() == 0.0
