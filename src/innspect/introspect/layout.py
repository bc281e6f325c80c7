"""Topographic-map layouts: one 2-D point per channel, similar channels close together.

The methods of iNNtrospect and of the ANN-topomaps paper code (Krug, Ratul, Olson, Stober,
"Visualizing Deep Neural Networks with Topographic Activation Maps", HHAI 2023), as described
in ../shared/INTROSPECT.md sections 6 and 9.5. Every method is seeded (neither tool is).

Inputs, chosen explicitly (INTROSPECT.md section 10, point 13): PCA, t-SNE and UMAP embed the
rows of the channel profile matrix (Euclidean, as iNNtrospect and TOPO HEAD do); graph, SOM
and PSO use the pairwise channel distances (``distance_metric``, cosine by default, as TOPO).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from innspect.errors import InputError
from innspect.introspect.naps import Naps
from innspect.util.extras import require

BASE_METHODS = ("random", "pca", "tsne", "umap", "graph", "som", "pso")
LAYOUT_METHODS = BASE_METHODS + tuple(f"{m}_pso" for m in BASE_METHODS if m != "pso")
MIN_CHANNELS = 3


def normalize_method(method: str) -> str:
    """``"UMAP"``, ``"tSNE"``, ``"graph_PSO"``, ``"umap+pso"`` -> canonical lower-case names."""
    name = str(method).strip().lower().replace("+", "_").replace("-", "_")
    if name == "t_sne":
        name = "tsne"
    if name not in LAYOUT_METHODS:
        raise InputError(
            f"unknown layout method '{method}'; choose one of {', '.join(LAYOUT_METHODS)}"
        )
    return name


def profile_matrix(nap: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """The channel profiles: ``nap.reshape(G*S, C).T`` without its near-zero columns.

    Row c is channel c's NAP values for every (group, position), groups slowest. Columns whose
    absolute value is <= ``threshold`` for every channel are dropped, exactly as iNNtrospect
    does (INTROSPECT.md section 6): columns, never channels, so every channel keeps its row.

    Parameters
    ----------
    nap
        ``(G, *spatial, C)`` profiles of one layer (channels last).
    """
    nap = np.asarray(nap, dtype=np.float64)
    if nap.ndim < 2:
        raise InputError(f"NAPs of a layer have shape (groups, ..., channels); got {nap.shape}")
    profile = nap.reshape(-1, nap.shape[-1]).T
    keep = np.abs(profile).max(axis=0) > threshold
    if not keep.any():
        raise InputError(
            f"every profile value is within {threshold} of zero (max |value| "
            f"{np.abs(profile).max():.3g}): lower the threshold (it is absolute) or rescale"
        )
    return profile[:, keep]


def minmax_scale(points: np.ndarray) -> np.ndarray:
    """Scale each axis to [0, 1]; an axis without spread goes to 0.5 (no division by zero)."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    span = high - low
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (points - low) / safe, 0.5)


