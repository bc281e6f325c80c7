"""Evaluating explanations: Quantus's metric catalogue in torch (``metric.Metric`` and one
module per family), perturbation analysis (AOPC), pixel flipping curves, conservation."""

from innspect.evaluation import (
    axiomatic,
    complexity,
    correlations,
    faithfulness,
    localisation,
    neighbours,
    randomisation,
    road,
    robustness,
)
from innspect.evaluation.aggregate import ScoreSummary
from innspect.evaluation.axiomatic import Completeness, InputInvariance, NonSensitivity
from innspect.evaluation.complexity import Complexity, EffectiveComplexity, Sparseness
from innspect.evaluation.conservation import ConservationReport, conservation_report
from innspect.evaluation.correlations import (
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    MonotonicityCorrelation,
    SensitivityN,
)
from innspect.evaluation.dataset import DatasetEvaluation, evaluate_dataset
from innspect.evaluation.faithfulness import (
    IROF,
    Infidelity,
    Monotonicity,
    PixelFlipping,
    RegionPerturbation,
    Selectivity,
)
from innspect.evaluation.localisation import (
    AUC,
    AttributionLocalisation,
    Focus,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    TopKIntersection,
)
from innspect.evaluation.metric import (
    METRICS,
    Metric,
    MetricResult,
    create_metric,
    metric_class,
    register_metrics,
)
from innspect.evaluation.neighbours import Consistency, Sufficiency
from innspect.evaluation.perturbation import Perturbation, PerturbationAnalysis, PerturbationResult
from innspect.evaluation.pixel_flipping import pixel_flipping
from innspect.evaluation.randomisation import MPRT, EfficientMPRT, RandomLogit, SmoothMPRT
from innspect.evaluation.road import ROAD
from innspect.evaluation.robustness import (
    AvgSensitivity,
    Continuity,
    LocalLipschitzEstimate,
    MaxSensitivity,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)
from innspect.evaluation.table import EvaluationTable, evaluate

for _module in (
    faithfulness,
    correlations,
    localisation,
    complexity,
    axiomatic,
    robustness,
    randomisation,
    neighbours,
    road,
):
    register_metrics(_module.METRIC_CLASSES)

__all__ = [
    "AUC",
    "IROF",
    "Infidelity",
    "InputInvariance",
    "METRICS",
    "MPRT",
    "AttributionLocalisation",
    "AvgSensitivity",
    "Completeness",
    "Complexity",
    "Consistency",
    "Continuity",
    "ConservationReport",
    "DatasetEvaluation",
    "EffectiveComplexity",
    "EfficientMPRT",
    "EvaluationTable",
    "ScoreSummary",
    "evaluate_dataset",
    "FaithfulnessCorrelation",
    "FaithfulnessEstimate",
    "Focus",
    "LocalLipschitzEstimate",
    "MaxSensitivity",
    "Metric",
    "MetricResult",
    "Monotonicity",
    "MonotonicityCorrelation",
    "NonSensitivity",
    "Perturbation",
    "PerturbationAnalysis",
    "PerturbationResult",
    "PixelFlipping",
    "PointingGame",
    "ROAD",
    "RandomLogit",
    "RegionPerturbation",
    "RelevanceMassAccuracy",
    "RelativeInputStability",
    "RelativeOutputStability",
    "RelativeRepresentationStability",
    "RelevanceRankAccuracy",
    "Selectivity",
    "SensitivityN",
    "SmoothMPRT",
    "Sparseness",
    "Sufficiency",
    "TopKIntersection",
    "conservation_report",
    "create_metric",
    "evaluate",
    "metric_class",
    "pixel_flipping",
]
