"""innspect.evaluation against Quantus 0.6.0, metric by metric, on a small CNN and a random
resnet18: the deterministic metrics equal Quantus's values, the stochastic ones too when
given the same draws (reproduced from Quantus's calls to numpy's global generator).

Quantus feeds torch models float32 (``torch.Tensor(x)``), so the comparison is in float32;
its attributions are normalised per sample here (``normalise_axes``) because Quantus's
default divides the whole batch by one maximum (docs/evaluation.md). numpy 2 removed
``np.trapz``, which Quantus's AUC helper calls: the tests give it ``np.trapezoid``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus  # noqa: E402  (a test dependency: pyproject [test])
import torch
import torchvision
from torch import nn

from innspect import evaluation as ev
from innspect.errors import InputError, OptionError
from innspect.evaluation.randomisation import rule_n_bins

PER_SAMPLE = {"normalise_axes": (1, 2, 3)}
QUANTUS = {"normalise_func_kwargs": PER_SAMPLE, "disable_warnings": True, "return_aggregate": False}


@pytest.fixture(autouse=True)
def _numpy_trapz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    warnings.filterwarnings("ignore", module="quantus")


def small_cnn(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    ).eval()


@pytest.fixture(scope="module")
def case() -> dict:
    torch.manual_seed(1)
    mask = torch.zeros(4, 1, 12, 12)
    mask[:, :, 2:7, 3:9] = 1
    mask[3] = 0  # an empty mask: NaN in both
    return {
        "model": small_cnn(),
        "x": torch.rand(4, 3, 12, 12),
        "y": torch.tensor([0, 1, 2, 3]),
        "a": torch.randn(4, 3, 12, 12),
        "a1": torch.randn(4, 1, 12, 12),  # one channel: broadcast over x's three
        "mask": mask,
    }


def quantus_scores(metric, model, x, y, a, **kwargs) -> np.ndarray:
    values = metric(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", **kwargs
    )
    return np.asarray(values, dtype=np.float64)


def assert_same(ours: torch.Tensor, theirs: np.ndarray, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=atol, equal_nan=True)


PERTURBATION_CASES = [
    # (ours, quantus, options, attribution key, what to compare)
    (ev.PixelFlipping, quantus.PixelFlipping, {"features_in_step": 16}, "a", "curves"),
    (
        ev.PixelFlipping,
        quantus.PixelFlipping,
        {"features_in_step": 36, "perturb_baseline": "white"},
        "a",
        "curves",
    ),
    (
        ev.PixelFlipping,
        quantus.PixelFlipping,
        {"features_in_step": 16, "perturb_baseline": 0.25, "softmax": False},
        "a",
        "curves",
    ),
    (
        ev.RegionPerturbation,
        quantus.RegionPerturbation,
        {"patch_size": 5, "regions_evaluation": 6},
        "a",
        "curves",
    ),
    (
        ev.RegionPerturbation,
        quantus.RegionPerturbation,
        {"patch_size": 4, "order": "lerf"},
        "a1",
        "curves",
    ),
    (ev.Selectivity, quantus.Selectivity, {"patch_size": 5}, "a", "curves"),
    (ev.Selectivity, quantus.Selectivity, {"patch_size": 3}, "a1", "curves"),
    (
        ev.FaithfulnessEstimate,
        quantus.FaithfulnessEstimate,
        {"features_in_step": 16},
        "a",
        "scores",
    ),
    (ev.NonSensitivity, quantus.NonSensitivity, {"eps": 1e-3}, "sparse", "scores"),
    (
        ev.Completeness,
        quantus.Completeness,
        {"normalise": True, "rtol": 0, "atol": 0},
        "a",
        "scores",
    ),
]


@pytest.mark.parametrize(("ours", "theirs", "options", "key", "field"), PERTURBATION_CASES)
def test_perturbation_metrics_equal_quantus(case, ours, theirs, options, key, field) -> None:
    model, x, y = case["model"], case["x"], case["y"]
    # non-sensitivity needs attributions that are exactly 0 on some features
    a = case["a"].abs() * (case["a"].abs() > 1) if key == "sparse" else case[key]
    result = ours(**options)(model, x, y, a)
    quantus_options = {k: v for k, v in options.items() if k not in ("softmax", "rtol", "atol")}
    softmax = options.get("softmax")
    theirs_values = quantus_scores(
        theirs(**quantus_options, **QUANTUS), model, x, y, a,
        **({} if softmax is None else {"softmax": softmax}),
    )  # fmt: skip
    assert_same(getattr(result, field), theirs_values)


def test_pixel_flipping_area_equals_quantus_auc_per_sample(case) -> None:
    model, x, y, a = case["model"], case["x"], case["y"], case["a"]
    result = ev.PixelFlipping(features_in_step=16)(model, x, y, a)
    theirs = quantus.PixelFlipping(features_in_step=16, return_auc_per_sample=True, **QUANTUS)
    assert_same(result.scores, quantus_scores(theirs, model, x, y, a))


def test_irof_equals_quantus_per_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    # Quantus's IROF only runs on one-channel images (its mask has one channel and its
    # perturbation asserts equal shapes), and pads the curves of a batch to the longest
    # one, so each sample runs alone there. Its curve is read where it integrates it.
    from quantus.metrics.faithfulness import irof as quantus_irof

    curves: list[np.ndarray] = []
    integrate = quantus_irof.utils.calculate_auc

    def spy(values, **kwargs):
        curves.append(np.asarray(values, dtype=np.float64)[0])
        return integrate(values, **kwargs)

    monkeypatch.setattr(quantus_irof.utils, "calculate_auc", spy)
    model = small_cnn(channels=1)
    torch.manual_seed(2)
    x, y, a = torch.rand(3, 1, 12, 12), torch.tensor([0, 4, 2]), torch.randn(3, 1, 12, 12)
    result = ev.IROF(perturb_baseline="black")(model, x, y, a)
    theirs = np.concatenate(
        [
            quantus_scores(
                quantus.IROF(perturb_baseline="black", **QUANTUS),
                model,
                x[i : i + 1],
                y[i : i + 1],
                a[i : i + 1],
            )  # fmt: skip
            for i in range(3)
        ]
    )
    for i in range(3):
        count = int((~torch.isnan(result.curves[i])).sum())
        assert count == len(curves[i])  # the same superpixels
        np.testing.assert_allclose(result.curves[i, :count].numpy(), curves[i], rtol=0, atol=1e-6)
    # The areas add ~144 points, each differing by float32 rounding of the model's outputs
    # (rows batched differently): equal to 1e-5 relative.
    np.testing.assert_allclose(result.scores.numpy(), theirs, rtol=1e-5)


LOCALISATION_CASES = [
    (ev.PointingGame, quantus.PointingGame, {}),
    (ev.AttributionLocalisation, quantus.AttributionLocalisation, {}),
    (
        ev.AttributionLocalisation,
        quantus.AttributionLocalisation,
        {"positive_attributions": True, "abs": False},
    ),
    (ev.TopKIntersection, quantus.TopKIntersection, {"k": 20}),
    (ev.TopKIntersection, quantus.TopKIntersection, {"k": 20, "concept_influence": True}),
    (ev.RelevanceRankAccuracy, quantus.RelevanceRankAccuracy, {}),
    (ev.RelevanceMassAccuracy, quantus.RelevanceMassAccuracy, {}),
    (ev.AUC, quantus.AUC, {}),
]


@pytest.mark.parametrize(("ours", "theirs", "options"), LOCALISATION_CASES)
def test_localisation_metrics_equal_quantus(case, ours, theirs, options) -> None:
    x, y, a, mask = case["x"], case["y"], case["a1"], case["mask"]
    result = ours(**options)(None, x, y, a, mask=mask)
    expected = quantus_scores(
        theirs(**options, **QUANTUS), case["model"], x, y, a, s_batch=mask.numpy()
    )
    assert np.isnan(result.scores[3])
    if ours is ev.PointingGame:
        # Quantus writes NaN for the empty mask into a boolean array: it reads back as a hit
        assert expected[3] == 1.0
        expected[3] = np.nan
    assert_same(result.scores, expected)


def test_focus_equals_quantus(case) -> None:
    labels = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]])
    x, y, a = case["x"], case["y"], case["a1"]
    result = ev.Focus()(None, x, y, a, mosaic_labels=labels)
    theirs = quantus_scores(
        quantus.Focus(**QUANTUS), case["model"], x, y, a, custom_batch=labels.numpy()
    )
    assert_same(result.scores, theirs)


@pytest.mark.parametrize(
    ("ours", "theirs", "options"),
    [
        (ev.Sparseness, quantus.Sparseness, {}),
        (ev.Complexity, quantus.Complexity, {}),
        (ev.EffectiveComplexity, quantus.EffectiveComplexity, {"eps": 0.3}),
        (ev.Sparseness, quantus.Sparseness, {"normalise": False}),
    ],
)
def test_complexity_metrics_equal_quantus(case, ours, theirs, options) -> None:
    x, y, a = case["x"], case["y"], case["a"]
    result = ours(**options)(None, x, y, a)
    assert_same(result.scores, quantus_scores(theirs(**options, **QUANTUS), case["model"], x, y, a))


def test_faithfulness_correlation_equals_quantus_given_its_subsets(case) -> None:
    model, x, y, a = case["model"], case["x"], case["y"], case["a"]
    n, features, runs, size = 4, a[0].numel(), 20, 30
    # Quantus per run: one np.random.choice per sample, then the perturbation draws N
    # uniform values for its (unused) "uniform" baseline.
    np.random.seed(7)  # noqa: NPY002 (Quantus draws from the global generator)
    indices = np.zeros((n, runs, size), dtype=np.int64)
    for run in range(runs):
        for i in range(n):
            indices[i, run] = np.random.choice(features, size, replace=False)  # noqa: NPY002 (Quantus draws from the global generator)
        np.random.uniform(size=n)  # noqa: NPY002 (Quantus draws from the global generator)
    np.random.seed(7)  # noqa: NPY002 (Quantus draws from the global generator)
    theirs = quantus_scores(
        quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, **QUANTUS), model, x, y, a
    )
    ours = ev.FaithfulnessCorrelation(nr_runs=runs, subset_size=size)
    assert_same(ours(model, x, y, a, indices=torch.as_tensor(indices)).scores, theirs)


def test_monotonicity_correlation_equals_quantus_given_its_baselines(case) -> None:
    model, x, y, a = case["model"], case["x"], case["y"], case["a"]
    steps, repeats = a[0].numel() // 48, 5
    np.random.seed(3)  # Quantus: one uniform value per sample for each group and repeat  # noqa: NPY002 (Quantus draws from the global generator)
    values = np.zeros((4, steps, repeats))
    for step in range(steps):
        for k in range(repeats):
            values[:, step, k] = np.random.uniform(size=4)  # noqa: NPY002 (Quantus draws from the global generator)
    np.random.seed(3)  # noqa: NPY002 (Quantus draws from the global generator)
    theirs = quantus_scores(
        quantus.MonotonicityCorrelation(nr_samples=repeats, features_in_step=48, **QUANTUS),
        model, x, y, a,
    )  # fmt: skip
    ours = ev.MonotonicityCorrelation(nr_samples=repeats, features_in_step=48)
    result = ours(model, x, y, a, baseline_values=torch.as_tensor(values))
    assert_same(result.scores, theirs)


def test_quantus_monotonicity_never_changes_its_input(case) -> None:
    """Quantus 0.6.0 replaces the baseline's features by the baseline again: its curve is flat
    and every attribution is 'monotonic'. Ours adds the input's values (the paper)."""
    model, x, y, a = case["model"], case["x"], case["y"], case["a"]
    theirs = quantus_scores(quantus.Monotonicity(features_in_step=48, **QUANTUS), model, x, y, a)
    assert theirs.all()
    ours = ev.Monotonicity(features_in_step=48)(model, x, y, a)
    assert (ours.curves.diff(dim=1) != 0).any(dim=1).all()  # our input does change


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ours", "theirs", "options", "field"),
    [
        (ev.PixelFlipping, quantus.PixelFlipping, {"features_in_step": 128}, "curves"),
        (ev.RegionPerturbation, quantus.RegionPerturbation, {"patch_size": 8}, "curves"),
        (ev.Selectivity, quantus.Selectivity, {"patch_size": 8}, "curves"),
        (
            ev.FaithfulnessEstimate,
            quantus.FaithfulnessEstimate,
            {"features_in_step": 256},
            "scores",
        ),
    ],
)
def test_resnet18_equals_quantus(ours, theirs, options, field) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, y, a = torch.rand(2, 3, 32, 32), torch.tensor([3, 7]), torch.randn(2, 3, 32, 32)
    result = ours(**options)(model, x, y, a)
    expected = quantus_scores(theirs(**options, **QUANTUS), model, x, y, a)
    assert_same(getattr(result, field), expected)


