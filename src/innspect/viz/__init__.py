"""Visualisation: iNNvestigate's colour functions and a method-by-image grid.

Everything renders with matplotlib's Agg backend (no display needed).
"""

from innspect.viz.colormaps import clip_quantile, gamma, graymap, heatmap, project
from innspect.viz.filters import filter_images, plot_filters
from innspect.viz.grid import GridLayout, plot_grid

__all__ = [
    "GridLayout",
    "clip_quantile",
    "filter_images",
    "gamma",
    "graymap",
    "heatmap",
    "plot_filters",
    "plot_grid",
    "project",
]
