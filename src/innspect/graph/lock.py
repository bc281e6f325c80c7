"""``GRAPH_LOCK``: captures exclusive, analyses shared (docs/reliability.md).

torch.fx patches ``nn.Module.__call__`` and ``__getattr__`` for the whole process while it
traces, so any module called by another thread meanwhile is recorded into the wrong graph.
A capture holds the lock exclusively; every analysis holds it shared while it runs modules,
so analyses run in parallel with each other but never during a capture, and nothing stays
patched.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class _GraphLock:
    """A readers-writer lock: analyses share it, a capture holds it alone.

    Reentrant for both sides, and a thread holding it shared may take it exclusively (an
    analysis capturing its graph on first use): its shared holds are handed back while it
    waits, so two threads upgrading at once cannot deadlock. Waiting writers block new
    readers, so a capture is not starved by a stream of analyses.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock shared: modules may run, no capture may start."""
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                owned = False  # already exclusive: nothing to wait for
            else:
                if self._depth() == 0:
                    while self._writer is not None or self._writers_waiting:
                        self._condition.wait()
                self._readers += 1
                self._local.depth = self._depth() + 1
                owned = True
        try:
            yield
        finally:
            if owned:
                with self._condition:
                    self._readers -= 1
                    self._local.depth -= 1
                    self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock alone: no module of any analysis runs meanwhile."""
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                self._writer_depth += 1
                held = 0
            else:
                held = self._depth()
                self._readers -= held  # hand back this thread's shared holds while waiting
                self._writers_waiting += 1
                self._condition.notify_all()
                while self._writer is not None or self._readers:
                    self._condition.wait()
                self._writers_waiting -= 1
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._condition:
                self._writer_depth -= 1
                if self._writer_depth == 0:
                    self._writer = None
                    self._readers += held
                self._condition.notify_all()


GRAPH_LOCK = _GraphLock()
"""Held shared by every analysis while it runs modules and exclusively by every capture."""
