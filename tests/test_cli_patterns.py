"""`innspect patterns compute` (resumable) and `innspect analyze --patterns`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import innspect
from innspect.cli import main
from innspect.cli import patterns as cli_patterns
from innspect.patterns.computer import PatternComputer, load_patterns
from tests.cli_models import small_cnn

FACTORY = "tests.cli_models:small_cnn"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module, np.ndarray]:
    torch.manual_seed(3)
    model = small_cnn().eval()
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    data = np.random.default_rng(0).random((23, 1, 12, 12)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    return weights, tmp_path / "data.npy", model, data


def _compute(weights: Path, data: Path, out: Path, *extra: str) -> int:
    return main(
        ["patterns", "compute", "--model", FACTORY, "--weights", str(weights), "--data",
         str(data), "--out", str(out), "--batch-size", "5", *extra]
    )  # fmt: skip


def test_compute_then_analyze_with_the_file(setup, tmp_path, capsys) -> None:
    weights, data_file, model, data = setup
    out = tmp_path / "patterns.npz"
    assert _compute(weights, data_file, out) == 0
    expected = PatternComputer(model, "relu").compute(data, batch_size=5)
    stored = load_patterns(out)
    assert set(stored) == set(expected)
    for name in expected:
        np.testing.assert_allclose(stored[name], expected[name], rtol=1e-6, atol=1e-7)
    assert "patterns of 2 layers from 23 samples" in capsys.readouterr().out

    sample = tmp_path / "sample.npy"
    np.save(sample, data[0])
    status = main(
        ["analyze", "--model", FACTORY, "--weights", str(weights), "--input", str(sample),
         "--method", "pattern.attribution", "--patterns", str(out), "--out", str(tmp_path / "a")]
    )  # fmt: skip
    assert status == 0
    result = np.load(tmp_path / "a" / "sample_pattern.attribution.npy")
    direct = innspect.create_analyzer("pattern.attribution", model, patterns=out)
    np.testing.assert_allclose(result, direct.analyze(data[:1])[0], rtol=1e-6, atol=1e-7)

    # a folder of one-sample files gives the same statistics
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, x in enumerate(data):
        np.save(folder / f"{i:03d}.npy", x)
    assert _compute(weights, folder, tmp_path / "from_folder.npz") == 0
    for name, value in load_patterns(tmp_path / "from_folder.npz").items():
        np.testing.assert_allclose(value, stored[name], rtol=1e-6, atol=1e-7)


def test_an_interrupted_run_resumes_where_it_stopped(setup, tmp_path, monkeypatch, capsys):
    weights, data_file, model, data = setup
    out = tmp_path / "patterns.npz"
    original = cli_patterns._DataSource.batches

    def interrupted(self, start, batch_size):
        for k, batch in enumerate(original(self, start, batch_size)):
            if k == 3:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(cli_patterns._DataSource, "batches", interrupted)
    assert _compute(weights, data_file, out, "--save-every", "2") == 130
    partial = PatternComputer.load_npz(out, model)
    assert partial.statistics.batches == 2  # the checkpoint after batch 2 survived
    with pytest.raises(innspect.InputError, match="unfinished run"):
        innspect.create_analyzer("pattern.net", model, patterns=out)
    monkeypatch.setattr(cli_patterns._DataSource, "batches", original)
    assert _compute(weights, data_file, out, "--save-every", "2") == 0
    assert "resuming" in capsys.readouterr().out
    expected = PatternComputer(model, "relu").compute(data, batch_size=5)
    for name, value in load_patterns(out).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7)
    # another pattern type with the same output file is refused, naming the difference
    assert _compute(weights, data_file, out, "--pattern-type", "linear") == 2
    assert "pattern_type: 'relu' there, 'linear' now" in capsys.readouterr().err


def test_bad_data_is_one_line_with_status_2(setup, tmp_path, capsys) -> None:
    weights, _, _, _ = setup
    assert _compute(weights, tmp_path / "missing", tmp_path / "p.npz") == 2
    assert "data not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _compute(weights, tmp_path / "empty", tmp_path / "p.npz") == 2
    assert "holds no .png, .jpg, .jpeg, .npy files" in capsys.readouterr().err
    nan = np.zeros((4, 1, 12, 12), dtype=np.float32)
    nan[2, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert _compute(weights, tmp_path / "nan.npy", tmp_path / "p.npz") == 2
    assert "NaN" in capsys.readouterr().err


def test_methods_plan_shows_the_pattern_layers(capsys) -> None:
    assert main(["methods", "--plan", "pattern.attribution", "--model", FACTORY]) == 0
    out = capsys.readouterr().out
    assert "PatternAttribution.pattern('0')" in out and "PatternAttribution.pattern('4')" in out
    assert main(["methods", "--plan", "pattern.net"]) == 2
    assert "--plan needs --model" in capsys.readouterr().err


def test_a_resume_with_another_model_is_refused_and_random_weights_are_seeded(
    setup, tmp_path, capsys
) -> None:
    weights, data_file, model, _ = setup
    out = tmp_path / "patterns.npz"
    assert _compute(weights, data_file, out) == 0
    other = tmp_path / "other.pt"
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, other)
    capsys.readouterr()
    # "30 of 30 batches already done" and exit 0 before: the file belongs to other weights.
    assert _compute(other, data_file, out) == 2
    assert "model_fingerprint" in capsys.readouterr().err

    def random_run(out_file: Path, seed: str) -> int:
        return main(
            ["patterns", "compute", "--model", FACTORY, "--data", str(data_file),
             "--out", str(out_file), "--batch-size", "5", "--seed", seed]
        )  # fmt: skip

    assert random_run(tmp_path / "r.npz", "1") == 0
    assert "random weights (seed 1)" in capsys.readouterr().err
    assert random_run(tmp_path / "r.npz", "1") == 0  # the same random model: resumable
    assert random_run(tmp_path / "r.npz", "2") == 2  # another one: refused
    assert "model_fingerprint" in capsys.readouterr().err
