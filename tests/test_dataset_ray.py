"""explain_dataset on Ray: the same bytes as the local backend, a killed worker loses nothing.

One local Ray instance with 2 CPUs for the whole module (starting one costs seconds).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from innspect.demo.model import digits_cnn
from innspect.distributed import ray_backend
from innspect.distributed.dataset import explain_dataset
from innspect.distributed.shards import INDEX_NAME, read_shards
from innspect.errors import InputError
from innspect.evaluation.dataset import evaluate_dataset

ray = pytest.importorskip("ray") if os.environ.get("CI", "").lower() != "true" else None
if ray is None:
    import ray  # in CI the test extra installs ray: its absence must fail, not skip

SPEC = "innspect.demo.model:digits_cnn"
METHODS = ["gradient", "lrp.epsilon", "integrated_gradients"]
N, SHARD, BATCH = 200, 48, 16  # shards of 48 and a last one of 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("model") / "digits.pt"
    torch.save(digits_cnn().state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, 1, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def local(weights, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return _run(weights, data, out, backend="local")


def _run(weights, data, out, **kwargs):
    explain_dataset(
        SPEC,
        data,
        METHODS,
        out,
        weights=weights,
        shard_size=SHARD,
        batch_size=BATCH,
        verbose=False,
        steps=8,
        **kwargs,
    )
    return json.loads((out / INDEX_NAME).read_text())


def test_two_ray_workers_write_the_same_bytes_as_the_local_backend(
    cluster, weights, data, local, tmp_path
):
    index = _run(weights, data, tmp_path, backend="ray", num_workers=2)
    assert [s["stop"] - s["start"] for s in index["shards"]] == [48, 48, 48, 48, 8]
    assert index["shards"] == local["shards"]  # same checksums: same bytes, shard by shard
    result = read_shards(tmp_path)
    for method in METHODS:
        assert result[f"{method}/attribution"].shape == (N, 1, 32, 32)
        assert np.isfinite(result[f"{method}/attribution"]).all()


def test_a_killed_worker_loses_no_sample(cluster, weights, data, local, tmp_path, monkeypatch):
    killed = []

    def kill_first(actors):
        if not killed:
            ray.kill(actors[0], no_restart=True)
            killed.append(actors[0])

    monkeypatch.setattr(ray_backend, "_AFTER_TASK", kill_first)
    index = _run(weights, data, tmp_path, backend="ray", num_workers=2)
    assert killed
    assert index["shards"] == local["shards"]


def test_a_run_interrupted_on_ray_resumes_to_the_same_output(
    cluster, weights, data, local, tmp_path, monkeypatch
):
    def stop_after_two(actors, done=[]):  # noqa: B006 - a counter across calls
        done.append(1)
        if len(done) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ray_backend, "_AFTER_TASK", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        _run(weights, data, tmp_path, backend="ray", num_workers=2)
    partial = json.loads((tmp_path / INDEX_NAME).read_text())
    assert sum(s["sha256"] is not None for s in partial["shards"]) == 2
    monkeypatch.setattr(ray_backend, "_AFTER_TASK", None)
    assert _run(weights, data, tmp_path, backend="ray", num_workers=2)["shards"] == local["shards"]


def test_without_ray_the_error_names_the_extra(monkeypatch):
    from innspect.distributed.ray_backend import connect

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"innspect\[ray\]"):
        connect(None, 1)


@pytest.fixture(scope="module")
def model(weights) -> torch.nn.Module:
    module = digits_cnn()
    module.load_state_dict(torch.load(weights, weights_only=True))
    return module.eval()


def test_patterns_from_ray_equal_the_local_ones(cluster, weights, model, data):
    from innspect.loading.models import ModelSpec
    from innspect.patterns.computer import PatternComputer

    x = data[:100]
    local = PatternComputer(model, "relu").compute(x, batch_size=16)
    spec = ModelSpec(SPEC, weights)
    remote = PatternComputer(model, "relu").compute(
        x, batch_size=16, backend="ray", model_spec=spec, num_workers=2
    )
    assert set(remote) == set(local) and len(local) == 5
    for name in local:
        np.testing.assert_allclose(remote[name], local[name], rtol=1e-12, atol=1e-12)
    with pytest.raises(InputError, match="weights differ"):
        PatternComputer(digits_cnn(), "relu").compute(x, backend="ray", model_spec=spec)


def test_naps_from_ray_equal_the_local_ones(cluster, weights, model, data):
    from innspect.introspect.collect import collect
    from innspect.loading.models import ModelSpec

    x = data[:100]
    groups = np.array(["odd", "even", "zero"])[np.arange(100) % 3]
    local = collect(model, x, groups=groups, batch_size=16)
    spec = ModelSpec(SPEC, weights)
    remote = collect(
        model, (x, groups), batch_size=16, backend="ray", model_spec=spec, num_workers=2
    )
    assert remote.groups == local.groups == ["even", "odd", "zero"]
    assert np.array_equal(remote.group_sizes, local.group_sizes)
    assert set(remote.layers) == set(local.layers) and local.gradients
    for layer in local.layers:
        np.testing.assert_allclose(
            remote.layers[layer], local.layers[layer], rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(
            remote.gradients[layer], local.gradients[layer], rtol=1e-12, atol=1e-12
        )


def test_cli_analyze_on_ray_writes_the_local_shards(cluster, weights, data, local, tmp_path):
    from innspect.cli import main

    np.save(tmp_path / "x.npy", data)
    argv = ["analyze", "--model", SPEC, "--weights", weights, "--input", str(tmp_path / "x.npy")]
    argv += ["--method", *METHODS, "--option", "steps=8", "--backend", "ray", "--workers", "2"]
    argv += ["--shard-size", str(SHARD), "--batch-size", str(BATCH), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "o" / INDEX_NAME).read_text())["shards"] == local["shards"]


def test_naps_of_a_corpus_from_ray_equal_the_local_ones(cluster, weights, model, tmp_path):
    from innspect.introspect.collect import collect
    from innspect.loading.models import ModelSpec

    rng = np.random.default_rng(2)
    rows = []
    for k, group in enumerate(["b", "a", "c", "a", "b", "c", "a"]):
        np.save(tmp_path / f"{k}.npy", rng.normal(size=(3 + k, 1, 32, 32)).astype("f4"))
        rows.append(f"{k}.npy,{group},{k % 10}")  # each row names the output to explain
    (tmp_path / "corpus.csv").write_text("\n".join(rows) + "\n")
    local = collect(model, tmp_path, batch_size=16)
    spec = ModelSpec(SPEC, weights)
    remote = collect(model, tmp_path, batch_size=16, backend="ray", model_spec=spec, num_workers=2)
    assert remote.groups == local.groups == ["a", "b", "c"]
    assert np.array_equal(remote.group_sizes, local.group_sizes)
    for layer in local.layers:
        np.testing.assert_allclose(
            remote.layers[layer], local.layers[layer], rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(
            remote.gradients[layer], local.gradients[layer], rtol=1e-12, atol=1e-12
        )


def broken_on_workers() -> torch.nn.Module:
    """A factory that works in the driver and fails in every Ray actor."""
    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        raise RuntimeError("this worker has no such device")
    return digits_cnn()


def test_a_worker_that_cannot_build_the_model_fails_the_run_clearly(
    cluster, weights, data, tmp_path
):
    with pytest.raises(InputError, match="could not build the model.*no such device"):
        explain_dataset(
            "tests.test_dataset_ray:broken_on_workers", data[:8], "gradient", tmp_path,
            weights=weights, backend="ray", num_workers=1, verbose=False,
        )  # fmt: skip


def test_more_workers_than_the_cluster_has_cpus_are_refused(cluster, weights, data, tmp_path):
    with pytest.raises(InputError, match="3 workers need 3 CPUs; the Ray cluster has 2"):
        explain_dataset(
            SPEC, data[:8], "gradient", tmp_path, weights=weights, backend="ray", num_workers=3,
            verbose=False,
        )  # fmt: skip


def test_gpu_workers_on_a_cluster_without_gpus_are_refused(cluster, weights, data, tmp_path):
    # The test cluster has no GPU (ray.init(num_cpus=2) on a CPU machine; CI has none).
    with pytest.raises(InputError, match="gpus_per_worker=1 but the Ray cluster has 0 GPUs"):
        explain_dataset(
            SPEC, data[:8], "gradient", tmp_path, weights=weights, backend="ray", num_workers=1,
            gpus_per_worker=1, verbose=False,
        )  # fmt: skip


def test_gpus_per_worker_goes_with_the_ray_backend(weights, data, tmp_path, capsys):
    from innspect.cli import main

    with pytest.raises(InputError, match="gpus_per_worker goes with backend='ray'"):
        explain_dataset(SPEC, data[:8], "gradient", tmp_path, weights=weights, gpus_per_worker=1)
    status = main(
        ["analyze", "--model", SPEC, "--weights", weights, "--input", str(tmp_path / "x.npy"),
         "--method", "gradient", "--gpus-per-worker", "1", "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert status == 2
    assert "--gpus-per-worker go with --backend ray" in capsys.readouterr().err


def test_ray_workers_load_a_keras_file_themselves(cluster, tmp_path):
    """``keras:FILE`` on Ray: each worker reads the tf.keras ``.h5`` with h5py alone and
    writes the same bytes as the local backend (inputs in Keras's layout)."""
    from tests.test_keras_references import _folder

    spec = f"keras:{_folder() / 'cnn_seq.h5'}"
    x = np.random.default_rng(1).normal(size=(20, 16, 16, 3)).astype(np.float32)
    options = {"shard_size": 8, "batch_size": 4, "verbose": False}
    explain_dataset(spec, x, ["gradient", "lrp.epsilon"], tmp_path / "local", **options)
    explain_dataset(
        spec, x, ["gradient", "lrp.epsilon"], tmp_path / "ray", backend="ray", num_workers=2,
        **options,
    )  # fmt: skip
    local = json.loads((tmp_path / "local" / INDEX_NAME).read_text())
    remote = json.loads((tmp_path / "ray" / INDEX_NAME).read_text())
    assert remote["shards"] == local["shards"]  # same checksums: same bytes
    assert read_shards(tmp_path / "ray")["gradient/attribution"].shape == x.shape


def test_evaluation_on_ray_writes_the_local_shards(cluster, weights, data, tmp_path):
    """evaluate_dataset's shards (per-sample scores, a stochastic metric included, and their
    summaries) have the same bytes from two Ray workers as from the local backend."""
    settings = {
        "weights": weights,
        "batch_size": 8,
        "shard_size": 16,
        "verbose": False,
        "metric_options": {"max_sensitivity": {"nr_samples": 2}},
    }
    few = data[:40]
    metrics = ["sparseness", "max_sensitivity"]
    local = evaluate_dataset(SPEC, few, ["gradient"], metrics, tmp_path / "local", **settings)
    remote = evaluate_dataset(
        SPEC, few, ["gradient"], metrics, tmp_path / "ray", backend="ray", num_workers=2,
        **settings,
    )  # fmt: skip
    shards = [json.loads((d / INDEX_NAME).read_text())["shards"] for d in (local.out, remote.out)]
    assert len(shards[0]) == 3 and shards[0] == shards[1]  # same checksums
    assert remote.summaries == local.summaries


def test_evaluation_with_masks_on_ray_writes_the_local_shards(cluster, weights, data, tmp_path):
    """Localisation metrics over a data set on Ray: masks given as an array locally and as a
    function of the sample index (pickled to the workers) give the same shard bytes."""
    few = data[:24]
    masks = np.zeros((24, 1, 32, 32), dtype=bool)
    for i in range(24):
        masks[i, 0, i : i + 6, 2 * (i % 12) : 2 * (i % 12) + 8] = True
    settings = {"weights": weights, "batch_size": 8, "shard_size": 8, "verbose": False}
    metrics = ["pointing_game", "relevance_mass_accuracy"]
    local = evaluate_dataset(
        SPEC, few, ["gradient"], metrics, tmp_path / "local", masks=masks, **settings
    )
    remote = evaluate_dataset(
        SPEC, few, ["gradient"], metrics, tmp_path / "ray", backend="ray", num_workers=2,
        masks=lambda i: masks[i, 0], **settings,
    )  # fmt: skip
    shards = [json.loads((d / INDEX_NAME).read_text())["shards"] for d in (local.out, remote.out)]
    assert len(shards[0]) == 3 and shards[0] == shards[1]  # same checksums
    assert remote.summaries == local.summaries
