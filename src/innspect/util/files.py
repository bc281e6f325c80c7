"""Atomic file writing: write to a temporary file beside the target, then rename.

A reader (or a resumed run) never sees a half-written file, and the result gets the same
permissions as a file created by ``open`` (mkstemp alone would leave it readable by the
owner only).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from innspect.errors import InputError

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the system allows.

    ``os.umask`` can only be read by setting it: between the two calls another thread's new
    file would get umask 0 (world-writable). Linux shows the umask in /proc; elsewhere the
    two calls run under a lock (which protects innspect's own writes).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # the briefly-set value errs on the private side
        os.umask(umask)
    return umask


def _default_mode() -> int:
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` on success.

    On error the temporary file is removed and the target is left as it was.
    """
    target = Path(path)
    if str(path) in ("", ".", "..") or target.name in ("", ".", ".."):
        raise InputError(f"a file name is needed to write to, got {str(path)!r}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        # Named by the file the caller asked for, not by the temporary file beside it.
        raise type(error)(
            error.errno, f"cannot write {target}: {error.strerror or error}"
        ) from error
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        _flush_to_disk(tmp)  # a crash after the rename must not leave an empty file
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _flush_to_disk(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """Write ``arrays`` (name -> numpy array) to an uncompressed .npz file atomically.

    A ``.npz`` suffix is added when missing (as ``numpy.savez`` does); returns the path.
    """
    if str(path) in ("", ".", ".."):
        raise InputError(f"a file name is needed to write to, got {str(path)!r}")
    target = Path(path)
    if target.suffix != ".npz":
        target = target.with_name(target.name + ".npz")
    import numpy as np  # numpy is a core dependency; imported here to keep this module light

    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return target
