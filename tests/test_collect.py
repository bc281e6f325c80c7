"""The statistics pass (engine.collect), its reducers and the data streaming helper."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from innspect.engine import Statistics, collect
from innspect.engine.forward import run_forward
from innspect.engine.reducers import Count, Mean, MinMax, Moments, Sum
from innspect.errors import InputError
from innspect.graph.graph import ModelGraph
from innspect.util.batches import iter_batches, num_batches


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).double()


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


REDUCERS = {
    "mean": Mean(),
    "sum_space": Sum(dims=(0, 2, 3)),
    "moments": Moments(),
    "moments_space": Moments(dims=(0, 2, 3)),
    "class_mean": Mean(groups="y"),
    "class_moments": Moments(groups="y"),
    "min_max": MinMax(groups="prediction"),
    "count": Count(groups="y"),
}


def _assert_same(a: dict, b: dict, tol: float = 1e-12) -> None:
    for node in a:
        for name in a[node]:
            x, y = a[node][name], b[node][name]
            if isinstance(x, dict):
                for key in x:
                    np.testing.assert_allclose(x[key], y[key], rtol=tol, atol=tol)
            else:
                np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


def test_one_pass_equals_two_merged_halves_and_the_concatenated_statistic() -> None:
    model, (X, Y) = _cnn(), _data(40)
    nodes = ["0", "1"]
    full = collect(model, (X, Y), nodes=nodes, reducers=REDUCERS, batch_size=7)
    first = collect(model, (X[:17], Y[:17]), nodes=nodes, reducers=REDUCERS, batch_size=5)
    second = collect(model, (X[17:], Y[17:]), nodes=nodes, reducers=REDUCERS, batch_size=9)
    merged = first.merge(second)
    _assert_same(full.results(), merged.results())
    assert merged.batches == 4 + 3 and full.batches == 6

    # The statistics computed directly on the concatenated activations (NumPy, float64).
    act = model[1](model[0](X)).detach().numpy()
    labels = Y.numpy()
    pred = model(X).argmax(1).detach().numpy()
    res = full.results()["1"]
    np.testing.assert_allclose(res["mean"], act.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res["sum_space"], act.sum((0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(res["moments"]["var"], act.var(0), rtol=1e-12, atol=1e-14)
    per_channel = act.transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(res["moments_space"]["mean"], per_channel.mean(1), rtol=1e-12)
    np.testing.assert_allclose(res["moments_space"]["var"], per_channel.var(1), rtol=1e-12)
    assert res["moments_space"]["count"] == 40 * 25
    for c in range(3):
        np.testing.assert_allclose(res["class_mean"][c], act[labels == c].mean(0), rtol=1e-12)
        np.testing.assert_allclose(
            res["class_moments"]["var"][c], act[labels == c].var(0), rtol=1e-11, atol=1e-14
        )
        assert res["count"][c] == (labels == c).sum()
        if (pred == c).any():
            np.testing.assert_array_equal(res["min_max"]["max"][c], act[pred == c].max(0))
            np.testing.assert_array_equal(res["min_max"]["min"][c], act[pred == c].min(0))


def test_observed_values_survive_the_freeing_forward() -> None:
    """The pass frees what it does not observe and runs ReLUs in place where nothing else
    reads their input; an observed pre-ReLU value must keep its negative entries."""
    model, (X, _) = _cnn(), _data(12)
    pre_relu = model[0](X).detach()
    assert (pre_relu < 0).any()
    stats = collect(model, X, ["0"], Mean(), batch_size=12).results()["0"]["mean"]
    np.testing.assert_allclose(stats, pre_relu.mean(0).numpy(), rtol=1e-12, atol=1e-15)

    graph = ModelGraph(model, X[:1])
    observed = {graph.by_name["0"].node}
    record = run_forward(graph, X, keep=observed)
    kept = {n for n in record.values if isinstance(record.values[n], torch.Tensor)}
    assert kept == observed | set(graph.output_nodes) | set(graph.source_nodes)
    torch.testing.assert_close(record.values[graph.by_name["0"].node], pre_relu)


def test_save_load_round_trip_then_merge(tmp_path) -> None:
    model, (X, Y) = _cnn(), _data(30)
    nodes = ["0", "1"]
    first = collect(model, (X[:10], Y[:10]), nodes=nodes, reducers=REDUCERS, batch_size=4)
    first.save_npz(tmp_path / "first")  # the suffix is added
    loaded = Statistics.load_npz(tmp_path / "first.npz")
    _assert_same(first.results(), loaded.results(), tol=0)
    second = collect(model, (X[10:], Y[10:]), nodes=nodes, reducers=REDUCERS, batch_size=8)
    full = collect(model, (X, Y), nodes=nodes, reducers=REDUCERS, batch_size=30)
    _assert_same(full.results(), loaded.merge(second).results())


def test_gradient_observation_equals_autograd() -> None:
    model, (X, _) = _cnn(), _data(12)
    # the input is a node too: its mean is the data's mean
    data_mean = collect(model, X, ["input"], Mean(), batch_size=5).results()["input"]["mean"]
    np.testing.assert_allclose(data_mean, X.mean(0).numpy(), rtol=1e-12, atol=1e-15)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    stats = collect(
        model,
        X,
        nodes=["1"],
        reducers={"grad": Sum(of="grad"), "gxo": Sum(of="grad_x_output")},
        target=weights,
        gradients=True,
        batch_size=5,
    )
    hidden = model[1](model[0](X)).detach().requires_grad_(True)
    out = model[3](model[2](hidden))
    (grad,) = torch.autograd.grad((out * weights).sum(), hidden)
    result = stats.results()["1"]
    np.testing.assert_allclose(result["grad"], grad.sum(0).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        result["gxo"], (grad * hidden).sum(0).detach().numpy(), rtol=1e-12, atol=1e-14
    )
    # A callable target and an int target are the same scalar here.
    a = collect(model, X, ["1"], Sum(of="grad"), target=lambda y: y[:, 2], gradients=True)
    b = collect(model, X, ["1"], Sum(of="grad"), target=2, gradients=True)
    np.testing.assert_allclose(a.results()["1"]["sum"], b.results()["1"]["sum"], rtol=1e-14)


def test_every_data_form_gives_the_same_statistics(capsys) -> None:
    model, (X, Y) = _cnn(), _data(20)
    reducers = {"class_mean": Mean(groups="y")}
    reference = collect(model, (X, Y), ["3"], reducers, batch_size=6, verbose=True).results()
    assert "statistics: 100%" in capsys.readouterr().err  # the progress bar
    pairs = [(X[i : i + 6], Y[i : i + 6]) for i in range(0, 20, 6)]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=4)
    forms = [
        (X.numpy(), Y.numpy()),
        pairs,
        (p for p in pairs),
        [[x.numpy(), y.numpy(), "weights are ignored"] for x, y in pairs],
        loader,
    ]
    for form in forms:
        _assert_same(reference, collect(model, form, ["3"], reducers).results())
    assert num_batches(loader) == 5 and num_batches(X, 6) == 4 and num_batches(iter(pairs)) is None
    # numpy float32 data goes into a float64 model as analyze() accepts it
    batch = next(iter_batches(X.numpy().astype(np.float32), 4, dtype=torch.float64))
    assert batch.x.dtype == torch.float64 and batch.y is None


def test_memory_stays_flat_when_the_data_grows_tenfold() -> None:
    model = _cnn().float()
    # Counted with finalizers rather than a list of weak references, so the bookkeeping
    # itself does not grow with the stream.
    alive = 0
    max_alive = 0

    def freed() -> None:
        nonlocal alive
        alive -= 1

    def stream(n_batches: int):
        nonlocal alive, max_alive
        rng = np.random.default_rng(0)
        for _ in range(n_batches):
            x = rng.standard_normal((256, 2, 5, 5)).astype(np.float32)
            weakref.finalize(x, freed)
            alive += 1
            # Reference counting frees a dropped batch at once: no gc.collect() needed.
            max_alive = max(max_alive, alive)
            yield x

    def peak(n_batches: int) -> tuple[int, Statistics]:
        gc.collect()
        tracemalloc.start()
        stats = collect(model, stream(n_batches), None, {"m": Moments(), "c": Mean()})
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, stats

    peak(2)  # one-time costs (tracing, first calls) must not hide a growth
    small, stats_small = peak(10)
    large, stats_large = peak(100)
    batch_bytes = 256 * 2 * 5 * 5 * 4
    assert max_alive <= 2  # the stream's batches are dropped once reduced
    # Keeping the data would cost 90 batches (~4.6 MB) more. The batches are large because
    # torch's per-call bookkeeping grows the traced memory by ~200 B per batch until it
    # levels off at ~220 kB: with small batches that noise is the size of the signal.
    assert large - small < 10 * batch_bytes, (small, large)
    sizes = [
        sum(v.nbytes for r in rs.values() for v in r.state().values())
        for s in (stats_small, stats_large)
        for rs in s.values()
    ]
    assert sizes[: len(sizes) // 2] == sizes[len(sizes) // 2 :]


def test_clear_errors() -> None:
    model, (X, _) = _cnn(), _data(8)
    with pytest.raises(InputError, match=r"unknown node name\(s\) \['nope'\].*input, 0, 1, 2, 3"):
        collect(model, X, ["nope"], Mean())
    with pytest.raises(InputError, match="empty"):
        collect(model, iter([]), ["1"], Mean())
    bad = X.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="batch 1 .* 1 NaN"):
        collect(model, bad, ["1"], Mean(), batch_size=2)
    with pytest.raises(InputError, match="needs labels"):
        collect(model, X, ["1"], Mean(groups="y"))
    with pytest.raises(InputError, match="gradients=True"):
        collect(model, X, ["1"], Sum(of="grad"))
    with pytest.raises(InputError, match="cannot merge"):
        Mean().merge(Moments())
    with pytest.raises(InputError, match="reducers"):
        collect(model, X, ["1"])
    with pytest.raises(InputError, match="as many labels as samples"):
        collect(model, (X, torch.zeros(3)), ["1"], Mean())
    with pytest.raises(InputError, match="stream data of type dict"):
        collect(model, {"x": X}, ["1"], Mean())


def test_runs_in_eval_mode_and_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 2)).double()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X = torch.randn(16, 5, dtype=torch.float64)
    stats = collect(model, X, ["2"], Mean(), batch_size=5)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    expected = torch.relu(model[0](X)).mean(0).detach().numpy()  # no dropout: eval mode
    np.testing.assert_allclose(stats.results()["2"]["mean"], expected, rtol=1e-12)
