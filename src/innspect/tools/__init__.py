"""Tools around analyzers: perturbation analysis, PatternComputer."""

from innspect.tools.patterns import PatternComputer
from innspect.tools.perturbation import Perturbation, PerturbationAnalysis, PerturbationResult

__all__ = ["PatternComputer", "Perturbation", "PerturbationAnalysis", "PerturbationResult"]
