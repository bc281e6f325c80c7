"""``evaluate_dataset``: shards of per-sample scores whose merged summaries equal the scores
of the whole set, resumable, independent of how the set is cut (the Ray backend:
tests/test_dataset_ray.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from innspect.demo.model import digits_cnn
from innspect.errors import InputError, OptionError
from innspect.evaluation import ScoreSummary, evaluate, evaluate_dataset
from innspect.evaluation.table import mean_interval

N = 20
METHODS = ["gradient", "lrp.epsilon"]
METRICS = ["pixel_flipping", "sparseness", "max_sensitivity"]
OPTIONS = {
    "pixel_flipping": {"features_in_step": 128},
    "max_sensitivity": {"nr_samples": 3},
}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return digits_cnn().eval()


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, 1, 32, 32)).astype(np.float32)


def _run(model, data, out, **settings):
    settings = {"batch_size": 4, "shard_size": 8, "verbose": False, **settings}
    return evaluate_dataset(model, data, METHODS, METRICS, out, metric_options=OPTIONS, **settings)


@pytest.fixture(scope="module")
def first(model, data, tmp_path_factory):
    return _run(model, data, tmp_path_factory.mktemp("evaluation"))


def test_summaries_equal_the_scores_of_the_whole_set(model, data, first) -> None:
    # The deterministic metrics on all samples at once give the shards' per-sample scores.
    whole = evaluate(model, data, METHODS, METRICS[:2], metric_options=OPTIONS)
    for method in METHODS:
        for metric in METRICS:
            scores = first.scores(method, metric)
            assert scores.shape == (N,) and np.isfinite(scores).all()
            if metric in METRICS[:2]:
                np.testing.assert_allclose(scores, whole.scores(method, metric).numpy(), 1e-10)
            mean, low, high, n = mean_interval(torch.from_numpy(scores))
            summary = first.summaries[method][metric]
            assert summary.n == n == N
            assert summary.mean == pytest.approx(mean, rel=1e-12)
            assert summary.interval() == pytest.approx((low, high), rel=1e-12)
    rows = json.loads((first.out / "results.json").read_text())["rows"]
    assert len(rows) == len(METHODS) * len(METRICS)
    assert {r["higher_is_better"] for r in rows if r["metric"] == "sparseness"} == {True}


def test_another_cut_of_the_set_gives_the_same_scores(model, data, first, tmp_path) -> None:
    """Stochastic metrics are seeded per batch by its first sample: shards of 4 instead of
    8 (same batches) give the same bytes of scores, and the same merged summaries."""
    again = _run(model, data, tmp_path, shard_size=4)
    for method in METHODS:
        for metric in METRICS:
            np.testing.assert_array_equal(
                first.scores(method, metric), again.scores(method, metric)
            )
            ours, theirs = first.summaries[method][metric], again.summaries[method][metric]
            assert ours.n == theirs.n
            assert ours.mean == pytest.approx(theirs.mean, rel=1e-13)
            assert ours.m2 == pytest.approx(theirs.m2, rel=1e-12)


def test_a_lost_shard_is_computed_again_and_nothing_else(model, data, first, tmp_path) -> None:
    out = tmp_path / "run"
    _run(model, data, out)
    (out / "shard-00001.h5").unlink()
    calls = []
    original = evaluate_dataset.__globals__["EvaluationRunner"].compute

    def counting(self, start, stop):
        calls.append((start, stop))
        return original(self, start, stop)

    runner_class = evaluate_dataset.__globals__["EvaluationRunner"]
    runner_class.compute = counting
    try:
        resumed = _run(model, data, out)
    finally:
        runner_class.compute = original
    assert calls == [(8, 16)]
    for method in METHODS:
        np.testing.assert_array_equal(
            resumed.scores(method, "max_sensitivity"), first.scores(method, "max_sensitivity")
        )
    with pytest.raises(InputError, match="another run"):
        evaluate_dataset(
            model, data, METHODS, ["sparseness"], out, batch_size=4, shard_size=8, verbose=False
        )


def test_merging_summaries_is_exact_in_any_grouping() -> None:
    rng = np.random.default_rng(5)
    scores = rng.normal(3.0, 2.0, 101)
    scores[[4, 50]] = np.nan  # undefined scores are left out
    direct = ScoreSummary.of(scores)
    for cuts in ([10, 11, 60], [1], [0, 0, 100], list(range(0, 101, 7))):
        parts = [ScoreSummary.of(p) for p in np.split(scores, cuts)]
        merged = ScoreSummary.merged(parts[::-1])  # order does not matter either
        assert merged.n == direct.n == 99
        assert merged.mean == pytest.approx(direct.mean, rel=1e-13)
        assert merged.m2 == pytest.approx(direct.m2, rel=1e-12)
    finite = scores[np.isfinite(scores)]
    assert direct.m2 == pytest.approx(((finite - finite.mean()) ** 2).sum(), rel=1e-12)


def test_bad_requests_are_clear(model, data, tmp_path) -> None:
    with pytest.raises(InputError, match="needs a mask per sample: give evaluate_dataset masks="):
        evaluate_dataset(model, data, METHODS, ["pointing_game"], tmp_path, verbose=False)
    with pytest.raises(InputError, match="no labels"):
        evaluate_dataset(
            model, data, METHODS, ["sparseness"], tmp_path / "l", target="label", verbose=False
        )
    with pytest.raises(InputError, match="backend='ray' builds the model"):
        evaluate_dataset(model, data, METHODS, ["sparseness"], tmp_path, backend="ray")
    with pytest.raises(OptionError, match="did you mean"):
        evaluate_dataset(model, data, METHODS, ["sparsenes"], tmp_path / "s", verbose=False)
