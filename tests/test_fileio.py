"""Atomic writes leave a complete file with ordinary permissions, or nothing."""

from __future__ import annotations

import os
import stat

import pytest

from innspect.util.files import atomic_path, write_text


def test_written_file_has_the_permissions_open_would_give(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "hello")
    finally:
        os.umask(umask)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode == 0o644
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_writing_never_changes_the_process_umask(tmp_path, monkeypatch) -> None:
    # Reading the umask with os.umask(0) left a window in which another thread's new file
    # was world-writable; on Linux it is read from /proc instead.
    if not os.path.exists("/proc/self/status"):
        pytest.skip("the umask can be read without setting it only through /proc")
    calls: list[int] = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
    write_text(tmp_path / "b.txt", "x")
    assert calls == []
    current = real_umask(0o022)
    real_umask(current)
    expected = 0o666 & ~current
    assert stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode) == expected
