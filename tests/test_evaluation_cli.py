"""``innspect evaluate``: methods x metrics on input files, results.csv and results.json,
bad input as one line with exit status 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from innspect.cli.main import main
from tests.cli_models import small_cnn


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    torch.save(small_cnn().state_dict(), tmp_path / "weights.pth")
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(4):
        image = np.random.default_rng(i).random((1, 12, 12)).astype(np.float32)
        np.save(folder / f"in{i}.npy", image)
    return tmp_path


def test_evaluate_writes_a_methods_by_metrics_table(files, capsys) -> None:
    out = files / "out"
    argv = ["evaluate", "--model", "tests.cli_models:small_cnn", "--weights"]
    argv += [str(files / "weights.pth"), "--input", str(files / "inputs"), "--out", str(out)]
    argv += ["--method", "gradient", "random", "--metric", "pixel_flipping", "sparseness"]
    argv += ["max_sensitivity", "--option", "features_in_step=16", "--option", "nr_samples=3"]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["metric"]) for r in rows[:2]] == [
        ("gradient", "pixel_flipping"),
        ("random", "pixel_flipping"),
    ]
    assert all(int(r["n"]) == 4 for r in rows) and len(rows) == 6
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["gradient", "random"] and len(results["targets"]) == 4
    assert len(results["scores"]["gradient"]["max_sensitivity"]) == 4
    assert "pixel_flipping" in capsys.readouterr().out
    # the same command repeats exactly (seeded methods and metrics)
    first = (out / "results.json").read_text()
    assert main(argv) == 0
    assert (out / "results.json").read_text() == first


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--metric", "pixel_fliping"], "did you mean 'pixel_flipping'"),
        (["--metric", "sparseness", "--option", "bogus=1"], "none of the metrics"),
        (["--metric", "sparseness", "--method", "gradient_x"], "unknown method"),
    ],
)
def test_evaluate_bad_input_is_one_line_with_status_2(files, capsys, extra, fragment) -> None:
    argv = ["evaluate", "--model", "tests.cli_models:small_cnn", "--input", str(files / "inputs")]
    argv += ["--out", str(files / "out")]
    if "--method" not in extra:
        argv += ["--method", "gradient"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("innspect: error: ")]
    assert len(errors) == 1 and fragment in errors[0]
