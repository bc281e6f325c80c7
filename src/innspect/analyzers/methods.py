"""Imports every module that registers analyzers, so the registry knows them all."""

from innspect.analyzers import composites, deeptaylor, gradient, lrp, misc, wrappers  # noqa: F401
