"""`innspect analyze` and `innspect methods`, and the one-line errors with exit status 2."""

from __future__ import annotations

import json
import re
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
from innspect.cli.analyze import heatmap_rgb
from innspect.errors import LoadingError
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
    printed = [line for line in capsys.readouterr().out.splitlines() if f": {method}: " in line]
    assert len(printed) == 2 and "neuron" in printed[0] and "score" in printed[0]
    _check_outputs(out, files, tensors, model, method)


@pytest.mark.parametrize("method", ["gradient", "deconvnet", "lrp.epsilon"])
def test_analyze_torchscript_model_equals_library(tmp_path, weights, inputs, method, capfd):
    _, model = weights
    files, tensors = inputs
    script = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(model).save(str(script))
    out = tmp_path / "out"
    argv = ["analyze", "--model", str(script), "--method", method, "--out", str(out)]
    assert main([*argv, "--input", *map(str, files)]) == 0
    # torch.export's warnings and log lines (on the conversion path) stay off the terminal.
    assert capfd.readouterr().err == ""
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
    with pytest.raises(LoadingError, match="not found"):
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


# -- several methods, overlays, the comparison figure and the report ---------------------------
THREE = ["gradient", "lrp.epsilon", "integrated_gradients"]


def _photo(path: Path, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth colour picture (ramps and a blob), so resampling errors stay small."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    rng = np.random.default_rng(seed)
    cx, cy = rng.random(2) * 0.6 + 0.2
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02)
    rgb = np.stack([x, y, blob], axis=-1)
    pixels = (rgb / rgb.max() * 255).round().astype(np.uint8)
    Image.fromarray(pixels, mode="RGB").save(path)
    return pixels