ROBUSTNESS_CASES = [
    # (ours, quantus, options, Quantus's noise for one step of (4, features))
    (ev.MaxSensitivity, quantus.MaxSensitivity, {}, ("uniform", -0.2, 0.2)),
    (ev.AvgSensitivity, quantus.AvgSensitivity, {}, ("uniform", -0.2, 0.2)),
    (
        ev.MaxSensitivity,
        quantus.MaxSensitivity,
        {"normalise": True, "abs": True},
        ("uniform", -0.2, 0.2),
    ),
    (ev.LocalLipschitzEstimate, quantus.LocalLipschitzEstimate, {}, ("normal", 0.0, 0.1)),
    (ev.RelativeInputStability, quantus.RelativeInputStability, {}, ("uniform", 0.02, 0.2)),
    (ev.RelativeOutputStability, quantus.RelativeOutputStability, {}, ("uniform", 0.02, 0.2)),
    (
        ev.RelativeRepresentationStability,
        quantus.RelativeRepresentationStability,
        {},
        ("uniform", 0.02, 0.2),
    ),
    (
        ev.RelativeRepresentationStability,
        quantus.RelativeRepresentationStability,
        {"layer_names": ["1", "3"]},
        ("uniform", 0.02, 0.2),
    ),
]


@pytest.mark.parametrize(("ours", "theirs", "options", "draw"), ROBUSTNESS_CASES)
def test_robustness_metrics_equal_quantus_given_its_noise(
    case, ours, theirs, options, draw
) -> None:
    import innspect

    model, x, y = case["model"], case["x"], case["y"]
    gradient = innspect.create_analyzer("gradient", model, neuron_selection_mode="index")

    def explain(model, inputs, targets, **kwargs):
        return gradient.analyze(
            torch.as_tensor(inputs), neuron_selection=torch.as_tensor(targets)
        ).numpy()

    a = gradient.analyze(x, neuron_selection=y)
    steps, (kind, first, second) = 5, draw
    np.random.seed(3)  # noqa: NPY002 (Quantus draws from the global generator)
    noise = np.stack(
        [getattr(np.random, kind)(first, second, size=(4, x[0].numel())) for _ in range(steps)]  # noqa: NPY002
    )
    np.random.seed(3)  # noqa: NPY002
    expected = quantus_scores(
        theirs(nr_samples=steps, **options, **QUANTUS), model, x, y, a, explain_func=explain
    )
    noise = torch.as_tensor(noise.reshape(steps, *x.shape), dtype=torch.float32)
    result = ours("gradient", nr_samples=steps, **options)(model, x, y, a, noise=noise)
    # relative: output stability divides by tiny output changes (values ~1e4)
    np.testing.assert_allclose(result.scores.numpy(), expected, rtol=1e-5, atol=1e-6)
    # re-explaining x itself (no attributions given) and in small batches changes nothing
    again = ours("gradient", nr_samples=steps, batch_size=3, **options)(model, x, y, noise=noise)
    np.testing.assert_allclose(again.scores.numpy(), result.scores.numpy(), rtol=1e-5)


