"""Saving figures atomically (see ``innspect.util.files``)."""

from __future__ import annotations

import os
from pathlib import Path

from innspect.util.files import atomic_path, write_text

__all__ = ["atomic_path", "save_figure", "write_text"]


def save_figure(figure: object, path: str | os.PathLike, **savefig_kwargs: object) -> None:
    """``figure.savefig`` to ``path`` atomically; the format comes from the target's suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt, **savefig_kwargs)  # type: ignore[attr-defined]
