"""``innspect introspect``: config files (iNNtrospect's keys), flags, resuming, the report, and
clear errors that leave nothing half-written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from innspect.cli import main
from innspect.introspect import Naps
from innspect.introspect.collect import collect


def cnn() -> nn.Module:
    """The model the tests load as ``tests.test_introspect_cli:cnn`` (seeded weights)."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 3)
    ).eval()


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for k, group in enumerate(["b", "a", "c", "a", "b", "c"]):
        np.save(folder / f"batch{k:04d}.npy", rng.normal(size=(5 + k, 1, 10, 10)).astype("f4"))
        rows.append(f"batch{k:04d}.npy,{group}")
    (folder / "corpus.csv").write_text("\n".join(rows) + "\n")
    return folder


def _config(tmp_path: Path, corpus: Path, **extra: object) -> Path:
    values = {
        "model_path": "tests.test_introspect_cli:cnn",
        "data_path": str(corpus),
        "processed_corpus_path": str(tmp_path / "out"),
        "layer_names_of_interest": ["1"],
        "use_aligned_naps": True,
        "layout": "graph",
        "projection": "pca",
        "projection_samples": 4,
        **extra,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return path


def test_a_run_writes_naps_maps_and_report_and_a_second_run_reuses_them(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(tmp_path, corpus)
    assert main(["introspect", "--config", str(config)]) == 0
    out = tmp_path / "out"
    profiles = Naps.load(out / "naps")
    expected = collect(cnn(), corpus, layers=["1"], align=True)
    assert profiles.groups == ["a", "b", "c"]
    np.testing.assert_allclose(profiles["1"], expected["1"], rtol=0, atol=1e-9)
    assert profiles.samples["1"].shape == (12, 8 * 8 * 8)  # 4 per group, flattened
    coordinates = np.load(out / "vis_data" / "topomap" / "1_coordinates.npy")
    assert coordinates.shape == (8, 2)
    page = (out / "index.html").read_text()
    for figure in ("1_naps.png", "1_contrastive.png", "1_projection.png"):
        assert figure in page
        assert next(out.glob(f"plots/**/{figure}")).read_bytes()[:4] == b"\x89PNG"
    assert "blur error AUC" in page
    assert not list(out.glob("**/*.tmp"))

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("**/*.npy")}
    capsys.readouterr()
    assert main(["introspect", "--config", str(config)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("naps/*.npy")} == {
        p: t for p, t in stamps.items() if p.parent.name == "naps"
    }
    assert (out / "vis_data/topomap/1_coordinates.npy").stat().st_mtime_ns == stamps[
        out / "vis_data/topomap/1_coordinates.npy"
    ]
    # a changed flag redoes the layout, not the NAPs
    assert main(["introspect", "--config", str(config), "--layout", "som"]) == 0
    assert (out / "naps/layer000.npy").stat().st_mtime_ns == stamps[out / "naps/layer000.npy"]
    assert not np.array_equal(np.load(out / "vis_data/topomap/1_coordinates.npy"), coordinates)


def test_flags_alone_and_toml_configs_work(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "flags"
    args = ["introspect", "--model", "tests.test_introspect_cli:cnn", "--data", str(corpus)]
    assert main([*args, "--layout", "pca", "--projection", "none", "--out", str(out)]) == 0
    assert (out / "vis_data/topomap/1_coordinates.npy").is_file()  # default layers: the ReLU
    assert not (out / "plots" / "instance_projection").exists()
    toml = tmp_path / "config.toml"
    toml.write_text(
        f'model = "tests.test_introspect_cli:cnn"\ndata = "{corpus}"\nout = "{tmp_path / "t"}"\n'
        'layout = "random"\nprojection = "none"\n'
    )
    assert main(["introspect", "--config", str(toml)]) == 0
    assert (tmp_path / "t" / "index.html").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour_map": "jet"}, "unknown key 'colour_map'"),
        ({"seed": "one"}, "'seed' in .*config.json must be int, got 'one'"),
        (
            {"layer_names_of_interest": ["conv9"]},
            "unknown node name.*conv9.*nodes are: input, 0, 1",
        ),
        ({"layout": "kmeans"}, "unknown layout method 'kmeans'"),
        ({"data_path": "nowhere"}, "corpus.csv not found"),
    ],
)
def test_bad_input_is_one_line_status_2_and_writes_nothing(
    tmp_path: Path,
    corpus: Path,
    capsys: pytest.CaptureFixture,
    change: dict,
    message: str,
) -> None:
    config = _config(tmp_path, corpus, **change)
    assert main(["introspect", "--config", str(config)]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert re.search(f"^innspect: error: .*{message}", error), error
    assert not (tmp_path / "out").exists()


def test_a_corpus_row_naming_a_missing_file_writes_nothing(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture
) -> None:
    with open(corpus / "corpus.csv", "a") as handle:
        handle.write("batch0099.npy,a\n")
    assert main(["introspect", "--config", str(_config(tmp_path, corpus))]) == 2
    assert "line 7: batch0099.npy" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_inntrospect_processed_corpus_is_mapped_without_a_model(tmp_path: Path) -> None:
    from innspect.introspect import read_processed_corpus
    from tests.test_introspect import _write_inntrospect_folder

    rng = np.random.default_rng(9)
    acts = {
        "layer000": rng.normal(size=(18, 6, 6, 1)),  # one channel: no map
        "layer001": rng.normal(size=(18, 4, 4, 5)),
    }
    grads = {name: rng.normal(size=a.shape) for name, a in acts.items()}
    labels = np.array(["x", "y", "z"] * 6)
    _write_inntrospect_folder(tmp_path / "processed", acts, grads, labels)
    out = tmp_path / "out"
    args = ["introspect", "--activations", str(tmp_path / "processed"), "--out", str(out)]
    assert main([*args, "--layout", "pca", "--projection", "pca", "--align"]) == 0
    profiles = Naps.load(out / "naps")
    expected = read_processed_corpus(tmp_path / "processed", align=True)
    np.testing.assert_allclose(profiles["layer001"], expected["layer001"], rtol=0, atol=1e-12)
    assert profiles.sample_groups == ["x"] * 6 + ["y"] * 6 + ["z"] * 6  # all kept (<= 50)
    summary = json.loads((out / "summary.json").read_text())
    skipped, mapped = summary["layers"]
    assert "at least 3" in skipped["skipped"]
    assert np.load(out / "vis_data/topomap/layer001_coordinates.npy").shape == (5, 2)
    assert mapped["projection"].endswith("layer001_projection.png")