def _quantus_gradient(model, inputs, targets, method="gradient", **kwargs):
    import innspect

    analyzer = innspect.create_analyzer(method, model, neuron_selection_mode="index")
    inputs = torch.as_tensor(inputs, dtype=torch.float32)  # SmoothMPRT adds float64 noise
    return analyzer.analyze(inputs, neuron_selection=torch.as_tensor(targets)).numpy()


@pytest.mark.parametrize("order", ["top_down", "bottom_up", "independent"])
def test_mprt_equals_quantus(case, order) -> None:
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    theirs = quantus.MPRT(layer_order=order, **QUANTUS)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    result = ev.MPRT("gradient", layer_order=order)(model, x, y, torch.as_tensor(a))
    layers = [name for name in theirs if name != "original"]
    assert result.labels == layers
    assert_same(result.curves, np.array([theirs[name] for name in layers]).T, atol=1e-9)


def test_mprt_with_batch_norm_and_lrp_equals_quantus() -> None:
    """Our MPRT keeps one analyzer for the randomised copy (its folded batch norms are
    remade as the weights change); Quantus explains each layer's model afresh."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.normal_(0, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    x, y = torch.rand(3, 3, 8, 8), torch.tensor([0, 2, 4])
    a = _quantus_gradient(model, x.numpy(), y.numpy(), method="lrp.epsilon")
    theirs = quantus.MPRT(**QUANTUS)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient, explain_func_kwargs={"method": "lrp.epsilon"},
    )  # fmt: skip
    result = ev.MPRT("lrp.epsilon")(model, x, y, torch.as_tensor(a))
    layers = [name for name in theirs if name != "original"]
    assert result.labels == layers == ["4", "1", "0"]
    assert_same(result.curves, np.array([theirs[name] for name in layers]).T, atol=1e-9)


def test_random_logit_equals_quantus_given_its_classes(case) -> None:
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    theirs = quantus.RandomLogit(num_classes=5, **QUANTUS)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    # Quantus: np.random.seed(seed), then an index among the classes other than y, in order
    np.random.seed(42)  # noqa: NPY002 (Quantus draws from the global generator)
    index = np.random.randint(0, 4, 4)  # noqa: NPY002
    off = torch.as_tensor(np.where(index < y.numpy(), index, index + 1))
    result = ev.RandomLogit("gradient", num_classes=5)(
        model, x, y, torch.as_tensor(a), off_classes=off
    )
    assert_same(result.scores, np.asarray(theirs))


def test_smooth_mprt_equals_quantus_given_its_noise(case, monkeypatch: pytest.MonkeyPatch) -> None:
    # Quantus's SmoothMPRT explains with quantus.explain, not explain_func: it gets ours too
    monkeypatch.setattr(quantus, "explain", _quantus_gradient)
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    copies = 4
    np.random.seed(5)  # noqa: NPY002 (Quantus draws from the global generator)
    # the unchanged model first (Quantus's "original" entry), then each layer
    draws = np.stack(
        [np.stack([np.random.randn(*x.shape) for _ in range(copies - 1)]) for _ in range(3)]  # noqa: NPY002
    )
    np.random.seed(5)  # noqa: NPY002
    theirs = quantus.SmoothMPRT(nr_samples=copies, **QUANTUS)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    ours = ev.SmoothMPRT("gradient", nr_samples=copies)
    result = ours(model, x, y, torch.as_tensor(a), noise=torch.as_tensor(draws[1:]))
    layers = [name for name in theirs if name != "original"]
    assert result.labels == layers
    assert_same(result.curves, np.array([theirs[name] for name in layers]).T, atol=1e-9)


def _batch_level_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(432, 3)).eval()
    x = torch.rand(12, 3, 12, 12) * 4 - 2
    assert len(set(model(x).argmax(dim=1).tolist())) > 1  # the predictions differ
    return model, x, torch.zeros(12, dtype=torch.long)


def test_sufficiency_equals_quantus() -> None:
    model, x, y = _batch_level_case()
    # three groups of similar explanations, each already normalised (max 1, positive): the
    # per-sample and Quantus's batch-wide normalisations then agree
    base = torch.rand(3, 3, 12, 12)
    a = base[torch.arange(12) % 3] + 0.05 * torch.rand(12, 3, 12, 12)
    a = a / a.reshape(12, -1).amax(dim=1).reshape(-1, 1, 1, 1)
    theirs = quantus.Sufficiency(disable_warnings=True, return_aggregate=False)
    expected = quantus_scores(theirs, model, x, y, a, batch_size=12)
    result = ev.Sufficiency()(model, x, y, a)
    assert 0 < result.scores.mean() < 1
    assert_same(result.scores, expected)


def test_consistency_equals_quantus_with_its_discretisation() -> None:
    model, x, y = _batch_level_case()
    a = torch.randn(12, 3, 12, 12)
    a[:, 0, 0, :5] = torch.sign(torch.randn(12, 1)).repeat(1, 5)  # two sign patterns
    theirs = quantus.Consistency(
        abs=False, normalise=False, disable_warnings=True, return_aggregate=False
    )
    expected = quantus_scores(theirs, model, x, y, a, batch_size=12)
    ours = ev.Consistency(discretise_func="first_n_sign", abs=False, normalise=False)
    result = ours(model, x, y, a)
    assert 0 < result.scores.mean() < 1
    assert_same(result.scores, expected)


def test_quantus_input_invariance_does_not_shift_every_feature(monkeypatch) -> None:
    """Quantus 0.6.0 shifts the input through ``perturb_batch`` with flat indices, which
    leaves some features unshifted, so even the gradient (invariant by Kindermans et al.)
    fails its test; ours shifts every feature (test_evaluation_metrics)."""
    from quantus.metrics.axiomatic import input_invariance

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(400, 5)).eval()
    x, y = torch.rand(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    shifts = []
    perturb = input_invariance.perturb_batch

    def spy(**kwargs):
        out = perturb(**kwargs)
        shifts.append(out - kwargs["arr"])
        return out

    monkeypatch.setattr(input_invariance, "perturb_batch", spy)
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    theirs = quantus.InputInvariance(disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    assert (shifts[0] == 0).any() and (shifts[0] == -1).mean() > 0.9
    assert not all(theirs)
    assert (
        ev.InputInvariance("gradient")(model, x, y, torch.as_tensor(a)).scores.tolist() == [1.0] * 4
    )


def test_road_equals_quantus_on_one_channel_without_noise() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 3)).eval()
    x = torch.rand(6, 1, 12, 12) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    a = (x * model[1].weight[y].reshape(6, 1, 12, 12)).detach()  # input x gradient
    percentages = [5, 20, 50, 80]
    theirs = quantus.ROAD(percentages=percentages, noise=0.0, **QUANTUS)
    expected = theirs(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu"
    )
    result = ev.ROAD(percentages=percentages, noise=0.0)(model, x, y, a)
    accuracy = result.curves.mean(dim=0).tolist()
    assert accuracy == [expected[p] for p in percentages]
    assert accuracy[0] > accuracy[-1]  # removing the relevant pixels breaks the prediction


def test_road_imputation_equals_quantus_and_its_multichannel_failure() -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation

    from innspect.evaluation.road import linear_imputation

    rng = np.random.default_rng(0)
    image = rng.random((3, 9, 9))
    index = rng.choice(81, 30, replace=False)
    removed = np.zeros(81, dtype=bool)
    removed[index] = True
    ours = image.reshape(3, -1).copy()
    ours[:, removed] = linear_imputation(image, removed)
    theirs = noisy_linear_imputation(image, index, noise=0.0)
    np.testing.assert_allclose(ours.reshape(3, 9, 9), theirs, rtol=0, atol=1e-12)
    # Quantus indexes pixels with indices over channels x pixels: 3-channel inputs fail
    model = nn.Sequential(nn.Flatten(), nn.Linear(432, 3)).eval()
    x = torch.rand(2, 3, 12, 12)
    with pytest.raises(IndexError):
        quantus.ROAD(percentages=[50], noise=0.0, disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=np.array([0, 1]),
            a_batch=np.random.default_rng(1).random((2, 3, 12, 12)), device="cpu",
        )  # fmt: skip
    assert ev.ROAD(percentages=[50])(
        model, x, torch.tensor([0, 1]), torch.rand(2, 3, 12, 12)
    ).curves.shape == (2, 1)


@pytest.mark.parametrize("sizes", [[4], [3, 6]])
def test_infidelity_equals_quantus(case, sizes) -> None:
    model, x, y, a = case["model"], case["x"], case["y"], case["a"]
    theirs = quantus.Infidelity(perturb_patch_sizes=sizes, n_perturb_samples=2, **QUANTUS)
    expected = quantus_scores(theirs, model, x, y, a)
    result = ev.Infidelity(perturb_patch_sizes=sizes)(model, x, y, a)
    # squared errors of ~10 in float32 (Quantus) against float64 sums: 1e-6 relative
    np.testing.assert_allclose(result.scores.numpy(), expected, rtol=1e-6)


def test_quantus_infidelity_fails_when_patches_do_not_tile(case) -> None:
    model, x, y, a = case["model"], case["x"], case["y"], case["a"]
    with pytest.raises(IndexError):
        quantus_scores(quantus.Infidelity(perturb_patch_sizes=[5], **QUANTUS), model, x, y, a)
    assert ev.Infidelity(perturb_patch_sizes=[5])(model, x, y, a).scores.isfinite().all()


@pytest.mark.parametrize("options", [{"nr_steps": 4}, {"nr_steps": 7, "normalise": False}])
def test_continuity_equals_quantus(case, options) -> None:
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    theirs = quantus.Continuity(**options, **QUANTUS)
    expected = quantus_scores(
        theirs, model, x, y, torch.as_tensor(a), explain_func=_quantus_gradient
    )
    result = ev.Continuity("gradient", **options)(model, x, y)
    np.testing.assert_allclose(result.scores.numpy(), expected, rtol=1e-6)


def test_quantus_continuity_fails_past_the_width(case) -> None:
    # nr_steps=5 on 12 columns: steps of 5 from -7 reach +13, past the image; Quantus's
    # np.take raises, ours translates the image out of view (all baseline)
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    with pytest.raises(IndexError):
        quantus_scores(
            quantus.Continuity(nr_steps=5, **QUANTUS), model, x, y, torch.as_tensor(a),
            explain_func=_quantus_gradient,
        )  # fmt: skip
    assert ev.Continuity("gradient", nr_steps=5)(model, x, y).curves.shape == (4, 5)


def test_efficient_mprt_equals_quantus(case) -> None:
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    theirs = quantus.EfficientMPRT(disable_warnings=True, return_aggregate=False)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    result = ev.EfficientMPRT("gradient")(model, x, y, torch.as_tensor(a))
    np.testing.assert_allclose(result.scores.numpy(), np.asarray(theirs), rtol=1e-9, atol=1e-12)


def _textbook_rule(rule: str):
    """Quantus's rule (its own statistics over the whole batch) with the sample size ``n``
    the rule's definition means, the number of values in one explanation (Quantus 0.6.0's
    ``n_bins_func`` takes ``n = a_batch[0].ndim``, the number of axes)."""

    def n_bins(a_batch: np.ndarray) -> int:
        n = a_batch[0].size
        spread = np.max(a_batch) - np.min(a_batch)
        if rule == "Freedman Diaconis":
            iqr = np.percentile(a_batch, 75) - np.percentile(a_batch, 25)
            return int(spread / max(2 * iqr / np.power(n, 1 / 3), 1e-6))
        if rule == "Scotts":
            return int(spread / (3.5 * np.std(a_batch) / np.power(n, 1 / 3)))
        return {
            "Square Root": int(np.sqrt(n)),
            "Sturges Formula": int(np.log2(n) + 1),
            "Rice": int(2 * np.power(n, 1 / 3)),
        }[rule]

    return n_bins


@pytest.mark.parametrize(
    ("rule", "limits"),
    [
        ("Freedman Diaconis", {}),
        ("Scotts", {}),
        ("Square Root", {}),
        ("Sturges Formula", {"min_n_bins": 5}),
        ("Rice", {"min_n_bins": 5, "max_n_bins": 12}),
    ],
)
def test_efficient_mprt_bin_rules_equal_quantus(case, rule, limits, monkeypatch) -> None:
    """Each of Quantus's bin-width rules, with its sample size read as the rules define it
    (see the next test), and its clamping to [min_n_bins, max_n_bins]: the same number of
    bins and scores as Quantus."""
    from quantus.metrics.randomisation import efficient_mprt

    monkeypatch.setitem(efficient_mprt.AVAILABLE_N_BINS_ALGORITHMS, rule, _textbook_rule(rule))
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    metric = quantus.EfficientMPRT(
        complexity_func_kwargs={"rule": rule, **limits},
        disable_warnings=True,
        return_aggregate=False,
    )
    theirs = metric(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    ours = ev.EfficientMPRT("gradient", rule=rule, **limits)
    bins = rule_n_bins(torch.as_tensor(a), ours.rule, ours.min_n_bins, ours.max_n_bins)
    assert bins == metric.complexity_func_kwargs["n_bins"]
    assert bins != 100  # not the fixed default
    result = ours(model, x, y, torch.as_tensor(a))
    np.testing.assert_allclose(result.scores.numpy(), np.asarray(theirs), rtol=1e-9, atol=1e-12)
    fixed = ev.EfficientMPRT("gradient", n_bins=bins)(model, x, y, torch.as_tensor(a))
    torch.testing.assert_close(result.scores, fixed.scores)


def test_efficient_mprt_rules_count_values_not_axes(case) -> None:
    """Quantus 0.6.0's rules take the sample size as the number of axes of one explanation
    (``a_batch[0].ndim``): Sturges gives int(log2(3) + 1) = 2 bins for 3 x 64 x 64 values.
    innspect follows the rules' definitions (Sturges 1926, Scott 1979, Freedman & Diaconis
    1981): n is the number of values, 12288 here; unclamped results, by hand."""
    from quantus.functions import n_bins_func

    a = torch.linspace(0, 1, 2 * 3 * 64 * 64, dtype=torch.float64).reshape(2, 3, 64, 64)
    assert n_bins_func.sturges_formula(a.numpy()) == 2
    assert n_bins_func.square_root_choice(a.numpy()) == 1
    n = 3 * 64 * 64
    rule = rule_n_bins
    assert rule(a, "sturges", 1, 1000) == 14  # log2(12288) = 13.58
    assert rule(a, "square_root", 1, 1000) == 110  # sqrt(12288) = 110.85
    assert rule(a, "rice", 1, 1000) == 46  # 2 * 12288^(1/3) = 46.16
    # uniform on [0, 1]: IQR 0.5, std 1 / sqrt(12) (to the grid's rounding)
    assert rule(a, "freedman_diaconis", 1, 1000) == int(n ** (1 / 3))  # 23.08
    assert rule(a, "scott", 1, 1000) == int(np.sqrt(12) * n ** (1 / 3) / 3.5)  # 22.84
    # Sturges here agrees unpatched with Quantus: both clamp to min_n_bins = 10
    model, x, y = case["model"], case["x"], case["y"]
    g = _quantus_gradient(model, x.numpy(), y.numpy())
    theirs = quantus.EfficientMPRT(
        complexity_func_kwargs={"rule": "Sturges Formula"},
        disable_warnings=True,
        return_aggregate=False,
    )(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=g, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    ours = ev.EfficientMPRT("gradient", rule="sturges")(model, x, y, torch.as_tensor(g))
    np.testing.assert_allclose(ours.scores.numpy(), np.asarray(theirs), rtol=1e-9, atol=1e-12)


def test_efficient_mprt_bin_options_are_checked() -> None:
    with pytest.raises(OptionError, match="rule"):
        ev.EfficientMPRT("gradient", rule="Doane")
    with pytest.raises(OptionError, match="not both"):
        ev.EfficientMPRT("gradient", rule="rice", n_bins=20)
    with pytest.raises(OptionError, match="min_n_bins"):
        ev.EfficientMPRT("gradient", rule="rice", min_n_bins=50, max_n_bins=20)


def test_efficient_mprt_extra_scores_equal_quantus(case) -> None:
    """Quantus's ``compute_extra_scores``: deltas and fractions of the explanation and model
    output entropies, their ratio, the average complexity and the model-vs-explanation
    Spearman correlation, per sample."""
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    metric = quantus.EfficientMPRT(
        compute_extra_scores=True, disable_warnings=True, return_aggregate=False
    )
    theirs = metric(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    result = ev.EfficientMPRT("gradient", compute_extra_scores=True, batch_size=3)(
        model, x, y, torch.as_tensor(a)
    )
    np.testing.assert_allclose(result.scores.numpy(), np.asarray(theirs), rtol=1e-9, atol=1e-12)
    assert set(result.extras) == set(metric.scores_extra)
    for key, values in metric.scores_extra.items():
        expected = np.asarray(values, dtype=np.float64)
        np.testing.assert_allclose(
            result.extras[key].numpy(), expected, rtol=1e-5, atol=1e-7, equal_nan=True
        )
    # the model's output entropy changed: the model fractions are not trivially 1
    assert not np.allclose(result.extras["scores_fraction_model"].numpy(), 1.0)
    with pytest.raises(InputError, match="softmax"):
        ev.EfficientMPRT("gradient", compute_extra_scores=True, softmax=False)(
            model, x, y, torch.as_tensor(a)
        )


def _gini_of_magnitudes(a, x=None, **kwargs) -> float:
    """Gini coefficient of |a| (a complexity function that, unlike Quantus's own ``entropy``
    and ``gini_coeffiient``, needs no ``x``: Quantus 0.6.0's EfficientMPRT gives ``x=None``
    for the randomised model's explanations)."""
    assert kwargs["n_bins"] == 100  # the bins EfficientMPRT chose, passed on as Quantus does
    values = np.sort(np.abs(np.asarray(a, dtype=np.float64)).ravel())
    n = values.size
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * values) / (n * np.sum(values)))


