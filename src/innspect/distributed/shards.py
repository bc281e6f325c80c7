"""Sharded outputs: HDF5 shards written atomically with their SHA-256, and ``index.json``,
the run's header and each shard's range and checksum, so a second run resumes where the
first stopped and refuses a folder written by another run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from innspect.errors import InputError
from innspect.util.files import atomic_path, write_text

INDEX_NAME = "index.json"


FORMAT = "innspect-dataset/1"


def write_shard(path: Path, arrays: dict[str, np.ndarray], start: int, stop: int) -> str:
    """Write one shard atomically; returns its SHA-256. No timestamps: same arrays, same bytes."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as handle:
            handle.attrs["start"] = start
            handle.attrs["stop"] = stop
            for name in sorted(arrays):
                handle.create_dataset(name, data=arrays[name], track_times=False)
        checksum = file_sha256(tmp)
    return checksum


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_shards(out: str | os.PathLike) -> dict[str, np.ndarray]:
    """All shards of a finished run, concatenated in sample order (for small data sets)."""
    import h5py

    index = json.loads((Path(out) / INDEX_NAME).read_text(encoding="utf-8"))
    parts: dict[str, list[np.ndarray]] = {}
    for shard in index["shards"]:
        if shard.get("sha256") is None:
            raise InputError(f"{out}: shard {shard['file']} is not finished; run again to resume")
        with h5py.File(Path(out) / shard["file"], "r") as handle:
            handle.visititems(
                lambda name, obj: (
                    parts.setdefault(name, []).append(obj[()])
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
    return {name: np.concatenate(values) for name, values in parts.items()}


class ShardIndex:
    """``index.json`` of an output folder: the run's header and each shard's range and
    checksum (None until the shard is written). Rewritten atomically after every shard."""

    def __init__(self, out: Path, header: dict[str, Any], data: str) -> None:
        self.out = out
        self.header = header
        self.data = data
        self.path = out / INDEX_NAME
        n, size = header["samples"], header["shard_size"]
        self.shards = [
            {"file": f"shard-{i:05d}.h5", "start": s, "stop": min(s + size, n), "sha256": None}
            for i, s in enumerate(range(0, n, size))
        ]
        if self.path.exists():
            self._resume()

    def _resume(self) -> None:
        try:
            old = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(f"{self.path} is not a readable index: {error}") from error
        differing = [k for k in self.header if old.get("header", {}).get(k) != self.header[k]]
        if differing:
            details = "; ".join(
                f"{k}: folder has {old.get('header', {}).get(k)!r}, this run {self.header[k]!r}"
                for k in differing
            )
            raise InputError(
                f"{self.out} holds shards of another run ({details}); give another out folder "
                "or delete this one"
            )
        done = {s["file"]: s.get("sha256") for s in old.get("shards", [])}
        for shard in self.shards:
            shard["sha256"] = done.get(shard["file"])

    def pending(self) -> list[int]:
        """Shards to compute: never written, missing, or whose bytes fail their checksum."""
        todo = []
        for i, shard in enumerate(self.shards):
            path = self.out / shard["file"]
            if shard["sha256"] is None or not path.is_file():
                todo.append(i)
            elif file_sha256(path) != shard["sha256"]:
                import warnings

                warnings.warn(
                    f"{path} does not match its checksum (corrupted); computing it again",
                    stacklevel=3,
                )
                shard["sha256"] = None
                todo.append(i)
        return todo

    def finish(self, i: int, checksum: str) -> None:
        """Record shard ``i`` as written."""
        self.shards[i]["sha256"] = checksum
        self.save()

    def save(self) -> None:
        """Write the index atomically."""
        document = {"header": self.header, "data": self.data, "shards": self.shards}
        write_text(self.path, json.dumps(document, indent=1) + "\n")
