"""``innspect evaluate``: methods x metrics on input files, results.csv and results.json,
bad input as one line with exit status 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

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


def _argv(files, out, *extra):
    argv = ["evaluate", "--model", "tests.cli_models:small_cnn", "--weights"]
    argv += [str(files / "weights.pth"), "--input", str(files / "inputs"), "--out", str(out)]
    return argv + list(extra)


def test_evaluate_draws_a_figure_per_family_and_the_report(files) -> None:
    out = files / "out"
    argv = _argv(files, out, "--method", "gradient", "random", "--metric", "pixel_flipping")
    argv += ["sparseness", "mprt", "--option", "features_in_step=16", "--report"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    figures = ["curves_faithfulness.png", "curves_randomisation.png", "ranks.png"]
    assert results["figures"] == figures
    for name in figures:
        with Image.open(out / name) as image:
            image.load()
            assert image.size[0] > 300 and image.size[1] > 100
    page = (out / "index.html").read_text()
    # every figure embedded, so the page stands alone
    assert page.count('src="data:image/png;base64,') == len(figures)
    for name in ("gradient", "random", "pixel_flipping", "sparseness", "mprt"):
        assert name in page
    # the ranks in the page are the table's: the direction of each metric decides
    rows = list(csv.DictReader((out / "results.csv").open()))
    best = {r["metric"]: r["method"] for r in rows if r["rank"] == "1"}
    for metric in ("pixel_flipping", "sparseness", "mprt"):
        cells = [r for r in rows if r["metric"] == metric]
        means = {r["method"]: float(r["mean"]) for r in cells}
        pick = max if cells[0]["higher_is_better"] == "True" else min
        assert best[metric] == pick(means, key=means.get)


def _write_masks(files) -> torch.Tensor:
    """A different object (a column band) per input, as .npy (H, W) and one as PNG."""
    folder = files / "masks"
    folder.mkdir()
    masks = torch.zeros(4, 1, 12, 12, dtype=torch.bool)
    for i in range(4):
        masks[i, 0, :, 3 * i : 3 * i + 3] = True
        if i == 3:
            pixels = masks[i, 0].numpy().astype(np.uint8) * 255
            Image.fromarray(pixels, mode="L").save(folder / f"in{i}.png")
        else:
            np.save(folder / f"in{i}.npy", masks[i, 0].numpy())
    return masks


def test_evaluate_with_masks_scores_each_input_against_its_own_mask(files) -> None:
    from innspect import create_analyzer
    from innspect.evaluation import RelevanceMassAccuracy
    from tests.cli_models import small_cnn

    masks = _write_masks(files)
    out = files / "out"
    argv = _argv(files, out, "--mask", str(files / "masks"), "--method", "gradient")
    argv += ["--metric", "relevance_mass_accuracy", "pointing_game"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    model = small_cnn()
    model.load_state_dict(torch.load(files / "weights.pth"))
    x = torch.stack([torch.from_numpy(np.load(files / "inputs" / f"in{i}.npy")) for i in range(4)])
    y = torch.tensor(results["targets"])
    analyzer = create_analyzer("gradient", model, neuron_selection_mode="index")
    a = analyzer.analyze(x, neuron_selection=y)
    expected = RelevanceMassAccuracy()(None, x, y, a, mask=masks).scores
    got = torch.tensor(
        results["scores"]["gradient"]["relevance_mass_accuracy"], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # the masks differ per input, so a mix-up of files would change the scores
    shuffled = RelevanceMassAccuracy()(None, x, y, a, mask=masks.roll(1, dims=0)).scores
    assert not torch.allclose(got, shuffled)


@pytest.mark.parametrize(
    ("mask_shape", "fragment"),
    [((5, 5), "has shape (5, 5) but its input in0.npy has shape (1, 12, 12)"), (None, "no mask")],
)
def test_evaluate_bad_masks_are_one_line_with_status_2(files, capsys, mask_shape, fragment):
    folder = files / "masks"
    folder.mkdir()
    if mask_shape is not None:
        for i in range(4):
            np.save(folder / f"in{i}.npy", np.ones(mask_shape, dtype=bool))
    argv = _argv(files, files / "out", "--mask", str(folder), "--method", "gradient")
    assert main(argv + ["--metric", "pointing_game"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0]


def test_evaluate_localisation_without_mask_says_to_give_one(files, capsys) -> None:
    argv = _argv(files, files / "out", "--method", "gradient", "--metric", "pointing_game")
    assert main(argv) == 2
    assert "need(s) --mask DIR" in capsys.readouterr().err


def _result(name: str, scores: list[float], higher: bool | None):
    from innspect.evaluation import MetricResult

    return MetricResult(name, torch.tensor(scores, dtype=torch.float64), None, higher)


def test_equal_means_share_a_rank_and_the_mean_rank_orders_the_heat_table(tmp_path) -> None:
    from innspect.evaluation import EvaluationTable
    from innspect.evaluation.plots import mean_rank, plot_ranks

    table = EvaluationTable(["a", "b", "c"], ["up", "down", "none"])
    values = {"a": (1.0, 5.0, 1.0), "b": (3.0, 5.0, 2.0), "c": (3.0, 1.0, 3.0)}
    for method, (up, down, none) in values.items():
        table.results[method] = {
            "up": _result("up", [up, up], True),
            "down": _result("down", [down, down], False),
            "none": _result("none", [none, none], None),
        }
    # equal means share the best of their places, whatever the order the methods came in
    assert table.ranks("up") == {"a": 3, "b": 1, "c": 1}
    assert table.ranks("down") == {"a": 2, "b": 2, "c": 1}
    assert table.ranks("none") == {}
    # the mean rank is over the metrics with a direction only
    assert mean_rank(table) == {"a": 2.5, "b": 1.5, "c": 1.0}
    figure = plot_ranks(table, tmp_path / "ranks.png")
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == ["c", "b", "a"]  # best first, on top


def test_only_ordered_curves_are_drawn() -> None:
    """Pixel flipping's curve is a series of steps; faithfulness correlation's 'curve' holds
    its random subsets' output drops, in no order: no line to draw."""
    from innspect.evaluation import EvaluationTable, MetricResult
    from innspect.evaluation.plots import curve_metrics

    table = EvaluationTable(["a", "b"], ["pixel_flipping", "faithfulness_correlation", "mprt"])
    curves = torch.rand(2, 5, dtype=torch.float64)
    for method in table.methods:
        table.results[method] = {
            name: MetricResult(name, curves.mean(dim=1), curves, False) for name in table.metrics
        }
    assert curve_metrics(table) == {"faithfulness": ["pixel_flipping"], "randomisation": ["mprt"]}


