"""Progress bars for long work (tqdm, an optional dependency, imported only when asked)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    items: Iterable[T], enabled: bool, total: int | None = None, desc: str = ""
) -> Iterator[T]:
    """Iterate over ``items``, with a tqdm bar when ``enabled``."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(
            "verbose=True shows a progress bar with tqdm: pip install tqdm (or innspect[demo])"
        ) from error
    yield from tqdm(items, total=total, desc=desc)