def test_three_methods_on_two_images_write_grid_overlays_and_report(tmp_path, capsys):
    from innspect.analyzers.registry import create_analyzer
    from innspect.cli.report import COMPARISON_LAYOUT, COMPARISON_MAX_COLUMNS
    from innspect.loading.inputs import load_input
    from tests.cli_models import rgb_cnn

    images = [tmp_path / "cat.png", tmp_path / "dog.png"]
    _photo(images[0], (40, 30), seed=1)
    _photo(images[1], (24, 36), seed=2)
    torch.manual_seed(3)
    model = rgb_cnn().eval()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["cat", "dog", "bird", "fish", "frog"]) + "\n")
    out = tmp_path / "out"
    argv = ["analyze", "--model", "tests.cli_models:rgb_cnn", "--weights", str(weights)]
    argv += ["--labels", str(labels), "--out", str(out), "--report", "--method", *THREE]
    assert main([*argv, "--input", *map(str, images)]) == 0
    printed = capsys.readouterr().out
    assert "preprocessing: none" in printed  # a factory's default, stated

    summary = json.loads((out / "results.json").read_text())
    assert [item["name"] for item in summary["inputs"]] == ["cat", "dog"]
    for image, item in zip(images, summary["inputs"], strict=True):
        x = load_input(image, "none").tensor[None]
        logits = model(x)[0].detach()
        assert item["prediction"] == int(logits.argmax())
        assert item["prediction_name"] == ["cat", "dog", "bird", "fish", "frog"][item["prediction"]]
        for method in THREE:
            info = item["methods"][method]
            expected = create_analyzer(method, model).analyze(x)[0].detach().numpy()
            np.testing.assert_allclose(np.load(out / info["files"]["npy"]), expected, atol=1e-5)
            assert info["score"] == pytest.approx(float(logits.max()), rel=1e-5)
            with Image.open(out / info["files"]["overlay"]) as overlay:
                assert min(overlay.size) >= 200  # enlarged, with room for the colour bar
            assert f"{method} on {item['name']}" in (out / "index.html").read_text()
    with Image.open(out / "comparison.png") as grid:
        assert grid.size == COMPARISON_LAYOUT.size(2, 1 + len(THREE), COMPARISON_MAX_COLUMNS, 1)
    page = (out / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 1 + 2 * len(THREE)  # the grid and one overlay per input and method
    assert all(source.startswith("data:image/png;base64,") for source in sources)


def test_overlay_maps_the_attribution_back_through_resize_and_crop(tmp_path):
    """ImageNet preprocessing of a 128 x 160 picture: resize x2 to 256 x 320, crop 224 at
    (16, 48). Carried back, the crop covers (8, 24)-(120, 136) of the picture, where each
    picture pixel is the mean of a 2 x 2 block of the model-input map."""
    from innspect.loading.inputs import load_input

    picture = _photo(tmp_path / "photo.png", (128, 160))
    sample = load_input(tmp_path / "photo.png", "imagenet")
    assert sample.geometry.crop == (16, 48, 224, 224)
    assert sample.geometry.crop_in_original() == (8, 24, 120, 136)
    raw = np.random.default_rng(0).normal(size=(224, 224))
    back = sample.geometry.to_original(raw)
    assert back.shape == (160, 128)
    inside = back[24:136, 8:120]
    np.testing.assert_allclose(inside, raw.reshape(112, 2, 112, 2).mean(axis=(1, 3)), atol=1e-12)
    outside = np.ones(back.shape, bool)
    outside[24:136, 8:120] = False
    assert np.isnan(back[outside]).all()
    # The model input itself, un-normalised and carried back, is the picture again: the
    # geometry describes what the preprocessing did (a wrong offset would shift it).
    from innspect.loading.inputs import IMAGENET_MEAN, IMAGENET_STD

    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    seen = sample.tensor.numpy() * std[:, None, None] + mean[:, None, None]
    red = sample.geometry.to_original(seen[0])[24:136, 8:120]
    assert np.abs(red - picture[24:136, 8:120, 0] / 255.0).max() < 0.03


def test_torchvision_defaults_to_imagenet_preprocessing_and_names_classes(tmp_path, capsys):
    import torchvision  # the test extra installs it: missing, the test fails

    _photo(tmp_path / "photo.png", (64, 48))
    model = torchvision.models.get_model("squeezenet1_1", weights=None)
    weights = tmp_path / "squeezenet.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "out"
    argv = ["analyze", "--model", "torchvision:squeezenet1_1", "--weights", str(weights)]
    assert (
        main(
            [
                *argv,
                "--input",
                str(tmp_path / "photo.png"),
                "--method",
                "gradient",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "preprocessing: imagenet" in printed
    categories = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT.meta["categories"]
    info = json.loads((out / "results.json").read_text())["inputs"][0]["methods"]["gradient"]
    assert info["class_name"] == categories[info["neuron"]]
    assert f"({categories[info['neuron']]})" in printed
    assert np.load(out / "photo_gradient.npy").shape == (3, 224, 224)
    with Image.open(out / "photo_gradient_overlay.png") as overlay:
        # The overlay is drawn on the whole 64 x 48 photo (enlarged 5x to 320 x 240), not on
        # the 224 x 224 crop; the colour bar and margins add 100 x 56 pixels.
        assert overlay.size == (320 + 100, 240 + 56)


def test_seed_makes_runs_repeat(tmp_path):
    png = tmp_path / "digit.png"
    Image.fromarray(np.arange(144, dtype=np.uint8).reshape(12, 12), mode="L").save(png)

    def run(seed: int, name: str) -> np.ndarray:
        argv = ["analyze", "--model", FACTORY, "--input", str(png), "--method", "smoothgrad"]
        argv += ["--option", "augment_by_n=4", "--seed", str(seed), "--out", str(tmp_path / name)]
        assert main(argv) == 0
        return np.load(tmp_path / name / "digit_smoothgrad.npy")

    first, again, other = run(5, "a"), run(5, "b"), run(6, "c")
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_a_folder_of_inputs_with_a_progress_bar(tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(np.full((12, 12), 40 * index, np.uint8), mode="L").save(
            folder / f"img{index}.png"
        )
    (folder / "notes.txt").write_text("not an input")
    out = tmp_path / "out"
    argv = ["analyze", "--model", FACTORY, "--input", str(folder), "--method", "gradient"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "analyzing" in capsys.readouterr().err  # tqdm's bar
    assert sorted(p.name for p in out.glob("*.npy")) == [f"img{i}_gradient.npy" for i in range(3)]


def test_strip_softmax_explains_the_logits(tmp_path, capsys):
    png = tmp_path / "digit.png"
    Image.fromarray(np.arange(144, dtype=np.uint8).reshape(12, 12), mode="L").save(png)
    argv = ["analyze", "--model", "tests.cli_models:softmax_cnn", "--input", str(png)]
    argv += ["--method", "gradient", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "--strip-softmax" in capsys.readouterr().err
    assert main([*argv, "--strip-softmax"]) == 0
    from tests.cli_models import softmax_cnn

    torch.manual_seed(0)  # the CLI's default seed gives the same random weights
    model = innspect.model_wo_softmax(softmax_cnn().eval())
    x = torch.as_tensor(np.arange(144, dtype=np.float32).reshape(1, 1, 12, 12) / 255)
    expected = innspect.create_analyzer("gradient", model).analyze(x)[0].numpy()
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "digit_gradient.npy"), expected, atol=1e-6
    )


def test_a_factory_in_the_current_folder_is_importable(tmp_path, monkeypatch):
    module = "innspect_user_net_for_test"
    (tmp_path / f"{module}.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))\n"
    )
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    argv = ["analyze", "--model", f"{module}:build", "--input", "x.npy", "--method", "gradient"]
    assert main(argv) == 0
    assert (tmp_path / "innspect-analysis" / "x_gradient.npy").is_file()  # the --out default


def test_sixteen_bit_and_grey_alpha_pngs_keep_their_data(tmp_path):
    from innspect.loading.inputs import load_input

    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")  # mode I;16
    loaded = load_input(tmp_path / "ramp16.png", "none").tensor
    assert loaded.shape == (1, 64, 64)
    assert len(torch.unique(loaded)) > 1000  # not squeezed into 8 bits, let alone 2 values
    np.testing.assert_allclose(loaded[0].numpy(), ramp / 65535.0, atol=1e-6)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    alpha = np.full((8, 8), 255, np.uint8)
    Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(tmp_path / "la.png")
    loaded = load_input(tmp_path / "la.png", "none").tensor
    assert loaded.shape == (1, 8, 8)
    np.testing.assert_allclose(loaded[0].numpy(), grey / 255.0, atol=1e-6)


def test_report_opens_in_a_headless_browser_with_every_image(tmp_path):
    from tests.browser import images_in_page

    png = tmp_path / "digit.png"
    Image.fromarray(np.arange(144, dtype=np.uint8).reshape(12, 12), mode="L").save(png)
    out = tmp_path / "out"
    argv = ["analyze", "--model", FACTORY, "--input", str(png), "--method", "gradient"]
    assert main([*argv, "lrp.z", "--out", str(out), "--report"]) == 0
    images = images_in_page(out / "index.html")
    assert len(images) == 3 and all(loaded for _, loaded in images), images


def _helpful_cases(tmp: Path, weights_path: Path, files: list[Path]) -> dict:
    """case -> (argv, a fragment the one-line message must contain)."""
    npy, png = map(str, files)
    good = ["--model", FACTORY, "--weights", str(weights_path)]
    blocker = tmp / "a_file"
    blocker.write_text("x")
    pickled = tmp / "whole_model.pt"
    torch.save(small_cnn(), pickled)
    labels = tmp / "labels.txt"
    labels.write_text("one\ntwo\n")
    return {
        "case-insensitive name": (
            [*good, "--input", npy, "--method", "LRP.Epsilon"],
            "did you mean 'lrp.epsilon'?",
        ),
        "misspelt name": (
            [*good, "--input", npy, "--method", "gradient", "lrp.epsilonn"],
            "did you mean 'lrp.epsilon'",
        ),
        "unknown option": (
            [*good, "--input", npy, "--method", "lrp.epsilon", "--option", "epsiln=0.1"],
            "did you mean 'epsilon'? valid options: bias, bn_layer_fuse_mode, bn_layer_rule,",
        ),
        "greyscale into a colour model": (
            ["--model", "tests.cli_models:rgb_cnn", "--input", png, "--method", "gradient"],
            "is greyscale (1 channel) but the model's first layer takes 3 channels",
        ),
        "out below a file": (
            [*good, "--input", npy, "--method", "gradient", "--out", str(blocker / "sub")],
            "cannot create --out folder",
        ),
        "out is a file": (
            [*good, "--input", npy, "--method", "gradient", "--out", str(blocker)],
            "exists and is not a folder",
        ),
        # /proc refuses new files even to root, who passes every permission bit check.
        "out not writable": (
            [*good, "--input", npy, "--method", "gradient", "--out", "/proc"],
            "--out folder /proc is not writable",
        ),
        "factory needs arguments": (
            ["--model", "tests.cli_models:needs_arguments", "--input", npy, "--method", "gradient"],
            "must build the model without arguments",
        ),
        "factory raises": (
            ["--model", "tests.cli_models:raises", "--input", npy, "--method", "gradient"],
            "this factory is broken on purpose",
        ),
        "whole pickled model as weights": (
            ["--model", FACTORY, "--weights", str(pickled), "--input", npy, "--method", "gradient"],
            "save model.state_dict() instead",
        ),
        "labels do not fit": (
            [*good, "--input", npy, "--method", "gradient", "--labels", str(labels)],
            "has 2 names but the model has 5 outputs",
        ),
        "nothing to strip": (
            [*good, "--input", npy, "--method", "gradient", "--strip-softmax"],
            "--strip-softmax",
        ),
        "unknown torchvision model": (
            ["--model", "torchvision:resnet19", "--input", npy, "--method", "gradient"],
            "did you mean resnet18",
        ),
        "output not a tensor": (
            ["--model", "tests.cli_models:dict_output", "--input", npy, "--method", "gradient"],
            "returns dict, not a tensor of scores",
        ),
        "input of the wrong size": (
            [*good, "--input", str(tmp / "big.npy"), "--method", "gradient"],
            "the model fails on",
        ),
        "empty folder": (
            [*good, "--input", str(tmp / "empty"), "--method", "gradient"],
            "no inputs in folder",
        ),
    }


HELPFUL_CASES = [
    "case-insensitive name",
    "misspelt name",
    "unknown option",
    "greyscale into a colour model",
    "out below a file",
    "out is a file",
    "out not writable",
    "factory needs arguments",
    "factory raises",
    "whole pickled model as weights",
    "labels do not fit",
    "nothing to strip",
    "unknown torchvision model",
    "empty folder",
    "output not a tensor",
    "input of the wrong size",
]


@pytest.mark.parametrize("case", HELPFUL_CASES)
def test_helpful_errors_are_one_line_with_status_2(tmp_path, weights, inputs, case, capsys):
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "big.npy", np.zeros((1, 20, 20), np.float32))
    argv, fragment = _helpful_cases(tmp_path, weights[0], inputs[0])[case]
    argv = ["analyze", *argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("innspect: warning")]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("innspect: error: "), err
    assert fragment in lines[0]
    assert "\x1b" not in err and "Traceback" not in err


def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch, capsys):
    from PIL import Image as PILImage

    png = tmp_path / "big.png"
    PILImage.fromarray(np.zeros((40, 40), np.uint8), mode="L").save(png)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 500)  # 1600 pixels: over twice that
    argv = ["analyze", "--model", FACTORY, "--input", str(png), "--method", "gradient"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "too large to decode safely" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["guided_backprop", "lrp.epsilon_plus_flat"])
def test_torchscript_with_batchnorm_and_inplace_residuals_equals_the_module(method):
    """A TorchScript ResNet-like model (in-place `+=` and ReLU, BatchNorm, pooling) converts
    to a graph every method explains exactly as the original module."""
    from innspect.graph.torchscript import torchscript_to_fx
    from tests.cli_models import residual_net

    model = residual_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = torchscript_to_fx(torch.jit.script(model), torch.zeros(1, 1, 8, 8))
    x = torch.randn(3, 1, 8, 8)
    expected = innspect.create_analyzer(method, model).analyze(x)
    got = innspect.create_analyzer(method, converted).analyze(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_methods_file_adds_names_and_options_go_where_they_are_taken(tmp_path, weights, inputs):
    weights_path, model = weights
    files, tensors = inputs
    listing = tmp_path / "methods.txt"
    listing.write_text("# my favourites\nlrp.epsilon  # stabilised\n\ngradient lrp.z\n")
    out = tmp_path / "out"
    argv = ["analyze", "--model", FACTORY, "--weights", str(weights_path), "--input"]
    argv += [str(files[0]), "--methods", str(listing), "--option", "epsilon=0.5"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["methods"] == {"lrp.epsilon": {"epsilon": 0.5}, "gradient": {}, "lrp.z": {}}
    expected = innspect.create_analyzer("lrp.epsilon", model, epsilon=0.5).analyze(tensors[0][None])
    np.testing.assert_allclose(np.load(out / "sample_lrp.epsilon.npy"), expected[0], atol=1e-6)


def test_help_loads_no_plotting_or_demo_code() -> None:
    """`innspect --help` imports every subcommand module to build the parser: they keep what
    loads matplotlib (the demo, introspection, the report) inside their run functions."""
    code = (
        "import sys\n"
        "from innspect.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('matplotlib', 'innspect.demo', 'innspect.introspect') "
        "if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
