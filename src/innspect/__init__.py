"""innspect: explain what PyTorch networks do.

Start with ``create_analyzer(name, model)`` and ``analyzer.analyze(X)``; ``list_analyzers()``
names every method.
"""

from innspect.analyzers.base import Analyzer, Explanation, ReverseAnalyzer
from innspect.analyzers.registry import (
    analyzer_class,
    create_analyzer,
    describe_analyzers,
    list_analyzers,
)
from innspect.dataset import explain_dataset
from innspect.errors import (
    ConfigFileError,
    InnspectError,
    InputError,
    NeuronSelectionError,
    NonFiniteRelevanceError,
    NotAnalyzableModelError,
    OptionError,
    OutputActivationError,
    OutputSelectionError,
    UnsupportedNodeError,
)
from innspect.model_utils import model_wo_output_activation, model_wo_softmax

__version__ = "0.1.0"

__all__ = [
    "Analyzer",
    "Explanation",
    "ConfigFileError",
    "InnspectError",
    "InputError",
    "NeuronSelectionError",
    "NonFiniteRelevanceError",
    "NotAnalyzableModelError",
    "OptionError",
    "OutputActivationError",
    "OutputSelectionError",
    "ReverseAnalyzer",
    "UnsupportedNodeError",
    "analyzer_class",
    "create_analyzer",
    "describe_analyzers",
    "explain_dataset",
    "list_analyzers",
    "model_wo_output_activation",
    "model_wo_softmax",
]
