"""Instance projections: a 2-D UMAP of samples' flattened activations (iNNtrospect's
``compute_instance_projections``, ../shared/INTROSPECT.md section 8), seeded."""

from __future__ import annotations

import warnings

import numpy as np

from innspect.errors import InputError
from innspect.util.extras import require

PROJECTION_METHODS = ("umap", "pca")


def instance_projection(activations: np.ndarray, seed: int = 0, method: str = "umap") -> np.ndarray:
    """2-D projection of the samples ``(N, ...)`` of one layer, flattened: ``(N, 2)``.

    ``method``: ``"umap"`` (iNNtrospect's choice) or ``"pca"`` (fast, no JIT compilation).
    """
    if method not in PROJECTION_METHODS:
        raise InputError(
            f"unknown projection method '{method}'; choose one of {', '.join(PROJECTION_METHODS)}"
        )
    flat = np.asarray(activations, dtype=np.float64).reshape(len(activations), -1)
    if len(flat) < 4:
        raise InputError(f"an instance projection needs at least 4 samples, got {len(flat)}")
    if method == "pca":
        decomposition = require("sklearn.decomposition", "instance projections", extra="introspect")
        components = min(2, flat.shape[1])
        points = decomposition.PCA(components, random_state=seed).fit_transform(flat)
        return np.hstack([points, np.zeros((len(flat), 2 - components))])
    umap = require("umap", "instance projections", extra="introspect")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": wanted here
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(flat) - 1), random_state=seed)
        return reducer.fit_transform(flat)
