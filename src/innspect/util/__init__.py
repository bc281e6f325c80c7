"""Helpers every layer may use: atomic files, progress bars, batches of user data, finiteness
checks, optional dependencies. Imports nothing of innspect but ``innspect.errors``."""
