"""Running innspect's data-set work on several workers (Ray); the local backend needs none of it."""

from __future__ import annotations

from typing import Any


def require_ray() -> Any:
    """Import ray, or say which extra installs it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "backend='ray' needs Ray: pip install 'innspect[ray]' (or use backend='local')"
        ) from error
    return ray
