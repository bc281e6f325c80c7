"""The built-in demo (``innspect demo``): a digits CNN explained by every applicable analyzer."""

from innspect.demo.run import DemoSettings, run_demo

__all__ = ["DemoSettings", "run_demo"]
