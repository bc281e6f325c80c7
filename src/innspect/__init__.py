"""innspect: explain what PyTorch networks do.

Start with ``create_analyzer(name, model)`` and ``analyzer.analyze(X)``; ``list_analyzers()``
names every method.
"""

# innspect.patterns registers PatternNet and PatternAttribution when imported.
from innspect import _moved, patterns  # noqa: F401
from innspect.analyzers.api import Analyzer, Explanation
from innspect.analyzers.registry import (
    analyzer_class,
    create_analyzer,
    describe_analyzers,
    list_analyzers,
)
from innspect.analyzers.reverse import ReverseAnalyzer
from innspect.distributed.dataset import explain_dataset
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
from innspect.graph.strip import model_wo_output_activation, model_wo_softmax
from innspect.loading.keras import load_keras
from innspect.util.version import VERSION as __version__  # noqa: F401

_moved.install()  # the import paths of innspect 0.1 (deprecated)


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
    "load_keras",
    "model_wo_output_activation",
    "model_wo_softmax",
]
