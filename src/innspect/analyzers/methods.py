"""Imports every module that registers analyzers, so the registry knows them all."""

from innspect.analyzers import (  # noqa: F401
    composites,
    deeplift,
    deeptaylor,
    gradient,
    lrp,
    misc,
    occlusion,
    wrappers,
)
