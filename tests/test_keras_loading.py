"""``innspect.load_keras`` against Keras itself: models built and saved by Keras 3 (torch
backend, a test dependency) in ``.keras`` and legacy ``.h5``, rebuilt with h5py alone, give
Keras's outputs to 1e-5 (float32) on random inputs; bad files give one-line errors.

Many layers go into a few models (one per layout family) to keep Keras's build time small.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402 - the test extra installs it: missing, the suite fails loudly

# A TensorFlow install could make Keras choose its backend before this module sets it.
assert keras.backend.backend() == "torch", "these tests build models with Keras's torch backend"
layers = keras.layers

import innspect  # noqa: E402
from innspect.cli import main  # noqa: E402
from innspect.errors import LoadingError  # noqa: E402
from innspect.loading.models import ModelSpec, load_model, model_fingerprint  # noqa: E402

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
# Keras 3 on NumPy 2 warns on every variable it converts: noise here, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _randomise(model: keras.Model, seed: int) -> None:
    """Non-zero biases, non-trivial batch-norm statistics (positive variances)."""
    rng = np.random.default_rng(seed)
    for layer in _leaves(model):
        weights = layer.get_weights()
        if not weights:
            continue
        fresh = [rng.normal(0, 0.4, w.shape).astype(np.float32) for w in weights]
        if isinstance(layer, layers.BatchNormalization):
            fresh[-1] = rng.uniform(0.3, 2.0, weights[-1].shape).astype(np.float32)
        if isinstance(layer, layers.Normalization):
            fresh = [w for w in weights]
            fresh[0] = rng.normal(0, 1, weights[0].shape).astype(np.float32)
            fresh[1] = rng.uniform(0.3, 2.0, weights[1].shape).astype(np.float32)
        layer.set_weights(fresh)


def _leaves(model: keras.Model) -> list:
    out = []
    for layer in model.layers:
        out.extend(_leaves(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def image_model() -> keras.Model:
    """Channels-last 2-D layers, functional: odd sizes so that 'same' pads unevenly."""
    x = keras.Input((9, 10, 3), name="img")
    a = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv_s2")(x)
    b = layers.Conv2D(6, 2, padding="same", use_bias=False, name="conv_even")(a)
    b = layers.BatchNormalization(name="bn")(b)
    b = layers.Activation("selu", name="act_selu")(b)
    c = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(a)
    c = layers.Conv2D(6, 1, name="dw_proj", activation="tanh")(c)
    d = layers.SeparableConv2D(6, 3, padding="same", activation="elu", name="sep")(a)
    d = layers.Conv2D(6, 3, padding="valid", dilation_rate=2, name="dil")(
        layers.ZeroPadding2D(((2, 2), (2, 4)), name="zpad")(d)
    )
    d = layers.Cropping2D(((0, 0), (1, 1)), name="crop")(d)
    merged = layers.Add(name="add")([b, c])
    merged = layers.Subtract(name="sub")([merged, d])
    m2 = layers.Multiply(name="mul")([layers.Activation("sigmoid", name="sig")(b), c])
    m3 = layers.Average(name="avg")([merged, m2])
    # Keras's default PReLU has a slope per position; shared_axes=[1] one per (column, channel).
    e = layers.PReLU(name="prelu_pos")(d)
    e = layers.PReLU(shared_axes=[1], name="prelu_rows")(e)
    e = layers.ReLU(threshold=0.2, name="relu_thr")(e)
    e = layers.ReLU(threshold=0.1, max_value=0.5, name="relu_thr_max")(e)
    m4 = layers.Maximum(name="max")([m3, layers.LeakyReLU(name="leaky")(d), e])
    m5 = layers.Minimum(name="min")([m4, layers.ReLU(max_value=6.0, name="relu6")(merged)])
    cat = layers.Concatenate(name="cat")([m5, layers.PReLU(shared_axes=[1, 2], name="prelu")(m3)])
    cat = layers.SpatialDropout2D(0.3, name="sdrop")(cat)
    cat = layers.GaussianNoise(0.2, name="noise")(cat)
    p1 = layers.MaxPooling2D(3, strides=2, padding="same", name="maxp")(cat)
    p2 = layers.AveragePooling2D(2, padding="same", name="avgp")(cat)
    p2 = layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="deconv_same")(p2)
    p2 = layers.Conv2DTranspose(4, 2, strides=1, padding="valid", name="deconv_valid")(p2)
    p2 = layers.UpSampling2D(2, name="up")(p2)
    p3 = layers.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(p1)
    g1 = layers.GlobalAveragePooling2D(name="gap")(p2)
    g2 = layers.GlobalMaxPooling2D(name="gmp")(p3)
    h = layers.Concatenate(axis=1, name="cat_axis1")([p1, p1])
    h = layers.Permute((3, 1, 2), name="perm")(h)
    h = layers.Reshape((-1, 6), name="reshape")(h)
    h = layers.LayerNormalization(name="ln")(h)
    h = layers.Dense(4, activation="gelu", name="dense_rank3")(h)
    h = layers.Flatten(name="flat")(h)
    h = layers.Dropout(0.5, name="drop")(h)
    z = layers.Concatenate(name="feats")([g1, g2, h])
    z = layers.Activation("swish", name="act_swish")(z)
    z = layers.Dense(7, activation="softplus", name="fc")(z)
    z = layers.ELU(alpha=0.7, name="elu")(z)
    z = layers.Activation("softsign", name="act_softsign")(z)
    z = layers.Activation("hard_sigmoid", name="act_hsig")(z)
    return keras.Model(x, layers.Dense(5, name="logits")(z), name="image_model")


def sequence_model() -> keras.Model:
    """1-D layers, Sequential, ending in softmax."""
    return keras.Sequential(
        [
            keras.Input((11, 3)),
            layers.Rescaling(0.5, offset=0.1, name="rescale"),
            layers.Normalization(axis=-1, name="norm"),
            layers.Conv1D(4, 3, padding="causal", dilation_rate=2, name="causal"),
            layers.Conv1D(5, 2, strides=2, padding="same", activation="relu", name="c_s2"),
            layers.DepthwiseConv1D(3, padding="same", name="dw1"),
            layers.SeparableConv1D(4, 2, padding="same", name="sep1"),
            layers.ZeroPadding1D((1, 2), name="zp1"),
            layers.Cropping1D((0, 1), name="cr1"),
            layers.MaxPooling1D(2, padding="same", name="mp1"),
            layers.UpSampling1D(3, name="up1"),
            layers.AveragePooling1D(3, strides=2, padding="same", name="ap1"),
            layers.Conv1DTranspose(3, 3, strides=2, name="deconv1"),
            layers.BatchNormalization(center=False, name="bn1"),
            layers.Dense(3, name="dense_seq"),
            layers.Flatten(name="flat1"),
            layers.RepeatVector(2, name="rep"),
            layers.GlobalMaxPooling1D(name="gmp1"),
            layers.Dense(4, activation="softmax", name="probs"),
        ],
        name="sequence_model",
    )


def volume_model() -> keras.Model:
    """3-D layers, Sequential."""
    return keras.Sequential(
        [
            keras.Input((5, 6, 7, 2)),
            layers.Conv3D(3, 3, strides=2, padding="same", activation="relu", name="c3"),
            layers.ZeroPadding3D(1, name="zp3"),
            layers.MaxPooling3D(2, padding="same", name="mp3"),
            layers.UpSampling3D(2, name="up3"),
            layers.Cropping3D(((1, 0), (0, 1), (1, 1)), name="cr3"),
            layers.AveragePooling3D(2, padding="same", name="ap3"),
            layers.Conv3DTranspose(2, 2, strides=2, name="deconv3"),
            layers.BatchNormalization(scale=False, name="bn3"),
            layers.GlobalAveragePooling3D(keepdims=True, name="gap3"),
            layers.Flatten(name="flat3"),
            layers.Dense(3, name="out3"),
        ],
        name="volume_model",
    )


def nested_model() -> keras.Model:
    """A nested Sequential called twice, a nested functional model, a shared Dense (shared
    weights), two inputs."""
    inner = keras.Sequential(
        [
            keras.Input((6,)),
            layers.Dense(5, activation="relu", name="d_in"),
            layers.BatchNormalization(name="bn_in"),
        ],
        name="inner",
    )
    i = keras.Input((5,))
    h = layers.Dense(5, activation="tanh", name="enc_dense")(i)
    encoder = keras.Model(i, layers.Add(name="enc_res")([i, h]), name="encoder")  # functional
    shared = layers.Dense(4, name="shared")
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    s1, s2 = shared(encoder(inner(a))), shared(inner(b))
    dot = layers.Dot(axes=1, normalize=True, name="cosine")([s1, s2])
    out = layers.Concatenate(name="cat")([s1, s2, dot])
    return keras.Model([a, b], layers.Dense(3, name="out")(out), name="nested")


def dot_model() -> keras.Model:
    """Dot of rank-3 inputs on either axis, a Softmax layer inside the model, keepdims."""
    a, b = keras.Input((4, 3), name="a"), keras.Input((5, 3), name="b")
    last = layers.Dot(axes=2, name="dot_last")([a, b])  # (4, 5)
    first = layers.Dot(axes=(1, 1), name="dot_first")([last, last])  # (5, 5)
    pooled = layers.GlobalMaxPooling1D(keepdims=True, name="gmp_keep")(
        layers.Softmax(name="sm")(first)
    )
    # Keras's batch_dot beyond rank 3, and of a rank-2 with a rank-3 input.
    blocks = layers.Reshape((2, 2, 3), name="blocks")(a)
    rank4 = layers.Dot(axes=3, name="dot_rank4")([blocks, blocks])  # (2, 2, 2, 2)
    mean = layers.GlobalAveragePooling1D(name="mean")(a)  # (3,)
    mixed = layers.Dot(axes=(1, 2), name="dot_mixed")([mean, b])  # (5,)
    flat = [layers.Flatten(name=f"flat_{i}")(t) for i, t in enumerate((pooled, rank4))]
    features = layers.Concatenate(name="features")([*flat, mixed])
    return keras.Model([a, b], layers.Dense(2, name="out")(features))


def channels_first_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((2, 8, 7)),
            layers.Conv2D(3, 3, padding="same", strides=2, data_format="channels_first", name="c"),
            layers.BatchNormalization(axis=1, name="bn"),
            layers.MaxPooling2D(2, padding="same", data_format="channels_first", name="mp"),
            layers.Flatten(data_format="channels_first", name="flat"),
            layers.Dense(3, name="out"),
        ],
        name="channels_first",
    )


def embedding_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            layers.Embedding(10, 4, name="emb"),
            layers.Conv1D(3, 2, name="conv"),
            layers.GlobalAveragePooling1D(name="gap"),
            layers.Dense(2, name="out"),
        ],
        name="embedding",
    )


BUILDERS = {
    "image": image_model,
    "sequence": sequence_model,
    "volume": volume_model,
    "nested": nested_model,
    "dot": dot_model,
    "channels_first": channels_first_model,
    "embedding": embedding_model,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[keras.Model, Path]]:
    folder = tmp_path_factory.mktemp("keras")
    models = {}
    for seed, (name, build) in enumerate(BUILDERS.items()):
        keras.utils.set_random_seed(seed)
        model = build()
        _randomise(model, seed)
        model.save(folder / f"{name}.keras")
        model.save(folder / f"{name}.h5")  # Keras 3 still writes legacy HDF5
        models[name] = (model, folder)
    return models


def _inputs(model: keras.Model, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for tensor in model.inputs:
        shape = (4, *tensor.shape[1:])
        if "int" in str(tensor.dtype):
            out.append(rng.integers(0, 10, shape).astype(np.int32))
        else:
            out.append(rng.normal(0, 1, shape).astype(np.float32))
    return out


def _keras_output(model: keras.Model, xs: list[np.ndarray]) -> np.ndarray:
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    return keras.ops.convert_to_numpy(out)


@pytest.mark.parametrize("suffix", ["keras", "h5"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_outputs_equal_keras(saved, name: str, suffix: str) -> None:
    model, folder = saved[name]
    loaded = innspect.load_keras(folder / f"{name}.{suffix}")
    assert not loaded.training
    xs = _inputs(model, seed=len(name))
    expected = _keras_output(model, xs)
    with torch.no_grad():
        actual = loaded(*[torch.as_tensor(x) for x in xs]).numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOLERANCE)


def test_every_keras_layer_is_a_named_torch_layer(saved) -> None:
    model, folder = saved["image"]
    loaded = innspect.load_keras(folder / "image.keras")
    modules = dict(loaded.named_modules())
    assert isinstance(modules["conv_s2"], torch.nn.Conv2d)
    assert isinstance(modules["conv_s2_relu"], torch.nn.ReLU)  # activation= after the layer
    assert isinstance(modules["bn"], torch.nn.BatchNorm2d)
    assert modules["bn"].eps == pytest.approx(1e-3)  # Keras's default, not torch's
    assert isinstance(modules["logits"], torch.nn.Linear)
    assert isinstance(modules["leaky"], torch.nn.LeakyReLU)
    assert modules["leaky"].negative_slope == pytest.approx(0.3)  # Keras's default
    assert isinstance(modules["prelu_pos"], torch.nn.PReLU)  # on the flattened positions
    assert modules["prelu_pos"].num_parameters == 5 * 5 * 6
    assert isinstance(modules["relu_thr"], torch.nn.Threshold)
    dw = modules["dw"]
    assert isinstance(dw, torch.nn.Conv2d) and dw.groups == 6 and dw.out_channels == 12
    nested = dict(innspect.load_keras(folder / "nested.h5").named_modules())
    assert isinstance(nested["inner.d_in"], torch.nn.Linear)
    assert "shared" in nested and "shared_1" not in nested  # one module, called twice


def test_channels_first_input_layout(saved) -> None:
    model, folder = saved["image"]
    loaded = innspect.load_keras(folder / "image.h5", input_layout="torch")
    (x,) = _inputs(model, seed=3)
    with torch.no_grad():
        actual = loaded(torch.as_tensor(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(actual, _keras_output(model, [x]), **TOLERANCE)
    with pytest.raises(LoadingError, match="input_layout"):
        innspect.load_keras(folder / "image.h5", input_layout="nchw")


def test_gradient_equals_keras_gradient_in_keras_layout(saved) -> None:
    """Attributions come back in Keras's layout: innspect's gradient is Keras's own (Keras 3
    on torch differentiates with autograd), axis for axis."""
    model, folder = saved["image"]
    loaded = innspect.load_keras(folder / "image.keras")
    (x,) = _inputs(model, seed=5)
    expected_out = _keras_output(model, [x])
    index = expected_out.argmax(axis=1)
    inputs = torch.tensor(x, requires_grad=True)
    out = model(inputs, training=False)
    out[torch.arange(len(x)), torch.as_tensor(index)].sum().backward()
    analysis = innspect.create_analyzer("gradient", loaded).analyze(x)
    assert analysis.shape == x.shape
    np.testing.assert_allclose(np.asarray(analysis), inputs.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_final_softmax_is_kept_flagged_and_removable(saved) -> None:
    model, folder = saved["sequence"]
    loaded = innspect.load_keras(folder / "sequence.keras")
    assert loaded.keras_softmax == "probs_softmax"
    (x,) = _inputs(model, seed=1)
    with pytest.raises(innspect.OutputActivationError, match="model_wo_softmax"):
        innspect.create_analyzer("gradient", loaded).analyze(x)
    stripped = innspect.model_wo_softmax(loaded)
    with torch.no_grad():
        logits = stripped(torch.as_tensor(x))
        torch.testing.assert_close(torch.softmax(logits, -1), loaded(torch.as_tensor(x)))
    assert innspect.create_analyzer("gradient", stripped).analyze(x).shape == x.shape
    assert innspect.load_keras(folder / "image.keras").keras_softmax is None


def test_model_specs_name_keras_files(saved, tmp_path: Path) -> None:
    """--model keras:FILE, and the ModelSpec Ray workers rebuild from: the same weights."""
    _, folder = saved["image"]
    path = str(folder / "image.h5")
    direct = innspect.load_keras(path)
    loaded = load_model(f"keras:{path}", None)
    assert not loaded.random_weights
    spec = ModelSpec(f"keras:{path}")
    assert model_fingerprint(spec.load()) == model_fingerprint(direct)
    assert model_fingerprint(load_model(path, None).module) == model_fingerprint(direct)


def test_cli_analyzes_a_keras_file(saved, tmp_path: Path) -> None:
    model, folder = saved["image"]
    (x,) = _inputs(model, seed=2)
    np.save(tmp_path / "sample.npy", x[0])
    out = tmp_path / "out"
    argv = ["analyze", "--model", f"keras:{folder / 'image.keras'}", "--input"]
    status = main([*argv, str(tmp_path / "sample.npy"), "--method", "gradient", "--out", str(out)])
    assert status == 0
    (result,) = out.glob("*gradient.npy")
    assert np.load(result).shape[-3:] == x.shape[1:]  # in Keras's layout, as given
    # The heatmap is drawn with the channels first again: an H x W picture of the sample.
    from PIL import Image

    with Image.open(out / result.name.replace(".npy", ".png")) as heatmap:
        assert heatmap.size == (x.shape[2], x.shape[1])


# -- bad files ---------------------------------------------------------------------------------
def _expect_error(path: Path, *patterns: str) -> str:
    with pytest.raises(LoadingError) as info:
        innspect.load_keras(path)
    message = str(info.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_truncated_files(saved, tmp_path: Path) -> None:
    _, folder = saved["image"]
    for suffix in ("h5", "keras"):
        data = (folder / f"image.{suffix}").read_bytes()
        bad = tmp_path / f"cut.{suffix}"
        bad.write_bytes(data[: len(data) // 2])
        _expect_error(bad, str(bad))


def test_unsupported_layers_are_named(tmp_path: Path) -> None:
    model = keras.Sequential(
        [keras.Input((5, 3)), layers.LSTM(4, name="recurrent"), layers.Dense(2)]
    )
    model.save(tmp_path / "lstm.keras")
    _expect_error(tmp_path / "lstm.keras", "'recurrent'", "(LSTM)", "lstm.keras", "not supported")
    model = keras.Sequential([keras.Input((3,)), layers.Lambda(lambda t: t * 2, name="code")])
    model.save(tmp_path / "lambda.h5")
    _expect_error(tmp_path / "lambda.h5", "'code'", "(Lambda)", "never runs")


def test_keras_zip_without_weights_and_savedmodel_folder(saved, tmp_path: Path) -> None:
    _, folder = saved["nested"]
    with zipfile.ZipFile(folder / "nested.keras") as archive:
        config = archive.read("config.json")
    bad = tmp_path / "noweights.keras"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("config.json", config)
    _expect_error(bad, "no model.weights.h5", "model.save")
    saved_model = tmp_path / "exported"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"\x08\x01")
    _expect_error(saved_model, "SavedModel", "model.save('model.keras')")
    _expect_error(tmp_path / "missing.h5", "not found")
    weights_only = tmp_path / "w.weights.h5"
    saved["nested"][0].save_weights(weights_only)
    _expect_error(weights_only, "not a Keras model")


def test_cli_exit_status_2_on_bad_files(saved, tmp_path: Path, capsys) -> None:
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((9, 10, 3), np.float32))
    bad = tmp_path / "cut.h5"
    bad.write_bytes((saved["image"][1] / "image.h5").read_bytes()[:5000])
    argv = ["analyze", "--model", f"keras:{bad}", "--input", str(sample), "--method", "gradient"]
    status = main(argv)
    assert status == 2
    assert "cut.h5" in capsys.readouterr().err


def test_config_is_never_evaluated(saved, tmp_path: Path) -> None:
    """A config naming an unknown class is refused by name, not imported."""
    _, folder = saved["nested"]
    with zipfile.ZipFile(folder / "nested.keras") as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["layers"][-1]["class_name"] = "os.system"
    files["config.json"] = json.dumps(config).encode()
    bad = tmp_path / "evil.keras"
    with zipfile.ZipFile(bad, "w") as archive:
        for n, data in files.items():
            archive.writestr(n, data)
    _expect_error(bad, "(os.system)", "not supported")


def test_patterns_and_lrp_run_on_a_loaded_model(tmp_path: Path) -> None:
    """The rebuilt module is an ordinary innspect model: PatternComputer's statistics pass
    (which flattens weight gradients) and LRP run on it, attributions in Keras's layout, and
    LRP-z conserves relevance on a bias-free ReLU network."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            layers.Conv2D(4, 3, padding="same", activation="relu", use_bias=False, name="c"),
            layers.MaxPooling2D(name="mp"),
            layers.Flatten(name="flat"),
            layers.Dense(3, use_bias=False, name="logits"),
        ]
    )
    model.save(tmp_path / "small.keras")
    loaded = innspect.load_keras(tmp_path / "small.keras")
    (x,) = _inputs(model, seed=4)
    patterns = innspect.patterns.PatternComputer(loaded, pattern_type="relu").compute(x)
    attribution = innspect.create_analyzer("pattern.attribution", loaded, patterns=patterns)
    assert np.asarray(attribution.analyze(x)).shape == x.shape
    relevance = np.asarray(innspect.create_analyzer("lrp.z", loaded).analyze(x))
    logits = _keras_output(model, [x]).max(axis=1)
    np.testing.assert_allclose(relevance.reshape(len(x), -1).sum(axis=1), logits, rtol=1e-4)