def _dataset_argv(files, out, *extra):
    stacked = np.stack([np.load(files / "inputs" / f"in{i}.npy") for i in range(4)])
    np.save(files / "data.npy", np.concatenate([stacked, stacked[:2] * 0.5]))  # 6 samples
    argv = ["evaluate", "--model", "tests.cli_models:small_cnn", "--weights"]
    argv += [str(files / "weights.pth"), "--input", str(files / "data.npy"), "--out", str(out)]
    argv += ["--method", "gradient", "input_t_gradient", "--metric", "pixel_flipping"]
    return argv + ["sparseness", "--option", "features_in_step=16", *extra]


def test_evaluate_a_data_set_in_shards_equals_the_library_and_resumes(files, capsys) -> None:
    from innspect.evaluation import evaluate_dataset

    out = files / "shards"
    argv = _dataset_argv(files, out, "--backend", "local", "--shard-size", "4", "--batch-size", "3")
    assert main(argv) == 0
    assert "sparseness" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and all(int(r["n"]) == 6 for r in rows)
    expected = evaluate_dataset(
        "tests.cli_models:small_cnn", files / "data.npy", ["gradient", "input_t_gradient"],
        ["pixel_flipping", "sparseness"], files / "library", weights=str(files / "weights.pth"),
        shard_size=4, batch_size=3, metric_options={"pixel_flipping": {"features_in_step": 16}},
        verbose=False,
    )  # fmt: skip
    for row, want in zip(rows, expected.rows(), strict=True):
        assert (row["method"], row["metric"]) == (want["method"], want["metric"])
        assert float(row["mean"]) == pytest.approx(want["mean"], rel=1e-12)
    # a run cut after its first shard resumes from it; the merged result is the same bytes
    first = (out / "results.json").read_bytes()
    index = json.loads((out / "index.json").read_text())
    (out / index["shards"][1]["file"]).unlink()
    assert main(argv) == 0
    assert (out / "results.json").read_bytes() == first


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--target", "3"], "one class for every sample is not offered"),
        (["--report"], "--report is not available with --backend"),
        (["--shard-size", "0"], "--shard-size must be a positive integer"),
    ],
)
def test_evaluate_a_data_set_refuses_what_it_cannot_do_in_one_line(files, capsys, extra, fragment):
    argv = _dataset_argv(files, files / "shards", "--backend", "local", *extra)
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("innspect: error: ")]
    assert len(errors) == 1 and fragment in errors[0]


def test_evaluate_files_refuse_label_targets_and_bad_targets(files, capsys) -> None:
    for target, fragment in (("label", "needs a data set with labels"), ("cat", "class index")):
        argv = _argv(files, files / "out", "--method", "gradient", "--metric", "sparseness")
        assert main([*argv, "--target", target]) == 2
        assert fragment in capsys.readouterr().err
