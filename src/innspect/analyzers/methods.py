"""Imports every module that registers analyzers, so the registry knows them all."""

from innspect.analyzers import gradient, misc, wrappers  # noqa: F401
