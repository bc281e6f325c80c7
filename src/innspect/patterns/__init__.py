"""PatternNet and PatternAttribution (Kindermans et al. 2018): the statistics pass that
computes patterns (``PatternComputer``), the two analyzers, and their Ray glue. Importing
this package registers the two analyzers."""

from innspect.analyzers.registry import register_all
from innspect.patterns import analyzers
from innspect.patterns.analyzers import PatternAttribution, PatternNet
from innspect.patterns.computer import PatternComputer, load_patterns

register_all(analyzers.ANALYZERS)

__all__ = ["PatternAttribution", "PatternComputer", "PatternNet", "load_patterns"]