def test_inputs_of_unknown_length(tmp_path: Path) -> None:
    """Input((None, C)): uneven 'same' and causal padding, cropping and transposed
    convolutions that do not depend on the length the module was built with."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            layers.Conv1D(4, 2, padding="same", name="even"),
            layers.Conv1D(4, 3, padding="causal", dilation_rate=2, name="causal"),
            layers.Cropping1D((1, 2), name="crop"),
            layers.Conv1DTranspose(3, 2, strides=2, padding="same", name="deconv"),
            layers.GlobalAveragePooling1D(name="gap"),
            layers.Dense(2, name="out"),
        ]
    )
    _randomise(model, 5)
    model.save(tmp_path / "variable.keras")
    loaded = innspect.load_keras(tmp_path / "variable.keras")
    rng = np.random.default_rng(0)
    for length in (7, 40):
        x = rng.normal(size=(2, length, 3)).astype(np.float32)
        with torch.no_grad():
            actual = loaded(torch.as_tensor(x)).numpy()
        np.testing.assert_allclose(actual, _keras_output(model, [x]), **TOLERANCE)
    strided = keras.Sequential(
        [keras.Input((None, 3)), layers.Conv1D(2, 3, strides=2, padding="same", name="s2")]
    )
    strided.save(tmp_path / "strided.keras")
    _expect_error(tmp_path / "strided.keras", "'s2'", "unknown size", "fixed input shape")


def test_hard_sigmoid_follows_the_files_keras_version(tmp_path: Path) -> None:
    """tf.keras 2.x's hard_sigmoid is clip(0.2 x + 0.5, 0, 1), Keras 3's relu6(x + 3) / 6: the
    same layer read from a file that says keras_version 2.14.0 computes the former."""
    model = keras.Sequential([keras.Input((4,)), layers.Activation("hard_sigmoid", name="hs")])
    model.save(tmp_path / "hs.h5")
    x = torch.linspace(-4, 4, 12).reshape(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            innspect.load_keras(tmp_path / "hs.h5")(x), (x + 3).clamp(0, 6) / 6
        )
        with h5py.File(tmp_path / "hs.h5", "r+") as f:
            f.attrs["keras_version"] = "2.14.0"
        torch.testing.assert_close(
            innspect.load_keras(tmp_path / "hs.h5")(x), (0.2 * x + 0.5).clamp(0, 1)
        )


def test_evaluate_scores_a_keras_file_from_the_command_line(saved, tmp_path: Path) -> None:
    """``innspect evaluate --model keras:FILE``: the sample in Keras's layout, as analyze."""
    model, folder = saved["image"]
    (x,) = _inputs(model, seed=3)
    np.save(tmp_path / "a.npy", x[0])
    np.save(tmp_path / "b.npy", x[1])
    out = tmp_path / "scores"
    argv = ["evaluate", "--model", f"keras:{folder / 'image.h5'}", "--input"]
    argv += [str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--method", "gradient"]
    argv += ["--metric", "sparseness", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    # The same scores as the library on the loaded model, inputs in Keras's layout.
    from innspect.evaluation import Sparseness

    loaded = innspect.load_keras(folder / "image.h5")
    batch = torch.as_tensor(x[:2])
    targets = torch.as_tensor(results["targets"])
    analyzer = innspect.create_analyzer("gradient", loaded, neuron_selection_mode="index")
    attributions = analyzer.analyze(batch, neuron_selection=targets)
    expected = Sparseness()(loaded, batch, targets, attributions).scores
    np.testing.assert_allclose(results["scores"]["gradient"]["sparseness"], expected, rtol=1e-6)


def test_an_inntrospect_config_naming_a_keras_file_runs_as_written(saved, tmp_path: Path) -> None:
    """iNNtrospect's configs name the Keras model file itself (``model_path: model.h5``) and
    Keras layer names; both work unchanged, and the profiles are the layer's mean output."""
    from innspect.introspect import Naps
    from innspect.introspect.collect import collect

    model, folder = saved["image"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for k, group in enumerate(["a", "b", "a", "b"]):
        batch = rng.normal(size=(3, 9, 10, 3)).astype(np.float32)  # Keras's layout
        np.save(corpus / f"batch{k}.npy", batch)
        rows.append(f"batch{k}.npy,{group}")
    (corpus / "corpus.csv").write_text("\n".join(rows) + "\n")
    config = {
        "model_path": str(folder / "image.h5"),
        "data_path": str(corpus),
        "processed_corpus_path": str(tmp_path / "out"),
        "layer_names_of_interest": ["conv_s2"],
        "layout": "graph",
        "projection": "pca",
        "projection_samples": 2,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["introspect", "--config", str(path)]) == 0
    profiles = Naps.load(tmp_path / "out" / "naps")
    expected = collect(innspect.load_keras(folder / "image.h5"), corpus, layers=["conv_s2"])
    np.testing.assert_allclose(profiles["conv_s2"], expected["conv_s2"], rtol=1e-6, atol=1e-7)
