"""What a network learned: neuron activation profiles (NAPs) and topographic maps.

A PyTorch re-implementation of iNNtrospect and the ANN-topomaps paper code (Krug et al.,
"Visualizing Deep Neural Networks with Topographic Activation Maps", HHAI 2023), following
../shared/INTROSPECT.md with its listed bugs fixed. Everything after ``collect`` works on
numpy arrays alone, so activations from any framework can be analysed.

Optional dependencies (scikit-learn, umap-learn, minisom, networkx, scipy) come with
``pip install 'innspect[introspect]'`` and are imported only by the functions that need them.
"""

from innspect.introspect.collect import NapReducer, collect
from innspect.introspect.corpus import corpus_batches, read_corpus_csv, read_processed_corpus
from innspect.introspect.layers import default_layers
from innspect.introspect.layout import (
    LAYOUT_METHODS,
    distribute_in_circle,
    layout_points,
    profile_matrix,
    topomap_layout,
)
from innspect.introspect.naps import (
    NapAccumulator,
    Naps,
    align_spatial,
    contrastive_naps,
    naps,
)
from innspect.introspect.plots import plot_instance_projection, plot_topomaps, render_rgb
from innspect.introspect.projection import instance_projection
from innspect.introspect.quality import component_stats, topomap_quality
from innspect.introspect.topomap import group_order, interpolate_topomaps, topomap_activations

__all__ = [
    "LAYOUT_METHODS",
    "NapAccumulator",
    "NapReducer",
    "Naps",
    "align_spatial",
    "collect",
    "component_stats",
    "contrastive_naps",
    "corpus_batches",
    "default_layers",
    "distribute_in_circle",
    "group_order",
    "instance_projection",
    "interpolate_topomaps",
    "layout_points",
    "naps",
    "plot_instance_projection",
    "plot_topomaps",
    "profile_matrix",
    "read_corpus_csv",
    "read_processed_corpus",
    "render_rgb",
    "topomap_activations",
    "topomap_layout",
    "topomap_quality",
]
