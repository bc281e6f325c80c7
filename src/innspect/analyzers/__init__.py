"""Analyzers: the public API (``Analyzer``, ``Explanation``), the reverse-walk runner, plans
and presets, the registry, and one module per method family. Importing this package
registers every method family it holds."""

from innspect.analyzers import (
    averaged,
    cam,
    cam_methods,
    composites,
    deeplift,
    deeptaylor,
    gradient,
    lrp,
    misc,
    modern,
    occlusion,
)
from innspect.analyzers.registry import register_all

for _family in (misc, gradient, averaged, lrp, composites, modern, deeptaylor, deeplift, occlusion):
    register_all(_family.ANALYZERS)
register_all(cam.ANALYZERS + cam_methods.ANALYZERS)