def channel_distances(profile: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Square matrix of distances between channel profiles (a zero profile is at cosine
    distance 1 from every other, instead of NaN)."""
    distance = require("scipy.spatial.distance", "topographic-map layouts", extra="introspect")
    with np.errstate(invalid="ignore", divide="ignore"):
        condensed = distance.pdist(profile, metric)
    condensed = np.nan_to_num(condensed, nan=1.0)
    return distance.squareform(condensed)


def pso(
    distances: np.ndarray | None,
    n_points: int,
    *,
    n_steps: int = 1000,
    init: np.ndarray | None = None,
    noise: float = 0.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """Particle-swarm style force layout (TOPO ``train_PSO``, INTROSPECT.md section 9.5).

    Without ``init``: random start, a global force from the channel distances
    ``1.5 (1 - (D/max D)^3) - 0.5 exp(-D/2)`` fading out while the local force
    ``1.5 (d+1)^-3 - 15 exp(-d/2)`` of the current 2-D distances ``d`` fades in. With ``init``
    (the "+PSO" refinements and ``distribute_in_circle``) the global force is off, as in TOPO:
    a pure spreading of the given layout. Synchronous updates; optional Gaussian noise.
    """
    steps = np.linspace(-3, 6, n_steps)
    local_weight = (1 + np.tanh(steps)) / 2
    if init is None:
        points = rng.random((n_points, 2))
        global_weight = (1 - np.tanh(steps)) / 2
        if distances is None:
            raise InputError("PSO without an initial layout needs the channel distances")
        scale = distances.max() if distances.max() > 0 else 1.0
        global_force = 1.5 * (1 - (distances / scale) ** 3) - 0.5 * np.exp(-distances / 2)
        global_force[~np.isfinite(global_force)] = 0.0
    else:
        points = np.array(init, dtype=np.float64)
        global_weight = np.zeros(n_steps)
        global_force = 0.0
    for step in range(n_steps):
        delta = points[None, :, :] - points[:, None, :]  # delta[i, j] = p_j - p_i
        dist = np.maximum(np.sqrt((delta**2).sum(-1)), 0.01)
        local_force = 1.5 * (dist + 1) ** -3 - 15 * np.exp(-dist / 2)
        coefficient = (local_weight[step] * local_force + global_weight[step] * global_force) / 2
        points = points + (coefficient[..., None] * delta).mean(axis=1)
        if noise:
            points = points + rng.normal(0.0, noise, points.shape)
    return points


def distribute_in_circle(
    points: np.ndarray, n_steps: int = 100, noise: float = 1e-6, seed: int = 0
) -> np.ndarray:
    """iNNtrospect's ``distribute_to_circle``: local-force spreading into a disc, rescaled to
    [0, 1] per axis (INTROSPECT.md section 6)."""
    rng = np.random.default_rng(seed)
    spread = pso(None, len(points), n_steps=n_steps, init=points, noise=noise, rng=rng)
    return minmax_scale(spread)


def _graph_layout(distances: np.ndarray, seed: int) -> np.ndarray:
    """Fruchterman-Reingold on the graph of the 7.5 % closest channel pairs, every smaller
    component joined to the largest by its single closest pair (TOPO, section 9.5)."""
    nx = require("networkx", "the graph layout", extra="introspect")
    n = len(distances)
    condensed = distances[np.triu_indices(n, k=1)]
    threshold = np.percentile(condensed, 7.5)
    adjacency = distances < threshold if threshold > 0 else distances <= 0
    np.fill_diagonal(adjacency, False)
    graph = nx.from_numpy_array(adjacency.astype(np.int8))
    components = sorted(nx.connected_components(graph), key=len, reverse=True)
    largest = sorted(components[0])
    for component in components[1:]:
        small = sorted(component)
        block = distances[np.ix_(largest, small)]
        i, j = np.unravel_index(np.argmin(block), block.shape)
        graph.add_edge(largest[i], small[j])
    positions = nx.spring_layout(graph, seed=seed)
    return np.array([positions[i] for i in range(n)])


def _som_layout(profile: np.ndarray, seed: int, rng: np.random.Generator) -> np.ndarray:
    """Self-organising map: each channel at its winning unit of an m x m grid, m = int(sqrt C)
    + 1; channels sharing a unit on a circle of radius 0.2 around it (TOPO, section 9.5)."""
    minisom = require("minisom", "the SOM layout", extra="introspect")
    n = len(profile)
    side = max(int(np.sqrt(n)) + 1, 2)
    som = minisom.MiniSom(
        side, side, profile.shape[1], sigma=1, learning_rate=0.5, random_seed=seed
    )
    som.random_weights_init(profile)
    som.train(profile, 10 * n, random_order=True)
    winners = np.array([som.winner(row) for row in profile], dtype=np.float64)
    points = winners.copy()
    units, inverse = np.unique(winners, axis=0, return_inverse=True)
    for unit in range(len(units)):
        members = np.flatnonzero(inverse.ravel() == unit)
        if len(members) < 2:
            continue
        start = rng.uniform(0, 2 * np.pi / len(members))
        angles = start + 2 * np.pi * np.arange(len(members)) / len(members)
        points[members, 0] += 0.2 * np.sin(angles)
        points[members, 1] += 0.2 * np.cos(angles)
    return points


def _at_least_two_columns(profile: np.ndarray) -> np.ndarray:
    if profile.shape[1] >= 2:
        return profile
    return np.hstack([profile, np.zeros((len(profile), 2 - profile.shape[1]))])


def _embedding(profile: np.ndarray, method: str, seed: int) -> np.ndarray:
    n = len(profile)
    features = _at_least_two_columns(profile)
    if method == "pca":
        decomposition = require("sklearn.decomposition", "the PCA layout", extra="introspect")
        return decomposition.PCA(n_components=2, random_state=seed).fit_transform(features)
    if method == "tsne":
        manifold = require("sklearn.manifold", "the t-SNE layout", extra="introspect")
        # sklearn needs perplexity < n_samples; 30 (its default) for layers that allow it
        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
        tsne = manifold.TSNE(
            n_components=2,
            init="pca",
            learning_rate="auto",
            perplexity=perplexity,
            random_state=seed,
        )
        return tsne.fit_transform(features)
    umap = require("umap", "the UMAP layout", extra="introspect")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": wanted here
        # UMAP's spectral initialisation needs more points than dimensions + 1
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, n - 1),
            init="spectral" if n >= 5 else "random",
            random_state=seed,
        )
        return reducer.fit_transform(features)


def layout_points(
    profile: np.ndarray,
    method: str = "umap",
    *,
    seed: int = 0,
    distance_metric: str = "cosine",
    pso_steps: int = 1000,
) -> np.ndarray:
    """Lay out the rows of a profile matrix ``(C, F)``: ``(C, 2)`` points in [0, 1]^2."""
    method = normalize_method(method)
    profile = np.asarray(profile, dtype=np.float64)
    n = len(profile)
    if n < MIN_CHANNELS:
        raise InputError(f"a topographic map needs at least {MIN_CHANNELS} channels, got {n}")
    rng = np.random.default_rng(seed)
    base, refine = (method[:-4], True) if method.endswith("_pso") else (method, False)
    distances = None
    if base in ("graph", "som", "pso"):
        distances = channel_distances(profile, distance_metric)
    if base == "random":
        points = rng.random((n, 2))
    elif base == "graph":
        points = _graph_layout(distances, seed)
    elif base == "som":
        points = _som_layout(profile, seed, rng)
    elif base == "pso":
        points = pso(distances, n, n_steps=pso_steps, rng=rng)
    else:
        points = _embedding(profile, base, seed)
    points = minmax_scale(points)
    if refine:
        points = minmax_scale(pso(None, n, n_steps=pso_steps, init=points, rng=rng))
    return points


def topomap_layout(
    profiles: Naps | np.ndarray,
    layer: str | None = None,
    method: str = "umap",
    *,
    seed: int = 0,
    distance_metric: str = "cosine",
    threshold: float = 0.01,
    distribute: bool = False,
    pso_steps: int = 1000,
) -> np.ndarray:
    """One 2-D point per channel of ``layer``, in the unit square.

    Parameters
    ----------
    profiles
        :class:`Naps` (then ``layer`` names the layer) or one layer's ``(G, *spatial, C)`` array.
    method
        One of :data:`LAYOUT_METHODS` (iNNtrospect's ``"UMAP"``/``"tSNE"`` spellings and
        ``"umap+pso"`` are accepted).
    seed
        Every random choice (initialisation, SOM, UMAP, t-SNE, graph) follows it.
    distance_metric
        Channel distance for graph, SOM and PSO (``"cosine"`` or ``"euclidean"``).
    threshold
        Near-zero profile columns (absolute value) dropped before the layout.
    distribute
        Then spread the points into a disc (iNNtrospect's ``distribute_in_circle``, its default).

    Returns
    -------
    ``(C, 2)`` float64 array in [0, 1]^2; row c is channel c.
    """
    nap = profiles[layer] if isinstance(profiles, Naps) else np.asarray(profiles)
    profile = profile_matrix(nap, threshold)
    points = layout_points(
        profile, method, seed=seed, distance_metric=distance_metric, pso_steps=pso_steps
    )
    if distribute:
        points = distribute_in_circle(points, seed=seed)
    return points


def describe_methods() -> dict[str, Any]:
    """Layout method names with a one-line description (for the CLI and docs)."""
    return {
        "random": "uniform random points (a baseline)",
        "pca": "first two principal components of the channel profiles",
        "tsne": "t-SNE of the channel profiles",
        "umap": "UMAP of the channel profiles",
        "graph": "Fruchterman-Reingold on the thresholded channel-distance graph",
        "som": "winning units of a self-organising map",
        "pso": "force layout from the channel distances",
        "<method>_pso": "the method, then local-force spreading",
    }
