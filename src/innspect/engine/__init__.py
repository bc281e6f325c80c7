"""The engine: forward record, reverse walk and the statistics pass (``collect``)."""

from innspect.engine.collect import Statistics, collect

__all__ = ["Statistics", "collect"]
