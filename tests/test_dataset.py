"""explain_dataset on the local backend: shards, index, resume, refusals, data sources."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from innspect.analyzers.registry import create_analyzer
from innspect.demo.model import digits_cnn
from innspect.distributed.dataset import ShardRunner, explain_dataset
from innspect.distributed.shards import INDEX_NAME, read_shards
from innspect.errors import InputError, OptionError

METHODS = ["gradient", "lrp.epsilon"]
N, SHARD, BATCH = 50, 16, 8  # shards 16, 16, 16, 2: the last one is uneven


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return digits_cnn().eval()


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, 1, 32, 32)).astype(np.float32)


def _run(model, data, out, **kwargs):
    kwargs.setdefault("methods", METHODS)
    return explain_dataset(
        model, data, out=out, shard_size=SHARD, batch_size=BATCH, verbose=False, **kwargs
    )


def _index(out):
    return json.loads((out / INDEX_NAME).read_text())


def test_shards_hold_every_sample_as_the_analyzer_explains_it(model, data, tmp_path):
    _run(model, data, tmp_path)
    index = _index(tmp_path)
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [
        (0, 16),
        (16, 32),
        (32, 48),
        (48, 50),
    ]
    result = read_shards(tmp_path)
    for method in METHODS:
        analyzer = create_analyzer(method, model)
        for first in range(0, N, BATCH):  # batches restart at every shard (16 = 2 x 8)
            batch = torch.as_tensor(data[first : first + BATCH])
            explanation = analyzer.explain(batch)
            got = result[f"{method}/attribution"][first : first + BATCH]
            assert np.array_equal(got, explanation.attribution.numpy())
            assert np.array_equal(
                result[f"{method}/selected"][first : first + BATCH], explanation.selected.numpy()
            )
            assert np.allclose(
                result[f"{method}/scores"][first : first + BATCH], explanation.scores.numpy()
            )


def test_resume_skips_finished_shards_and_redoes_missing_or_corrupted(
    model, data, tmp_path, monkeypatch
):
    undisturbed = tmp_path / "a"
    _run(model, data, undisturbed)
    # An interrupted run: the third shard's computation fails.
    interrupted = tmp_path / "b"
    real = ShardRunner.compute
    calls = []

    def failing(self, start, stop):
        calls.append(start)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, start, stop)

    monkeypatch.setattr(ShardRunner, "compute", failing)
    with pytest.raises(KeyboardInterrupt):
        _run(model, data, interrupted)
    finished = [s["sha256"] is not None for s in _index(interrupted)["shards"]]
    assert finished == [True, True, False, False]
    assert not list(interrupted.glob(".*.tmp")), "no half-written file is left behind"
    calls.clear()
    _run(model, data, interrupted)
    assert calls == [32, 48], "a resumed run computes only the unfinished shards"
    assert _index(interrupted)["shards"] == _index(undisturbed)["shards"]
    # A missing and a corrupted shard are computed again, to the same bytes.
    (interrupted / "shard-00000.h5").unlink()
    with open(interrupted / "shard-00002.h5", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00garbage")
    calls.clear()
    with pytest.warns(UserWarning, match="checksum"):
        _run(model, data, interrupted)
    assert calls == [0, 32]
    assert _index(interrupted)["shards"] == _index(undisturbed)["shards"]


def test_a_folder_of_another_run_is_refused(model, data, tmp_path):
    _run(model, data, tmp_path)
    with pytest.raises(InputError, match="methods"):
        _run(model, data, tmp_path, methods=["gradient"])
    with pytest.raises(InputError, match="options"):
        _run(model, data, tmp_path, epsilon=0.5)
    other = digits_cnn().eval()
    with pytest.raises(InputError, match="model"):
        _run(other, data, tmp_path)
    with pytest.raises(InputError, match="samples"):
        _run(model, data[:40], tmp_path)


def test_data_sources_give_the_same_shards(model, data, tmp_path):
    _run(model, data, tmp_path / "array", methods=["gradient"])
    expected = _index(tmp_path / "array")["shards"]
    np.save(tmp_path / "x.npy", data)
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle["x"] = data

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return N

        def __getitem__(self, i):
            return torch.as_tensor(data[i])

    for name, source in [
        ("npy", tmp_path / "x.npy"),
        ("h5", tmp_path / "x.h5"),
        ("dataset", Samples()),
    ]:
        _run(model, source, tmp_path / name, methods=["gradient"])
        assert _index(tmp_path / name)["shards"] == expected, name


def test_image_folder_uses_the_cli_preprocessing(model, tmp_path):
    from PIL import Image

    from innspect.loading.inputs import load_input

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    _run(model, folder, tmp_path / "out", methods=["gradient"])
    x = torch.stack([load_input(folder / f"{i}.png", "none").tensor for i in range(5)])
    expected = create_analyzer("gradient", model).analyze(x).numpy()
    assert np.array_equal(read_shards(tmp_path / "out")["gradient/attribution"], expected)


def test_bad_arguments_are_refused_clearly(model, data, tmp_path):
    with pytest.raises(InputError, match="backend"):
        _run(model, data, tmp_path, backend="spark")
    with pytest.raises(InputError, match="spec"):
        _run(model, data, tmp_path, backend="ray")
    with pytest.raises(OptionError, match="not an option"):
        _run(model, data, tmp_path, epsilonn=0.5)
    with pytest.raises(InputError, match="not found"):
        _run(model, tmp_path / "missing.npy", tmp_path)


def test_cli_backend_local_writes_the_same_shards_as_the_api(model, data, tmp_path):
    from innspect.cli import main

    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    np.save(tmp_path / "x.npy", data)
    spec = "innspect.demo.model:digits_cnn"
    explain_dataset(
        spec, data, METHODS, tmp_path / "api", weights=str(weights), shard_size=SHARD,
        batch_size=BATCH, verbose=False,
    )  # fmt: skip
    argv = ["analyze", "--model", spec, "--weights", str(weights), "--input"]
    argv += [str(tmp_path / "x.npy"), "--method", *METHODS, "--backend", "local"]
    argv += ["--shard-size", str(SHARD), "--batch-size", str(BATCH), "--out", str(tmp_path / "c")]
    assert main(argv) == 0
    assert _index(tmp_path / "c")["shards"] == _index(tmp_path / "api")["shards"]


def test_cli_ray_flags_without_ray_name_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    from innspect.cli import main

    base = ["analyze", "--model", "innspect.demo.model:digits_cnn", "--input", str(tmp_path)]
    base += ["--method", "gradient", "--out", str(tmp_path / "o")]
    assert main([*base, "--workers", "2"]) == 2
    assert "--backend ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main([*base, "--backend", "ray"]) == 2
    assert "innspect[ray]" in capsys.readouterr().err
    patterns = ["patterns", "compute", "--model", "innspect.demo.model:digits_cnn"]
    patterns += ["--data", str(tmp_path), "--out", str(tmp_path / "p.npz"), "--backend", "ray"]
    assert main(patterns) == 2
    assert "innspect[ray]" in capsys.readouterr().err
    introspect = ["introspect", "--model", "innspect.demo.model:digits_cnn", "--data"]
    introspect += [str(tmp_path), "--backend", "ray"]
    assert main(introspect) == 2
    assert "innspect[ray]" in capsys.readouterr().err


def test_layer_wise_relevances_are_kept_on_request(model, data, tmp_path):
    _run(model, data[:20], tmp_path, methods=["lrp.epsilon"], relevances=["9", "3"])
    result = read_shards(tmp_path)
    analyzer = create_analyzer("lrp.epsilon", model, reverse_keep_tensors=True)
    for first, stop in [(0, 8), (8, 16), (16, 20)]:  # batches restart with each shard
        explanation = analyzer.explain(torch.as_tensor(data[first:stop]))
        for node in ("9", "3"):
            got = result[f"lrp.epsilon/relevances/{node}"][first:stop]
            assert np.array_equal(got, explanation.relevances[node].detach().numpy())
    assert _index(tmp_path)["header"]["relevances"] == ["9", "3"]
    with pytest.raises(InputError, match="no layer-wise relevance at node 'nope'"):
        _run(model, data[:4], tmp_path / "b", methods=["lrp.epsilon"], relevances=["nope"])
    with pytest.raises(InputError, match="integrated_gradients has no layer-wise"):
        _run(model, data[:4], tmp_path / "c", methods=["integrated_gradients"], relevances=["9"])
