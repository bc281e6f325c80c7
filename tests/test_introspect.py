"""NAPs, alignment, layouts, topomaps, quality metrics and iNNtrospect's formats (arrays only).

The definition is ../shared/INTROSPECT.md; each test checks a property a wrong implementation
would break (formulas on concatenated data, hand-made maps, known clusters).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from innspect.errors import InputError
from innspect.introspect import (
    LAYOUT_METHODS,
    NapAccumulator,
    Naps,
    align_spatial,
    contrastive_naps,
    group_order,
    interpolate_topomaps,
    naps,
    plot_instance_projection,
    plot_topomaps,
    profile_matrix,
    read_corpus_csv,
    read_processed_corpus,
    topomap_activations,
    topomap_layout,
    topomap_quality,
)


def _group_means(acts: np.ndarray, labels: np.ndarray, names: list[str]) -> np.ndarray:
    return np.stack([acts[labels == g].astype(np.float64).mean(axis=0) for g in names])


def test_naps_equal_group_means_over_uneven_batches_and_merged_halves() -> None:
    rng = np.random.default_rng(1)
    n = 37
    acts = rng.normal(size=(n, 4, 3, 2)).astype(np.float32)  # NCHW, as PyTorch gives them
    dense = rng.normal(size=(n, 6)).astype(np.float32)
    labels = np.array([str(g) for g in rng.choice([2, 10, 7], size=n)])
    nhwc = np.moveaxis(acts, 1, -1)
    expected = _group_means(nhwc, labels, ["2", "7", "10"])  # integers sort numerically

    bounds = [0, 5, 16, 17, 30, 37]  # uneven batches; groups are split across them
    accumulators = [NapAccumulator(), NapAccumulator()]
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        batch = {"conv": np.moveaxis(acts[lo:hi], 1, -1), "fc": dense[lo:hi]}
        if k % 2:  # tensors and arrays both work
            batch = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in batch.items()}
        accumulators[k < 3].update(batch, labels[lo:hi])
    half = NapAccumulator.from_state_dict(accumulators[0].state_dict())
    merged = half.merge(accumulators[1]).result()
    assert merged.groups == ["2", "7", "10"]
    np.testing.assert_allclose(merged["conv"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        merged["fc"], _group_means(dense, labels, merged.groups), rtol=0, atol=1e-12
    )
    assert merged.group_sizes.tolist() == [int((labels == g).sum()) for g in merged.groups]
    one_pass = naps({"conv": acts, "fc": dense}, labels, channel_axis=1)
    np.testing.assert_allclose(one_pass["conv"], merged["conv"], rtol=0, atol=1e-12)


def _stream_peak(n_batches: int) -> int:
    rng = np.random.default_rng(0)
    accumulator = NapAccumulator()
    tracemalloc.start()
    for _ in range(n_batches):
        x = rng.normal(size=(16, 8, 8, 8))
        accumulator.update({"a": x}, rng.integers(0, 3, size=16))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    accumulator.result()
    return peak


def test_nap_memory_stays_flat_when_the_corpus_grows_tenfold() -> None:
    small, large = _stream_peak(10), _stream_peak(100)
    assert large < 1.3 * small


def test_alignment_moves_the_saliency_peak_to_the_centre_along_spatial_axes_only() -> None:
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(3, 5, 6, 4))
    grads = np.zeros_like(acts)
    grads[0, 0, 5, 1] = 3.0  # peak at (0, 5): shift by (+2, -2) to the centre (2, 3)
    grads[1, 4, 0, :] = -1.0  # |gradient|: peak at (4, 0), shift by (-2, +3)
    # sample 2: constant saliency, left unchanged
    out = align_spatial(acts, grads)
    expected0 = np.zeros_like(acts[0])
    expected0[2:, :4] = acts[0, :3, 2:]
    expected1 = np.zeros_like(acts[1])
    expected1[:3, 3:] = acts[1, 2:, :3]
    np.testing.assert_array_equal(out[0], expected0)
    np.testing.assert_array_equal(out[1], expected1)
    np.testing.assert_array_equal(out[2], acts[2])
    np.testing.assert_array_equal(out[0, 2, 3], acts[0, 0, 5])  # every channel kept in place
    tensor_out = align_spatial(torch.from_numpy(acts), torch.from_numpy(grads))
    np.testing.assert_array_equal(tensor_out.numpy(), out)

    aligned = naps(acts, ["a", "a", "b"], gradients=grads, align=True)
    np.testing.assert_allclose(aligned["layer"][0], (expected0 + expected1) / 2, atol=1e-12)


def test_contrastive_naps_match_the_formula_for_uniform_and_size_weights() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(3, 2, 5))
    profiles = Naps(["a", "b", "c"], np.array([1, 3, 6]), {"l": values})
    uniform = contrastive_naps(profiles)
    np.testing.assert_allclose(uniform["l"], values - values.mean(axis=0), atol=1e-12)
    sized = contrastive_naps(profiles, groups=["c", "a"], weight_by_group_size=True)
    assert sized.groups == ["a", "c"]
    mean = (1 * values[0] + 6 * values[2]) / 7
    np.testing.assert_allclose(sized["l"], values[[0, 2]] - mean, atol=1e-12)
    with pytest.raises(InputError, match="unknown group.*'z'.*available: a, b, c"):
        contrastive_naps(profiles, groups=["a", "z"])


def test_a_group_without_samples_and_a_batch_label_mismatch_are_errors() -> None:
    accumulator = NapAccumulator()
    accumulator.update({"l": np.ones((2, 3))}, ["a", "b"])
    with pytest.raises(InputError, match="'c' have no samples"):
        accumulator.result(groups=["a", "b", "c"])
    with pytest.raises(InputError, match="3 samples in this batch but 2 group labels"):
        accumulator.update({"l": np.ones((3, 3))}, ["a", "b"])
    with pytest.raises(InputError, match="no NAPs for layer 'x'; available: l"):
        accumulator.result()["x"]


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """NAPs (G, H, W, C) of 40 channels in 4 clusters of similar profiles."""
    rng = np.random.default_rng(0)
    prototypes = rng.normal(size=(4, 5, 3, 3))
    labels = np.repeat(np.arange(4), 10)
    nap = np.stack([prototypes[k] + 0.1 * rng.normal(size=(5, 3, 3)) for k in labels], axis=-1)
    return nap, labels


def _cluster_ratio(points: np.ndarray, labels: np.ndarray) -> float:
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    same = labels[:, None] == labels[None]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return distance[same & off_diagonal].mean() / distance[~same].mean()


@pytest.fixture(scope="module")
def layouts(clustered: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    nap, _ = clustered
    return {method: topomap_layout(nap, method=method, seed=0) for method in LAYOUT_METHODS}


def test_every_layout_method_gives_one_seeded_point_per_channel_in_the_unit_square(
    clustered: tuple[np.ndarray, np.ndarray], layouts: dict[str, np.ndarray]
) -> None:
    nap, _ = clustered
    for method, points in layouts.items():
        assert points.shape == (40, 2), method
        assert points.min() >= 0 and points.max() <= 1, method
        assert np.isclose(points.min(axis=0), 0).all() and np.isclose(points.max(axis=0), 1).all()
    for method in ("random", "graph", "som", "pso"):
        np.testing.assert_array_equal(topomap_layout(nap, method=method, seed=0), layouts[method])
        assert not np.array_equal(topomap_layout(nap, method=method, seed=1), layouts[method])
    np.testing.assert_array_equal(topomap_layout(nap, method="UMAP", seed=0), layouts["umap"])


def test_graph_som_and_umap_layouts_place_similar_channels_together(
    clustered: tuple[np.ndarray, np.ndarray], layouts: dict[str, np.ndarray]
) -> None:
    _, labels = clustered
    for method in ("graph", "som", "umap", "pca", "tsne"):
        assert _cluster_ratio(layouts[method], labels) < 0.5, method
    assert _cluster_ratio(layouts["random"], labels) > 0.8


def test_quality_metrics_rank_a_clustered_map_better_than_a_shuffled_one(
    clustered: tuple[np.ndarray, np.ndarray], layouts: dict[str, np.ndarray]
) -> None:
    nap, _ = clustered
    activations = topomap_activations(nap)
    shuffled = layouts["graph"][np.random.default_rng(0).permutation(40)]
    good, bad = (
        topomap_quality(layouts["graph"], activations),
        topomap_quality(shuffled, activations),
    )
    assert len(good["resize_mse"]) == len(good["blur_mse"]) == 10
    assert good["resize_mse"][-1] > good["resize_mse"][0]  # smaller images lose more
    assert good["resize_auc"] < bad["resize_auc"]
    assert good["blur_auc"] < bad["blur_auc"]
    assert good["components"] < bad["components"]
    assert good["component_area"] > bad["component_area"]


def test_near_zero_columns_are_dropped_but_every_channel_keeps_its_point() -> None:
    rng = np.random.default_rng(4)
    nap = rng.normal(size=(3, 2, 20))
    nap[1] = 0.005  # group 1: near zero in every channel -> its 2 columns go
    nap[..., 7] = 0.0  # a dead channel keeps its row (and gets a point)
    profile = profile_matrix(nap)
    assert profile.shape == (20, 4)
    np.testing.assert_array_equal(profile[:, :2], nap[0].T)
    points = topomap_layout(nap, method="graph")
    activations = topomap_activations(nap)
    assert points.shape == (20, 2) and activations.shape == (3, 20)
    # coordinates and values line up: a map peaking at one channel peaks at its point
    values = np.zeros((1, 20))
    values[0, 7] = 1.0
    image = interpolate_topomaps(points, values, resolution=101)[0]
    row, col = np.unravel_index(np.nanargmax(image), image.shape)
    low, high = points.min(axis=0), points.max(axis=0)
    position = (low[0] + col / 100 * (high[0] - low[0]), high[1] - row / 100 * (high[1] - low[1]))
    assert np.hypot(*(np.array(position) - points[7])) < 0.02
    with pytest.raises(InputError, match="within 0.5 of zero"):
        profile_matrix(nap * 0 + 0.1, threshold=0.5)


def test_interpolation_is_in_the_natural_orientation_with_nan_outside_the_hull() -> None:
    points = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]], dtype=float)
    values = np.array([0.0, 1.0, 2.0, 3.0, 1.5])  # value = x + 2y
    image = interpolate_topomaps(points, values, resolution=5)
    assert image[0, -1] == pytest.approx(3.0)  # top right: x=1, y=1
    assert image[-1, 0] == pytest.approx(0.0)  # bottom left
    assert image[2, 1] == pytest.approx(0.25 + 1.0)
    triangle = np.array([[0, 0], [1, 0], [0, 1]], dtype=float)
    assert np.isnan(interpolate_topomaps(triangle, np.ones(3), resolution=5)[0, -1])


def test_group_order_puts_similar_groups_next_to_each_other() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 30))
    nap = np.stack([a, b + 0.01, a + 0.01, b, a - 0.01])  # groups 0, 2, 4 alike; 1, 3 alike
    order = group_order(nap, metric="euclidean")
    assert sorted(order) == [0, 1, 2, 3, 4]
    positions = {g: order.index(g) for g in order}
    assert abs(positions[1] - positions[3]) == 1
    assert max(positions[g] for g in (0, 2, 4)) - min(positions[g] for g in (0, 2, 4)) == 2


def test_topomaps_and_projections_are_written_as_png_and_pdf(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray], layouts: dict[str, np.ndarray]
) -> None:
    nap, labels = clustered
    activations = topomap_activations(nap)
    groups = ["g0", "g1", "g2", "g3", "g4"]
    [row] = plot_topomaps(layouts["umap"], activations, groups, tmp_path / "row.png")
    assert row.read_bytes()[:4] == b"\x89PNG"
    files = plot_topomaps(
        layouts["umap"],
        activations,
        groups,
        tmp_path / "single",
        mode="individually",
        file_format="pdf",
    )
    assert [f.name for f in files] == [f"{g}.pdf" for g in groups]
    assert all(f.read_bytes()[:4] == b"%PDF" for f in files)
    with pytest.raises(InputError, match="unknown plot mode"):
        plot_topomaps(layouts["umap"], activations, groups, tmp_path / "x.png", mode="grid")
    with pytest.raises(InputError, match="same layer"):
        plot_topomaps(layouts["umap"][:30], activations, groups, tmp_path / "x.png")
    plot = plot_instance_projection(layouts["umap"], labels.astype(str), tmp_path / "p.pdf")
    assert plot.read_bytes()[:4] == b"%PDF"
    assert not list(tmp_path.glob("**/*.tmp"))


def test_unknown_layout_method_is_an_error() -> None:
    with pytest.raises(InputError, match="unknown layout method 'kmeans'.*umap_pso"):
        topomap_layout(np.ones((2, 5)), method="kmeans")
    with pytest.raises(InputError, match="at least 3 channels"):
        topomap_layout(np.eye(2), method="random")


def _write_inntrospect_folder(root: Path, acts: dict, grads: dict, labels: np.ndarray) -> None:
    """A processed corpus as iNNtrospect writes it (INTROSPECT.md section 1.4): files per
    batch and layer, named as in corpus.csv, batch files of one group only."""
    names = sorted(set(labels.tolist()))
    group_files: dict[str, list[str]] = {g: [] for g in names}
    for g in names:
        index = np.flatnonzero(labels == g)
        for k, part in enumerate(np.array_split(index, 2)):
            file_name = f"{g}_part{k}.npy"
            group_files[g].append(file_name)
            for kind, arrays in (("acts", acts), ("grads", grads)):
                for layer, array in arrays.items():
                    folder = root / kind / layer
                    folder.mkdir(parents=True, exist_ok=True)
                    np.save(folder / file_name, array[part])
    (root / "group_name_to_files.json").write_text(json.dumps(group_files))
    (root / "index_to_group_name.json").write_text(json.dumps(dict(enumerate(names))))
    (root / "group_name_to_index.json").write_text(
        json.dumps({g: str(i) for i, g in enumerate(names)})
    )


def test_an_inntrospect_processed_corpus_gives_the_in_memory_naps(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    acts = {
        "layer000": rng.normal(size=(23, 6, 6, 1)).astype(np.float32),
        "layer001": rng.normal(size=(23, 4, 4, 5)).astype(np.float32),
        "layer002": rng.normal(size=(23, 3)).astype(np.float32),
    }
    grads = {name: rng.normal(size=a.shape).astype(np.float32) for name, a in acts.items()}
    labels = np.array(rng.choice(["cat", "dog", "fish"], size=23))
    _write_inntrospect_folder(tmp_path, acts, grads, labels)
    for align in (False, True):
        from_folder = read_processed_corpus(tmp_path, align=align)
        in_memory = naps(acts, labels, gradients=grads, align=align)
        assert from_folder.groups == in_memory.groups == ["cat", "dog", "fish"]
        for layer in acts:
            np.testing.assert_allclose(from_folder[layer], in_memory[layer], rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="unknown layer.*layer009.*available: layer000"):
        read_processed_corpus(tmp_path, layers=["layer009"])
    (tmp_path / "acts" / "layer001" / "dog_part1.npy").unlink()
    with pytest.raises(InputError, match="dog_part1.npy not found"):
        read_processed_corpus(tmp_path)


def test_corpus_csv_rows_are_stripped_and_missing_files_named(tmp_path: Path) -> None:
    np.save(tmp_path / "b0.npy", np.zeros((2, 3)))
    (tmp_path / "corpus.csv").write_text("b0.npy, shirt , 4\n")  # one row, spaces
    [row] = read_corpus_csv(tmp_path)
    assert (row.file.name, row.group, row.output_index) == ("b0.npy", "shirt", 4)
    (tmp_path / "corpus.csv").write_text("b0.npy,a\nb1.npy,b\n")
    with pytest.raises(InputError, match="line 2: b1.npy"):
        read_corpus_csv(tmp_path)
    (tmp_path / "corpus.csv").write_text("b0.npy,a,(0)\n")
    with pytest.raises(InputError, match=r"line 1: the output index '\(0\)' is not an integer"):
        read_corpus_csv(tmp_path)
    with pytest.raises(InputError, match="corpus.csv not found"):
        read_corpus_csv(tmp_path / "nowhere")


def test_a_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "minisom", None)  # import fails
    with pytest.raises(
        ImportError, match=r"SOM layout needs minisom: pip install 'innspect\[introspect\]'"
    ):
        topomap_layout(np.random.default_rng(0).normal(size=(3, 8)), method="som")


def _pso_step_by_hand(
    points: np.ndarray, local_weight: float, global_term: np.ndarray
) -> np.ndarray:
    """One synchronous PSO update written as the double loop of INTROSPECT.md section 9.5."""
    n = len(points)
    new = points.copy()
    for i in range(n):
        total = np.zeros(2)
        for j in range(n):
            delta = points[j] - points[i]
            d = max(np.hypot(*delta), 0.01)
            local = 1.5 * (d + 1) ** -3 - 15 * np.exp(-d / 2)
            total += (local_weight * local + global_term[i, j]) / 2 * delta
        new[i] = points[i] + total / n
    return new


def test_pso_and_distribute_in_circle_follow_the_force_formula() -> None:
    from innspect.introspect.layout import distribute_in_circle, pso

    rng = np.random.default_rng(7)
    start = rng.random((6, 2))
    # one refinement step from a given layout: local force only, weight (1 + tanh(-3)) / 2
    step = pso(None, 6, n_steps=1, init=start, rng=rng)
    expected = _pso_step_by_hand(start, (1 + np.tanh(-3)) / 2, np.zeros((6, 6)))
    np.testing.assert_allclose(step, expected, rtol=1e-12)
    # from scratch: the global force of the channel distances, weight (1 - tanh(-3)) / 2
    distances = rng.random((6, 6))
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, 0)
    points = pso(distances, 6, n_steps=1, rng=np.random.default_rng(1))
    initial = np.random.default_rng(1).random((6, 2))
    force = 1.5 * (1 - (distances / distances.max()) ** 3) - 0.5 * np.exp(-distances / 2)
    expected = _pso_step_by_hand(initial, (1 + np.tanh(-3)) / 2, (1 - np.tanh(-3)) / 2 * force)
    np.testing.assert_allclose(points, expected, rtol=1e-12)
    # spreading: a tight cluster becomes a disc filling the unit square
    tight = 0.5 + 0.01 * rng.normal(size=(40, 2))
    spread = distribute_in_circle(tight)
    assert spread.min() == 0 and spread.max() == 1
    gaps = np.linalg.norm(spread[:, None] - spread[None], axis=-1) + np.eye(40)
    assert gaps.min(axis=1).mean() > 0.05  # neighbours pushed apart


def test_smoothness_errors_and_components_on_hand_made_maps() -> None:
    from sklearn.metrics import auc

    from innspect.introspect.quality import (
        blur_errors,
        component_stats,
        error_auc,
        resize_errors,
    )

    flat = np.full((1, 60, 60, 3), 200, dtype=np.uint8)
    np.testing.assert_array_equal(resize_errors(flat), np.zeros(10))
    np.testing.assert_array_equal(blur_errors(flat), np.zeros(10))
    edge = flat.copy()
    edge[0, :, 30:] = 0
    errors = blur_errors(edge)
    assert np.all(np.diff(errors) > 0)  # more blur, more error
    assert errors[0] > 255  # a float MSE: uint8 wrapping would keep it below 256
    curve = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0])
    assert error_auc(curve) == pytest.approx(auc(np.arange(10), curve))

    image = np.full((100, 100), np.nan)
    image[10:90, 10:90] = 0.0  # inside the hull, neutral
    image[20:40, 20:40] = 1.0  # a red blob of 400 px
    image[60:70, 60:70] = -1.0  # a blue blob of 100 px
    image[80:82, 15:17] = 1.0  # 4 px: too small to count
    count, area = component_stats(image[None], limit=1.0)
    assert count == 2
    assert area == pytest.approx(250)


def test_instance_projections_separate_well_separated_groups() -> None:
    from innspect.introspect import instance_projection

    rng = np.random.default_rng(8)
    centres = 5 * rng.normal(size=(3, 20))
    labels = np.repeat(np.arange(3), 15)
    samples = centres[labels] + rng.normal(size=(45, 20))
    for method in ("umap", "pca"):
        points = instance_projection(samples.reshape(45, 4, 5), seed=0, method=method)
        assert points.shape == (45, 2)
        distance = np.linalg.norm(points[:, None] - points[None], axis=-1) + 1e9 * np.eye(45)
        assert (labels[distance.argmin(axis=1)] == labels).mean() > 0.95, method
    with pytest.raises(InputError, match="unknown projection method 'tsne'"):
        instance_projection(samples, method="tsne")


def test_every_method_lays_out_the_smallest_layer() -> None:
    nap = np.random.default_rng(10).normal(size=(4, 2, 3))  # 3 channels, the minimum
    for method in LAYOUT_METHODS:
        points = topomap_layout(nap, method=method)
        assert points.shape == (3, 2) and np.isfinite(points).all(), method


def test_naps_save_and_load_every_part_and_never_a_stale_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    full = Naps(
        ["a", "b"],
        np.array([3, 4]),
        {"conv": rng.normal(size=(2, 3, 3, 4)), "fc": rng.normal(size=(2, 5))},
        samples={"fc": rng.normal(size=(4, 5)).astype(np.float32)},
        sample_groups=["a", "a", "b", "b"],
        gradients={"conv": rng.normal(size=(2, 3, 3, 4))},
    )
    full.save(tmp_path)
    loaded = Naps.load(tmp_path)
    assert loaded.groups == full.groups and loaded.sample_groups == full.sample_groups
    np.testing.assert_array_equal(loaded.group_sizes, full.group_sizes)
    for part in ("layers", "samples", "gradients"):
        assert getattr(loaded, part).keys() == getattr(full, part).keys()
        for name, array in getattr(full, part).items():
            np.testing.assert_array_equal(getattr(loaded, part)[name], array)
    Naps(["a", "b"], np.array([3, 4]), {"conv": full["conv"]}).save(tmp_path)
    assert not Naps.load(tmp_path).gradients  # layer000_gradients.npy is left but not read
