"""Progress bars for long work (tqdm, an optional dependency, imported only when asked)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(
            "verbose=True shows a progress bar with tqdm: pip install tqdm (or innspect[demo])"
        ) from error
    return tqdm


def progress(
    items: Iterable[T], enabled: bool, total: int | None = None, desc: str = ""
) -> Iterator[T]:
    """Iterate over ``items``, with a tqdm bar when ``enabled``."""
    if not enabled:
        yield from items
        return
    yield from _tqdm()(items, total=total, desc=desc)


def progress_bar(total: int, enabled: bool, desc: str = "", unit: str = "it") -> Any:
    """A tqdm bar to ``update`` by hand (work done out of order, e.g. by Ray workers), or
    None when not ``enabled``."""
    return _tqdm()(total=total, desc=desc, unit=unit) if enabled else None
