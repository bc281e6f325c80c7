"""Atomic writes leave a complete file with ordinary permissions, or nothing."""

from __future__ import annotations

import os
import stat

import pytest

from innspect.fileio import atomic_path, write_text


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
