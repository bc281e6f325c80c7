"""``evaluate_dataset`` with a mask (and Focus's mosaic labels) per sample: the localisation
metrics over a data set equal ``evaluate`` on the whole batch, whatever form the masks are
given in; a resumed run writes the bytes of a fresh one, and refuses a folder scored with
other masks; bad masks are errors naming the sample (the Ray backend:
tests/test_dataset_ray.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from innspect.demo.model import digits_cnn
from innspect.errors import InputError
from innspect.evaluation import evaluate, evaluate_dataset
from innspect.evaluation.dataset import EvaluationRunner

N, SIZE = 12, 32
METHODS = ["gradient", "lrp.epsilon"]
METRICS = [
    "pointing_game",
    "attribution_localisation",
    "top_k_intersection",
    "relevance_rank_accuracy",
    "relevance_mass_accuracy",
    "auc",
    "focus",
]
OPTIONS = {"top_k_intersection": {"k": 50}}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return digits_cnn().eval()


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, 1, SIZE, SIZE)).astype(np.float32)


def _masks(seed: int = 1) -> np.ndarray:
    """A rectangle per sample, each at its own place and of its own size."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((N, 1, SIZE, SIZE), dtype=bool)
    for i in range(N):
        top, left = rng.integers(0, SIZE - 12, 2)
        height, width = rng.integers(4, 12, 2)
        masks[i, 0, top : top + height, left : left + width] = True
    return masks


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    return _masks()


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    labels = np.random.default_rng(2).integers(0, 2, (N, 4)).astype(np.float64)
    labels[:, 0] = 1  # at least one quadrant of the explained class per mosaic
    return labels


def _run(model, data, out, masks, mosaic, **settings):
    settings = {"batch_size": 4, "shard_size": 8, "verbose": False, **settings}
    return evaluate_dataset(
        model, data, METHODS, METRICS, out, metric_options=OPTIONS, masks=masks,
        mosaic_labels=mosaic, **settings,
    )  # fmt: skip


def _shards(result) -> list[dict]:
    return json.loads((result.out / "index.json").read_text())["shards"]


@pytest.fixture(scope="module")
def first(model, data, masks, mosaic, tmp_path_factory):
    return _run(model, data, tmp_path_factory.mktemp("masks"), masks, mosaic)


def test_localisation_over_a_data_set_equals_evaluate_on_one_batch(
    model, data, masks, mosaic, first
) -> None:
    whole = evaluate(
        model, data, METHODS, METRICS, mask=masks, mosaic_labels=mosaic, metric_options=OPTIONS
    )
    # each sample against its own mask: a shifted assignment scores differently
    shifted = evaluate(
        model, data, METHODS, ["relevance_mass_accuracy"], mask=np.roll(masks, 1, axis=0)
    )
    for method in METHODS:
        for metric in METRICS:
            scores = first.scores(method, metric)
            expected = whole.scores(method, metric).numpy()
            assert scores.shape == (N,) and np.isfinite(scores).all()
            np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-12)
            summary = first.summaries[method][metric]
            assert summary.n == N
            assert summary.mean == pytest.approx(expected.mean(), rel=1e-10)
        assert not np.allclose(
            first.scores(method, "relevance_mass_accuracy"),
            shifted.scores(method, "relevance_mass_accuracy").numpy(),
        )
    assert len(_shards(first)) == 2


def test_every_form_of_masks_writes_the_same_shards(
    model, data, masks, mosaic, first, tmp_path
) -> None:
    """(N, H, W) masks, .npy files, functions of the sample index and a folder of masks named
    after the images: the same values, so the same shard bytes as the array of masks."""
    np.save(tmp_path / "masks.npy", masks[:, 0])  # without the channel axis
    np.save(tmp_path / "mosaic.npy", mosaic)
    inputs, folder = tmp_path / "inputs", tmp_path / "masks"
    inputs.mkdir()
    folder.mkdir()
    for i in range(N):
        np.save(inputs / f"s{i:02d}.npy", data[i])
        if i % 2:
            np.save(folder / f"s{i:02d}.npy", masks[i])
        else:  # an image: non-zero pixels are the object
            Image.fromarray(masks[i, 0].astype(np.uint8) * 255).save(folder / f"s{i:02d}.png")
    forms = {
        "channel-less": (data, torch.from_numpy(masks[:, 0]), mosaic),
        "npy": (data, tmp_path / "masks.npy", str(tmp_path / "mosaic.npy")),
        "functions": (data, lambda i: masks[i], lambda i: mosaic[i]),
        "folder": (inputs, folder, mosaic),
    }
    for name, (x, given_masks, given_mosaic) in forms.items():
        again = _run(model, x, tmp_path / name, given_masks, given_mosaic)
        assert _shards(again) == _shards(first), name


