"""`innspect demo --fast`: every output is written, decodes, has the right size and content."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import innspect
from innspect.demo.plots import PERTURBATION_SIZE, grid_size

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = (
    "analysis_grid.png",
    "perturbation.png",
    "results.csv",
    "results.json",
    "index.html",
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
        assert grid.size == grid_size(results["n_grid_images"], len(results["methods"]))
        assert grid.size == (
            results["files"]["analysis_grid"]["width"],
            results["files"]["analysis_grid"]["height"],
        )
    with Image.open(demo_dir / "perturbation.png") as plot:
        plot.load()
        assert plot.size == PERTURBATION_SIZE


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
