"""`innspect analyze` and `innspect methods`, and the one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import innspect
from innspect.cli import main
from innspect.cli_analyze import heatmap_rgb
from innspect.cli_loading import CLIError
from tests.cli_models import other_cnn, small_cnn

REPO_ROOT = Path(__file__).resolve().parents[1]
FACTORY = "tests.cli_models:small_cnn"


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    model = small_cnn().eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[list[Path], list[torch.Tensor]]:
    rng = np.random.default_rng(0)
    array = rng.random((1, 12, 12)).astype(np.float32)
    npy = tmp_path / "sample.npy"
    np.save(npy, array)
    pixels = (rng.random((12, 12)) * 255).round().astype(np.uint8)
    png = tmp_path / "digit.png"
    Image.fromarray(pixels, mode="L").save(png)
    as_tensor = [torch.as_tensor(array), torch.as_tensor(pixels / 255.0, dtype=torch.float32)[None]]
    return [npy, png], as_tensor


def _check_outputs(out: Path, files: list[Path], tensors, model, method: str) -> None:
    analyzer = innspect.create_analyzer(method, model)
    for file, x in zip(files, tensors, strict=True):
        expected = analyzer.analyze(x[None])[0].numpy()
        written = np.load(out / f"{file.stem}_{method}.npy")
        np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-6)
        with Image.open(out / f"{file.stem}_{method}.png") as image:
            png = np.asarray(image.convert("RGB"))
        # The heatmap of the library's result, up to uint8 rounding of float noise.
        assert np.abs(png.astype(int) - heatmap_rgb(expected).astype(int)).max() <= 1


@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "lrp.epsilon"])
def test_analyze_state_dict_model_equals_library(tmp_path, weights, inputs, method, capsys):
    weights_path, model = weights
    files, tensors = inputs
    out = tmp_path / "out"
    argv = ["analyze", "--model", FACTORY, "--weights", str(weights_path), "--method", method]
    status = main([*argv, "--input", *map(str, files), "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and "neuron" in printed[0] and "score" in printed[0]
    _check_outputs(out, files, tensors, model, method)


@pytest.mark.parametrize("method", ["gradient", "deconvnet", "lrp.epsilon"])
def test_analyze_torchscript_model_equals_library(tmp_path, weights, inputs, method):
    _, model = weights
    files, tensors = inputs
    script = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(model).save(str(script))
    out = tmp_path / "out"
    argv = ["analyze", "--model", str(script), "--method", method, "--out", str(out)]
    assert main([*argv, "--input", *map(str, files)]) == 0
    _check_outputs(out, files, tensors, model, method)


def test_analyze_neuron_and_options(tmp_path, weights, inputs, capsys):
    weights_path, model = weights
    files, tensors = inputs
    out = tmp_path / "out"
    argv = ["analyze", "--model", FACTORY, "--weights", str(weights_path), "--input"]
    argv += [str(files[0]), "--method", "gradient", "--neuron", "3", "--out", str(out)]
    assert main([*argv, "--option", "postprocess=abs"]) == 0
    assert "neuron 3," in capsys.readouterr().out
    analyzer = innspect.create_analyzer(
        "gradient", model, neuron_selection_mode="index", postprocess="abs"
    )
    expected = analyzer.analyze(tensors[0][None], neuron_selection=3)[0].numpy()
    np.testing.assert_allclose(np.load(out / "sample_gradient.npy"), expected, rtol=1e-6)


def test_methods_lists_every_analyzer(capsys):
    assert main(["methods"]) == 0
    listed = {
        line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:1].isalnum()
    }
    assert set(innspect.list_analyzers()) <= listed


def _error_cases(tmp: Path, weights_path: Path, files: list[Path]) -> dict[str, list[str]]:
    broken = tmp / "broken.png"
    broken.write_bytes(b"not an image at all")
    wrong = tmp / "wrong.pt"
    torch.save(other_cnn().state_dict(), wrong)
    good = ["--model", FACTORY, "--weights", str(weights_path), "--out", str(tmp / "out")]
    return {
        "missing input": [
            "analyze",
            *good,
            "--input",
            str(tmp / "nope.npy"),
            "--method",
            "gradient",
        ],
        "undecodable image": ["analyze", *good, "--input", str(broken), "--method", "gradient"],
        "unknown method": ["analyze", *good, "--input", str(files[0]), "--method", "lrp.nope"],
        "neuron out of range": [
            "analyze",
            *good,
            "--input",
            str(files[0]),
            "--method",
            "gradient",
            "--neuron",
            "9",
        ],
        "weights do not fit": [
            "analyze",
            "--model",
            FACTORY,
            "--weights",
            str(wrong),
            "--input",
            str(files[0]),
            "--method",
            "gradient",
        ],
        "missing weights": [
            "analyze",
            "--model",
            FACTORY,
            "--weights",
            str(tmp / "none.pt"),
            "--input",
            str(files[0]),
            "--method",
            "gradient",
        ],
        "missing model": [
            "analyze",
            "--model",
            str(tmp / "no.pt"),
            "--input",
            str(files[0]),
            "--method",
            "gradient",
        ],
        "unimportable factory": [
            "analyze",
            "--model",
            "no_such_module:f",
            "--input",
            str(files[0]),
            "--method",
            "gradient",
        ],
        "bad option": [
            "analyze",
            *good,
            "--input",
            str(files[0]),
            "--method",
            "gradient",
            "--option",
            "postprocess=cube",
        ],
        "usage": ["analyze", "--model", FACTORY],
    }


CASES = [
    "missing input",
    "undecodable image",
    "unknown method",
    "neuron out of range",
    "weights do not fit",
    "missing weights",
    "missing model",
    "unimportable factory",
    "bad option",
    "usage",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_status_2(tmp_path, weights, inputs, case, capsys):
    argv = _error_cases(tmp_path, weights[0], inputs[0])[case]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse usage errors exit from inside parse_args
        status = exit_.code
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("innspect"), captured.err
    assert "Traceback" not in captured.err


def test_debug_shows_the_exception(tmp_path, weights, inputs):
    argv = _error_cases(tmp_path, weights[0], inputs[0])["missing input"]
    with pytest.raises(CLIError, match="not found"):
        main(["--debug", *argv])


def test_module_entry_point_exit_status(tmp_path):
    """`python -m innspect` runs the same main: success, then a bad input with status 2."""
    ok = subprocess.run(
        [sys.executable, "-m", "innspect", "methods"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert ok.returncode == 0 and "gradient" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "innspect",
            "analyze",
            "--model",
            FACTORY,
            "--input",
            str(tmp_path / "missing.png"),
            "--method",
            "gradient",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip() == f"innspect: error: input file not found: {tmp_path / 'missing.png'}"
    )