def test_a_resumed_run_equals_a_fresh_one_and_refuses_other_masks(
    model, data, masks, mosaic, first, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "run"
    _run(model, data, out, masks, mosaic)
    (out / "shard-00001.h5").unlink()
    calls = []
    original = EvaluationRunner.compute

    def counting(self, start, stop):
        calls.append((start, stop))
        return original(self, start, stop)

    monkeypatch.setattr(EvaluationRunner, "compute", counting)
    resumed = _run(model, data, out, masks, mosaic)
    assert calls == [(8, 12)]
    assert _shards(resumed) == _shards(first)  # the bytes of a fresh run

    # other masks for a sample of a written shard: refused, nothing computed
    other = masks.copy()
    other[9] = np.roll(other[9], 5, axis=-1)
    with pytest.raises(InputError, match=r"shard-00001.h5 \(samples 8..11\) was scored with other"):
        _run(model, data, out, other, mosaic)
    other_mosaic = mosaic.copy()
    other_mosaic[2] = 1 - other_mosaic[2]
    with pytest.raises(InputError, match=r"shard-00000.h5 .* other mosaic_labels"):
        _run(model, data, out, masks, other_mosaic)
    assert calls == [(8, 12)]
    # deleting the shard of the changed sample scores it again with the new masks
    (out / "shard-00001.h5").unlink()
    changed = _run(model, data, out, other, mosaic)
    assert calls == [(8, 12), (8, 12)]
    expected = evaluate(model, data, ["gradient"], ["pointing_game", "auc"], mask=other)
    for metric in ("pointing_game", "auc"):
        np.testing.assert_allclose(
            changed.scores("gradient", metric), expected.scores("gradient", metric), 1e-10
        )


def test_missing_and_misshapen_masks_name_the_sample(model, data, masks, mosaic, tmp_path):
    outs = iter(range(100))

    def run(given_masks, given_mosaic=mosaic, x=data, metrics=METRICS):
        return evaluate_dataset(
            model, x, METHODS, metrics, tmp_path / f"out{next(outs)}", masks=given_masks,
            mosaic_labels=given_mosaic, batch_size=4, shard_size=8, verbose=False,
        )  # fmt: skip

    with pytest.raises(InputError, match="holds 10 values for 12 samples: no mask for sample 10"):
        run(masks[:10])
    with pytest.raises(InputError, match="no mask for sample 7"):
        run(lambda i: None if i == 7 else masks[i])
    with pytest.raises(InputError, match=r"mask of sample 5 has shape \(5, 5\) but the sample"):
        run(lambda i: np.ones((5, 5)) if i == 5 else masks[i])
    with pytest.raises(InputError, match=r"mask of sample 0 has shape \(1, 16, 16\)"):
        run(masks[:, :, :16, :16])
    with pytest.raises(InputError, match="mask of sample 3 holds NaN"):
        run(lambda i: np.full((SIZE, SIZE), np.nan) if i == 3 else masks[i])
    with pytest.raises(InputError, match="mosaic labels of sample 0 must be 4 numbers"):
        run(masks, mosaic[:, :3])
    # a folder of masks: the missing file and the misshapen one are named
    inputs, folder = tmp_path / "inputs", tmp_path / "masks"
    inputs.mkdir()
    folder.mkdir()
    for i in range(N):
        np.save(inputs / f"s{i:02d}.npy", data[i])
        if i != 4:
            np.save(folder / f"s{i:02d}.npy", masks[i] if i != 9 else masks[i, :, :8])
    with pytest.raises(InputError, match=r"no mask for sample 4 \(s04.npy\) in .*s04.npy or"):
        run(folder, x=inputs)
    np.save(folder / "s04.npy", masks[4])
    with pytest.raises(InputError, match=r"mask of sample 9 \(s09.npy\) has shape \(1, 8, 32\)"):
        run(folder, x=inputs)
    with pytest.raises(InputError, match="is a folder: masks in a folder are paired"):
        run(folder)
    # a metric that needs masks without them, masks that no metric takes
    with pytest.raises(InputError, match="pointing_game needs a mask per sample: give"):
        run(None, None, metrics=["pointing_game"])
    with pytest.raises(InputError, match="focus needs mosaic labels per sample"):
        run(None, None, metrics=["focus"])
    with pytest.raises(InputError, match="masks= given but none of the metrics"):
        run(masks, None, metrics=["sparseness"])