def _entropy_of_magnitudes(a, x=None, **kwargs) -> float:
    """Quantus's discrete entropy of |a| in ``n_bins`` bins, scaled by ``scale``."""
    from quantus.functions.complexity_func import discrete_entropy

    return kwargs["scale"] * discrete_entropy(np.abs(a), x, n_bins=kwargs["n_bins"])


@pytest.mark.parametrize(
    ("function", "kwargs"),
    [(_gini_of_magnitudes, {}), (_entropy_of_magnitudes, {"n_bins": 20, "scale": 2.0})],
)
def test_efficient_mprt_complexity_func_equals_quantus(case, function, kwargs) -> None:
    """``complexity_func`` (and its ``complexity_func_kwargs``, ``n_bins`` there read as the
    option) given to both: the same per-sample relative rise as Quantus's, and not the
    default entropy's."""
    model, x, y = case["model"], case["x"], case["y"]
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    theirs = quantus.EfficientMPRT(
        complexity_func=function,
        complexity_func_kwargs=dict(kwargs),
        disable_warnings=True,
        return_aggregate=False,
    )(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
        explain_func=_quantus_gradient,
    )  # fmt: skip
    metric = ev.EfficientMPRT(
        "gradient",
        complexity_func=function,
        complexity_func_kwargs=kwargs,
        compute_extra_scores=True,
    )
    result = metric(model, x, y, torch.as_tensor(a))
    np.testing.assert_allclose(result.scores.numpy(), np.asarray(theirs), rtol=1e-9, atol=1e-12)
    default = ev.EfficientMPRT("gradient")(model, x, y, torch.as_tensor(a))
    assert not np.allclose(result.scores.numpy(), default.scores.numpy())
    # the complexities themselves: by hand on the clean explanations
    arguments = {**kwargs, "n_bins": kwargs.get("n_bins", 100)}
    clean = [function(a=a[i], x=None, **arguments) for i in range(len(a))]
    np.testing.assert_allclose(result.curves[:, 0].numpy(), clean, rtol=1e-12)
    assert kwargs == {} or kwargs["n_bins"] == 20  # the caller's dict is not consumed


