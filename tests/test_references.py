"""`innspect references generate / check`: the round trip, corrupted data, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from innspect.analyzers.families import family_of
from innspect.cli import main
from innspect.conformance import (
    ReferenceDataError,
    check_folder,
    generate_layer_references,
    generate_model_references,
    read_reference_file,
)
from innspect.conformance.generate import reference_input
from tests.conftest import require_references

INNVESTIGATE = "innvestigate-2.1.2-layer"


def _copy(files: list[str], target: Path) -> Path:
    folder = require_references(INNVESTIGATE)
    target.mkdir()
    for name in files:
        shutil.copy(folder / name, target / name)
        (target / name).chmod(0o644)
    return target


def test_check_passes_on_innvestigates_files_and_prints_a_table(capsys) -> None:
    folder = require_references(INNVESTIGATE)
    assert main(["references", "check", str(folder)]) == 0
    out = capsys.readouterr().out
    files = sorted(folder.glob("*.hdf5"))
    # one row per file, layer model and array (output and attribution)
    assert f"{len(files) * 12} of {len(files) * 12} arrays in {len(files)} files pass" in out
    assert "LRPZ.hdf5" in out and "MaxPooling2D" in out and "FAIL" not in out


def test_check_fails_on_a_corrupted_copy_and_names_the_node(tmp_path, capsys) -> None:
    folder = _copy(["LRPZ.hdf5", "Gradient.hdf5"], tmp_path / "refs")
    with h5py.File(folder / "LRPZ.hdf5", "r+") as f:
        data = f["Conv2D_relu/attribution"]
        values = np.asarray(data)
        values[0, 1, 1, 0] += 0.05 * np.abs(values).max()
        data[...] = values
    assert main(["references", "check", str(folder), "--failures-only"]) == 1
    out = capsys.readouterr().out
    assert "LRPZ.hdf5:Conv2D_relu:attribution" in out
    failed = [c for c in check_folder(folder) if not c.passed]
    assert [(Path(c.file).name, c.model, c.node) for c in failed] == [
        ("LRPZ.hdf5", "Conv2D_relu", "attribution")
    ]


def test_missing_dataset_and_unbuildable_layer_are_clear_errors(tmp_path, capsys) -> None:
    folder = _copy(["LRPZ.hdf5"], tmp_path / "missing")
    with h5py.File(folder / "LRPZ.hdf5", "r+") as f:
        del f["Dense/attribution"]
    with pytest.raises(ReferenceDataError, match=r"LRPZ.hdf5: missing dataset 'Dense/attribution'"):
        read_reference_file(folder / "LRPZ.hdf5")
    assert main(["references", "check", str(folder)]) == 2
    assert "missing dataset 'Dense/attribution'" in capsys.readouterr().err

    folder = _copy(["LRPZ.hdf5"], tmp_path / "unbuildable")
    with h5py.File(folder / "LRPZ.hdf5", "r+") as f:
        f.move("Conv2D", "Conv3D")
        del f["Dense/weights/1"]
    with pytest.raises(ReferenceDataError, match=r"LRPZ.hdf5: layer model 'Conv3D' cannot be"):
        read_reference_file(folder / "LRPZ.hdf5")
    with h5py.File(folder / "LRPZ.hdf5", "r+") as f:
        f.move("Conv3D", "Conv2D")
    with pytest.raises(ReferenceDataError, match=r"layer model 'Dense' cannot be rebuilt"):
        read_reference_file(folder / "LRPZ.hdf5")


def test_bad_folders_and_implementations(tmp_path, capsys) -> None:
    assert main(["references", "check", str(tmp_path / "nowhere")]) == 2
    assert "reference folder not found" in capsys.readouterr().err
    assert main(["references", "check", str(tmp_path)]) == 2
    assert "no *.hdf5 reference files" in capsys.readouterr().err
    folder = require_references(INNVESTIGATE)
    assert main(["references", "check", str(folder), "--implementation", "nomodule"]) == 2
    assert "module:function" in capsys.readouterr().err


def zero_implementation(model, x, method, options):
    """An implementation that explains nothing: every attribution check must fail."""
    return np.zeros_like(x)


def test_a_foreign_implementation_is_checked(tmp_path, capsys) -> None:
    folder = _copy(["Gradient.hdf5"], tmp_path / "refs")
    spec = "tests.test_references:zero_implementation"
    assert main(["references", "check", str(folder), "--implementation", spec]) == 1
    out = capsys.readouterr().out
    assert out.count("  FAIL") == 6 and "6 of 12 arrays" in out  # outputs pass, attributions not


def test_layer_set_round_trip_is_deterministic_and_checks(tmp_path) -> None:
    from innspect.analyzers.registry import list_analyzers

    first, skipped = generate_layer_references(tmp_path / "a")  # every analyzer
    # Class activation maps need a spatial map or a patch grid: the dense-only layer models
    # have neither, and the refusal says so (FullGrad needs none: input and bias gradients).
    # Every other analyzer runs on every model.
    cams = {n for n in list_analyzers() if family_of(n).key == "cam"} - {"cam.full_grad"}
    assert {name for name, _ in skipped} == cams
    assert all("spatial map" in reason for _, reason in skipped)
    assert len(first) == len(list_analyzers()) - len(cams)
    methods = ["gradient", "lrp.epsilon", "lrp.alpha_2_beta_1", "deep_taylor.bounded"]
    second, _ = generate_layer_references(tmp_path / "b", methods)
    by_name = {p.name: p for p in first}
    for again in second:
        assert by_name[again.name].read_bytes() == again.read_bytes()
    comparisons = check_folder(tmp_path / "a")
    assert len(comparisons) == len(first) * 12 and all(c.passed for c in comparisons)
    epsilon = tmp_path / "a" / "lrp.epsilon.hdf5"
    with h5py.File(epsilon, "r") as f:  # signed inputs and non-zero biases, unlike iNNvestigate's
        assert (np.asarray(f["input"]) < 0).any() and np.abs(f["Dense/weights/1"]).min() > 0
        assert f["Conv2D/weights/0"].shape == (3, 3, 3, 5)
    with h5py.File(epsilon, "r+") as f:
        f["Dense_relu/attribution"][0, 0, 0, 0] += 1e-3
    rows = check_folder(tmp_path / "a")
    failed = [(Path(c.file).name, c.model, c.node) for c in rows if not c.passed]
    assert failed == [("lrp.epsilon.hdf5", "Dense_relu", "attribution")]


# Rules that conserve relevance at every node of these networks: no bias in the
# denominators, and relevance only where x > 0, so the z-rule of average pooling loses none
# (Flat and w^2 give relevance to zero inputs of the pooling, whose z-rule then drops it).
CONSERVING = ("lrp.z_IB", "lrp.alpha_1_beta_0_IB", "lrp.z_plus")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_generate_then_check_round_trip_on_torchvision_models(tmp_path, name, capsys) -> None:
    out = tmp_path / name
    x, input_name = reference_input(None, 1, (3, 32, 32), seed=0)
    written, skipped = generate_model_references(
        f"torchvision:{name}", out, x, input_name, extra_options={"steps": 2, "augment_by_n": 2}
    )
    from innspect.analyzers.registry import list_analyzers

    assert {p.name.removesuffix(".hdf5") for p in written} | {s[0] for s in skipped} == set(
        list_analyzers()
    )
    assert len(written) >= 30, skipped
    comparisons = check_folder(out)
    assert all(c.passed for c in comparisons), [c for c in comparisons if not c.passed][:3]
    nodes = {(Path(c.file).stem, c.node) for c in comparisons}
    assert ("lrp.z", "-1") in nodes and ("lrp.z", "input") in nodes
    for method in CONSERVING:
        with h5py.File(out / f"{method}.hdf5", "r") as f:
            group = f["layerwise_relevances"]
            start = np.asarray(group["-1"], dtype=np.float64)
            np.testing.assert_allclose(start, np.asarray(f["output"]).max(axis=1), rtol=1e-6)
            # Every node of vgg11 is on the one path from output to input; in resnet18 the
            # residual sums and the nodes outside the blocks are.
            on_path = [n for n in group if name == "vgg11" or n.startswith(("add", "input", "max"))]
            assert len(on_path) >= 10
            for node in on_path:
                total = np.asarray(group[node], dtype=np.float64).reshape(1, -1).sum(axis=1)
                np.testing.assert_allclose(total, start, rtol=1e-4, err_msg=f"{method} {node}")


def test_generate_command_round_trip_and_bad_input(tmp_path, capsys) -> None:
    out = tmp_path / "refs"
    argv = ["references", "generate", "--model", "tests.cli_models:small_cnn", "--random", "2"]
    argv += ["--shape", "1,12,12", "--methods", "lrp.epsilon", "gradient", "--out", str(out)]
    assert main(argv) == 0
    assert "wrote 2 reference files" in capsys.readouterr().out
    with h5py.File(out / "lrp.epsilon.hdf5", "r") as f:
        assert f.attrs["model_name"] == "tests.cli_models:small_cnn"
        assert set(f["layerwise_relevances"]) == {"-1", "0", "1", "2", "3", "4", "input"}
        np.testing.assert_array_equal(f["layerwise_relevances/input"], f["attribution"])
    assert main(["references", "check", str(out)]) == 0
    bad = [
        (["--random", "2"], "--shape"),
        (["--random", "0", "--shape", "1,12,12"], "at least 1 sample"),
        (["--random", "1", "--shape", "1,x"], "--shape must look like"),
        (["--random", "1", "--shape", "1,12,12", "--methods", "nope"], "unknown analyzer"),
    ]
    for extra, message in bad:
        model = ["references", "generate", "--model", "tests.cli_models:small_cnn"]
        assert main([*model, *extra, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    layers = ["references", "generate", "--layers", "--input", "a.npy", "--out", str(out)]
    assert main(layers) == 2
    assert "--layers makes its own input" in capsys.readouterr().err


def test_generate_from_input_files(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        files.append(tmp_path / f"sample{i}.npy")
        np.save(files[-1], rng.standard_normal((1, 12, 12)).astype(np.float32))
    out = tmp_path / "refs"
    argv = ["references", "generate", "--model", "tests.cli_models:small_cnn", "--input"]
    assert main([*argv, *map(str, files), "--methods", "lrp.z", "--out", str(out)]) == 0
    with h5py.File(out / "lrp.z.hdf5", "r") as f:
        assert f.attrs["input_name"] == "sample0.npy,sample1.npy"
        np.testing.assert_array_equal(f["input"][1], np.load(files[1]))
    assert main([*argv, str(tmp_path / "missing.npy"), "--out", str(out)]) == 2
    assert "input file not found" in capsys.readouterr().err
