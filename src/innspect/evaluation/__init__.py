"""Evaluating explanations: perturbation analysis (AOPC), pixel flipping, conservation."""

from innspect.evaluation.conservation import ConservationReport, conservation_report
from innspect.evaluation.perturbation import Perturbation, PerturbationAnalysis, PerturbationResult
from innspect.evaluation.pixel_flipping import pixel_flipping

__all__ = [
    "ConservationReport",
    "Perturbation",
    "PerturbationAnalysis",
    "PerturbationResult",
    "conservation_report",
    "pixel_flipping",
]
