"""iNNtrospect's file formats: ``corpus.csv`` with batch files, and processed-corpus folders.

See ../shared/INTROSPECT.md sections 1-2. The reader fixes ``np.loadtxt``'s corner cases
(section 10, point 9): whitespace around fields is stripped, a one-row corpus works, and a row
naming a missing file is reported with its line number before any work starts.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from innspect.errors import InputError
from innspect.introspect.naps import NapAccumulator, Naps


@dataclass(frozen=True)
class CorpusRow:
    """One batch file of a corpus: its path, group and optional output index (the class whose
    gradients to take; iNNtrospect parses it but never uses it)."""

    file: Path
    group: str
    output_index: int | None
    line: int


def read_corpus_csv(data_path: str | os.PathLike) -> list[CorpusRow]:
    """Rows of ``<data_path>/corpus.csv`` (``file.npy, group[, output index]``, no header),
    every file checked to exist."""
    data_path = Path(data_path)
    corpus = data_path / "corpus.csv"
    if not corpus.is_file():
        raise InputError(
            f"{corpus} not found: an iNNtrospect corpus is a folder with corpus.csv "
            "(rows 'file.npy, group[, output index]') and its batch files"
        )
    rows: list[CorpusRow] = []
    width = None
    with open(corpus, newline="", encoding="utf-8") as handle:
        for line, fields in enumerate(csv.reader(handle), start=1):
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
                raise InputError(
                    f"{corpus} line {line}: expected 'file.npy, group[, output index]', "
                    f"got {','.join(fields)!r}"
                )
            if width is not None and len(fields) != width:
                raise InputError(
                    f"{corpus} line {line}: {len(fields)} columns where earlier rows have {width}"
                )
            width = len(fields)
            output_index = None
            if len(fields) == 3:
                try:
                    output_index = int(fields[2])
                except ValueError:
                    raise InputError(
                        f"{corpus} line {line}: the output index {fields[2]!r} is not an integer"
                    ) from None
            rows.append(CorpusRow(data_path / fields[0], fields[1], output_index, line))
    if not rows:
        raise InputError(f"{corpus} has no rows")
    missing = [row for row in rows if not row.file.is_file()]
    if missing:
        listed = ", ".join(f"line {r.line}: {r.file.name}" for r in missing[:5])
        raise InputError(
            f"{corpus} names {len(missing)} missing batch file(s) ({listed}); "
            f"paths are relative to {data_path}"
        )
    return rows


def corpus_batches(
    data_path: str | os.PathLike,
) -> Iterator[tuple[np.ndarray, list[str], list[int] | None]]:
    """``(x, groups, output indices or None)`` per batch file of a corpus, in corpus order."""
    for row in read_corpus_csv(data_path):
        x = np.load(row.file, allow_pickle=False)
        n = len(x)
        targets = None if row.output_index is None else [row.output_index] * n
        yield x, [row.group] * n, targets


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path} not found: not an iNNtrospect processed-corpus folder")
    return json.loads(path.read_text(encoding="utf-8"))


def read_processed_corpus(
    path: str | os.PathLike,
    align: bool = False,
    layers: list[str] | None = None,
    keep_samples: int = 0,
) -> Naps:
    """NAPs from an iNNtrospect processed-corpus folder, as it is.

    Reads ``index_to_group_name.json``, ``group_name_to_files.json`` and
    ``acts/layerNNN/<batch file>`` (``grads/`` as well with ``align``), one batch file at a
    time. Alignment is recomputed from the gradients (spatial axes only) rather than read from
    iNNtrospect's ``aligned/`` folder, which shifts channels and mixes files up
    (INTROSPECT.md section 10, points 1-2). Layers are named ``layerNNN`` as in the folder.
    ``keep_samples`` keeps the first samples of each group, flattened, as ``Naps.samples``
    (iNNtrospect's instance projections read the first batch files of each group).
    """
    root = Path(path)
    index_to_group = _read_json(root / "index_to_group_name.json")
    group_files = _read_json(root / "group_name_to_files.json")
    groups = [index_to_group[str(i)] for i in range(len(index_to_group))]
    acts_root = root / "acts"
    available = sorted(p.name for p in acts_root.glob("layer*") if p.is_dir())
    if not available:
        raise InputError(f"{acts_root} holds no layerNNN folders")
    chosen = available if layers is None else list(layers)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise InputError(
            f"unknown layer(s) {', '.join(unknown)}; available: {', '.join(available)}"
        )
    accumulator = NapAccumulator(align=align)
    kept: dict[str, list[np.ndarray]] = {name: [] for name in chosen}
    kept_groups: list[str] = []
    for group in groups:
        taken = 0
        for file_name in group_files.get(group, []):
            acts = {name: _load(acts_root / name / file_name) for name in chosen}
            grads = None
            if align:
                grads = {
                    name: _load(root / "grads" / name / file_name)
                    for name in chosen
                    if acts[name].ndim >= 3
                }
            n = len(next(iter(acts.values())))
            accumulator.update(acts, [group] * n, grads)
            take = min(n, keep_samples - taken)
            if take > 0:
                for name in chosen:
                    kept[name].append(acts[name][:take].reshape(take, -1).astype(np.float32))
                kept_groups += [group] * take
                taken += take
    profiles = accumulator.result(groups)
    if kept_groups:
        profiles.samples = {name: np.concatenate(arrays) for name, arrays in kept.items()}
        profiles.sample_groups = kept_groups
    return profiles


def _load(path: Path) -> np.ndarray:
    if not path.is_file() and path.with_suffix(path.suffix + ".npy").is_file():
        path = path.with_suffix(path.suffix + ".npy")  # np.save appends .npy
    if not path.is_file():
        raise InputError(f"{path} not found: the processed corpus is incomplete")
    return np.load(path, allow_pickle=False)