def test_efficient_mprt_default_complexity_is_quantus_discrete_entropy(case) -> None:
    from quantus.functions.complexity_func import discrete_entropy

    model, x, y = case["model"], case["x"], case["y"]
    a = torch.as_tensor(_quantus_gradient(model, x.numpy(), y.numpy()))
    default = ev.EfficientMPRT("gradient", n_bins=30)(model, x, y, a)
    given = ev.EfficientMPRT("gradient", complexity_func=discrete_entropy, n_bins=30)(
        model, x, y, a
    )
    torch.testing.assert_close(given.scores, default.scores, rtol=1e-12, atol=1e-12)


def test_efficient_mprt_complexity_func_is_checked(case) -> None:
    model, x, y = case["model"], case["x"], case["y"]
    with pytest.raises(OptionError, match="complexity_func must be a function"):
        ev.EfficientMPRT("gradient", complexity_func="gini")
    with pytest.raises(OptionError, match="give n_bins once"):
        ev.EfficientMPRT("gradient", n_bins=10, complexity_func_kwargs={"n_bins": 20})
    with pytest.raises(OptionError, match="not both"):
        ev.EfficientMPRT("gradient", complexity_func_kwargs={"n_bins": 20, "rule": "Rice"})
    with pytest.raises(InputError, match="must return a number per explanation"):
        ev.EfficientMPRT("gradient", complexity_func=lambda a, x, **kw: a)(model, x, y)


def test_quantus_efficient_mprt_gives_its_complexity_funcs_no_input() -> None:
    """Quantus 0.6.0 calls ``complexity_func(a=..., x=None)`` on the randomised model's
    explanations, so its own ``gini_coeffiient`` (which reads ``x.shape``) fails there;
    innspect passes each sample's input, and the clean complexities are the function's."""
    from quantus.functions.complexity_func import gini_coeffiient

    model = small_cnn(channels=1)
    x, y = torch.rand(3, 1, 12, 12), torch.tensor([0, 1, 2])
    a = _quantus_gradient(model, x.numpy(), y.numpy())
    with pytest.raises(AttributeError, match="shape"):
        quantus.EfficientMPRT(
            complexity_func=gini_coeffiient, disable_warnings=True, return_aggregate=False
        )(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu",
            explain_func=_quantus_gradient,
        )  # fmt: skip
    result = ev.EfficientMPRT("gradient", complexity_func=gini_coeffiient)(
        model, x, y, torch.as_tensor(a)
    )
    clean = [gini_coeffiient(a=a[i], x=x[i].numpy()) for i in range(3)]
    np.testing.assert_allclose(result.curves[:, 0].numpy(), clean, rtol=1e-12)
    assert result.scores.isfinite().all()
