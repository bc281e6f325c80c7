"""`innspect demo --fast`: every output is written, decodes, has the right size and content."""

from __future__ import annotations

import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import innspect
from innspect.analyzers.families import FAMILIES, family_of
from innspect.demo.plots import grid_size, perturbation_size
from innspect.demo.run import n_panels

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = (
    "analysis_grid.png",
    "perturbation.png",
    "evaluation_ranks.png",
    "results.csv",
    "results.json",
    "index.html",
    "digits_cnn.pt",
    "digits",
    "digits_labels.txt",
    "introspection",
)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "innspect-demo"
    run = subprocess.run(
        [sys.executable, "-m", "innspect", "demo", "--fast", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"test accuracy \d+\.\d%", run.stdout), run.stdout
    return out


def test_demo_writes_every_file_and_no_temporary_ones(demo_dir: Path) -> None:
    assert sorted(p.name for p in demo_dir.iterdir()) == sorted(OUTPUTS)


def test_pngs_decode_with_expected_sizes(demo_dir: Path) -> None:
    results = json.loads((demo_dir / "results.json").read_text())
    with Image.open(demo_dir / "analysis_grid.png") as grid:
        grid.load()
        groups = [(f["title"], f["methods"]) for f in results["families"]]
        assert grid.size == grid_size(results["n_grid_images"], groups)
        assert grid.size == (
            results["files"]["analysis_grid"]["width"],
            results["files"]["analysis_grid"]["height"],
        )
    with Image.open(demo_dir / "perturbation.png") as plot:
        plot.load()
        assert plot.size == perturbation_size(n_panels(groups))
        assert plot.size == (
            results["files"]["perturbation"]["width"],
            results["files"]["perturbation"]["height"],
        )


def test_csv_has_one_row_per_method(demo_dir: Path) -> None:
    results = json.loads((demo_dir / "results.json").read_text())
    with open(demo_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    methods = [row["method"] for row in rows]
    assert methods == [m["method"] for m in results["methods"]]
    assert len(set(methods)) == len(methods)
    skipped = {item["method"] for item in results["skipped"]}
    assert results["failed"] == []  # an analyzer that crashes on the demo model is a bug
    assert set(methods) == set(innspect.list_analyzers()) - skipped
    for row in rows:
        assert float(row["time_per_image_ms"]) >= 0
        float(row["aopc"])
        is_relevance = row["method"].startswith(("lrp", "deep_taylor"))
        assert (row["conservation_error"] != "") == is_relevance
        assert row["relevance_method"] == str(is_relevance).lower()
        assert row["family"] == family_of(row["method"]).key


def test_methods_beat_random_and_conservation_is_measured(demo_dir: Path) -> None:
    results = {
        m["method"]: m for m in json.loads((demo_dir / "results.json").read_text())["methods"]
    }
    assert results["gradient"]["aopc"] > results["random"]["aopc"]
    # The w^2 and flat rules conserve relevance exactly (no bias): a check of the column.
    for name in ("lrp.w_square", "lrp.flat"):
        if name in results:
            assert results[name]["conservation_error"] < 1e-4


def test_html_references_only_existing_files(demo_dir: Path) -> None:
    page = (demo_dir / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {"analysis_grid.png", "perturbation.png", "results.csv", "results.json"} <= set(
        references
    )
    for reference in references:
        assert "://" not in reference and not reference.startswith("/")
        assert (demo_dir / reference).is_file(), reference


def test_introspection_maps_every_chosen_layer(demo_dir: Path) -> None:
    """The demo's introspection: NAPs of ten digit classes, a contrastive topomap row per
    layer (one panel per class) on the page, quality metrics in results.json."""
    summary = json.loads((demo_dir / "results.json").read_text())["introspection"]
    assert summary["groups"] == [str(d) for d in range(10)]
    page = (demo_dir / "index.html").read_text()
    for layer in summary["layers"]:
        assert layer["contrastive_topomaps"] in page
        assert sorted(layer["group_order"], key=int) == summary["groups"]
        assert layer["quality"]["resize_auc"] > 0
        with Image.open(demo_dir / layer["contrastive_topomaps"]) as row:
            assert row.width > 5 * row.height  # ten panels side by side
    assert (demo_dir / summary["index"]).is_file()


def test_methods_are_grouped_by_family_each_described_once(demo_dir: Path) -> None:
    results = json.loads((demo_dir / "results.json").read_text())
    grouped = [name for family in results["families"] for name in family["methods"]]
    assert sorted(grouped) == sorted(m["method"] for m in results["methods"])
    order = [f.key for f in FAMILIES]
    keys = [family["key"] for family in results["families"]]
    assert keys == sorted(keys, key=order.index)  # families in the fixed reading order
    assert {"gradient", "lrp_rule", "lrp_composite", "deep_taylor"} <= set(keys)
    descriptions = [m["explanation"] for m in results["methods"]]
    assert len(set(descriptions)) == len(descriptions)
    page = (demo_dir / "index.html").read_text()
    for text in descriptions:
        assert page.count(html.escape(text)) == 1, text


def test_nearly_empty_maps_get_a_note_backed_by_numbers(demo_dir: Path) -> None:
    from innspect.demo.run import NEARLY_EMPTY_SHARE

    methods = json.loads((demo_dir / "results.json").read_text())["methods"]
    for method in methods:
        assert (method["note"] is not None) == (method["visible_share"] < NEARLY_EMPTY_SHARE)
        if method["note"] and method["conservation_error"] is not None:
            assert f"{method['visible_share']:.1%}" in method["note"]
            if method["conservation_error"] > 1:
                assert f"{method['relevance_sum_over_score']:.1f} times the score" in method["note"]
    # The alpha2-beta1 rule does not conserve relevance on this model and looks empty.
    alpha = next(m for m in methods if m["method"] == "lrp.alpha_2_beta_1")
    assert alpha["conservation_error"] > 1 and alpha["note"]
    assert html.escape(alpha["note"]) in (demo_dir / "index.html").read_text()


def test_demo_page_opens_in_a_headless_browser_with_every_image(demo_dir: Path) -> None:
    from tests.browser import images_in_page

    images = images_in_page(demo_dir / "index.html")
    introspection = json.loads((demo_dir / "results.json").read_text())["introspection"]
    maps = {layer["contrastive_topomaps"] for layer in introspection["layers"]}
    expected = {"analysis_grid.png", "perturbation.png", "evaluation_ranks.png"} | maps
    assert expected <= {source for source, _ in images}
    assert all(loaded for _, loaded in images), images


def test_every_method_is_ranked_by_faithfulness_complexity_and_mprt(demo_dir: Path) -> None:
    """The section "which method is most faithful": every method the demo ran, each metric
    ranked in its direction, rows by mean rank, the figure of the size the page gives."""
    from innspect.demo.evaluation import METRIC_OPTIONS

    results = json.loads((demo_dir / "results.json").read_text())
    evaluation = results["evaluation"]
    ranking = evaluation["ranking"]
    assert sorted(r["method"] for r in ranking) == sorted(m["method"] for m in results["methods"])
    assert [m["name"] for m in evaluation["metrics"]] == list(METRIC_OPTIONS)
    assert {"pixel_flipping", "faithfulness_correlation", "sparseness", "mprt"} <= set(
        METRIC_OPTIONS
    )
    mean_ranks = [r["mean_rank"] for r in ranking]
    assert mean_ranks == sorted(mean_ranks)
    for metric in evaluation["metrics"]:
        name, higher = metric["name"], metric["higher_is_better"]
        cells = [r["scores"][name] for r in ranking if r["scores"][name]["mean"] is not None]
        best = [c["mean"] for c in cells if c["rank"] == 1]
        means = [c["mean"] for c in cells]
        assert best and best[0] == (max(means) if higher else min(means))
    # the random baseline is no better than most methods on average
    assert [r["method"] for r in ranking].index("random") >= len(ranking) // 2
    with Image.open(demo_dir / evaluation["file"]) as image:
        image.load()
        assert image.size == (evaluation["width"], evaluation["height"])
    page = (demo_dir / "index.html").read_text()
    assert "Which method is most faithful on this model" in page
    assert page.index(ranking[0]["method"]) < page.index(
        ranking[-1]["method"], page.index("mean rank")
    )


def test_the_saved_model_is_explained_by_innspect_analyze(demo_dir: Path, tmp_path) -> None:
    """The README's command: the demo's TorchScript model on its digits, with class names."""
    results = json.loads((demo_dir / "results.json").read_text())
    from innspect.cli import main

    out = tmp_path / "analysis"
    argv = ["analyze", "--model", str(demo_dir / "digits_cnn.pt"), "--input"]
    argv += [str(demo_dir / "digits"), "--labels", str(demo_dir / "digits_labels.txt")]
    assert main([*argv, "--method", "gradient", "lrp.epsilon", "--out", str(out), "--report"]) == 0
    summary = json.loads((out / "results.json").read_text())
    predicted = {Path(item["path"]).name: item for item in summary["inputs"]}
    for digit in results["grid"]:
        item = predicted[Path(digit["file"]).name]
        assert item["prediction"] == digit["predicted"]
        assert item["prediction_name"] == f"digit {digit['predicted']}"
        assert (out / item["methods"]["lrp.epsilon"]["files"]["overlay"]).is_file()


@pytest.mark.parametrize(("module", "extra"), [("minisom", "introspect"), ("sklearn", "demo")])
def test_missing_dependency_names_its_extra(monkeypatch, tmp_path: Path, module, extra) -> None:
    import argparse

    from innspect.cli.common import CLIError
    from innspect.cli.demo import run

    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    args = argparse.Namespace(out=str(tmp_path), fast=True, debug=False)
    with pytest.raises(CLIError, match=rf"pip install 'innspect\[{extra}\]'"):
        run(args)
    assert not any(tmp_path.iterdir())  # refused before writing anything
