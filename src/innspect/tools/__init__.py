"""Tools around analyzers: perturbation analysis."""

from innspect.tools.perturbation import Perturbation, PerturbationAnalysis, PerturbationResult

__all__ = ["Perturbation", "PerturbationAnalysis", "PerturbationResult"]
