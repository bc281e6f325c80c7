"""The `--only patterns` group of benchmarks/run.py (issue 11, "Speed and memory").

- PatternComputer over a data stream: time per batch against the forward+gradient pass on
  the same batch (paired, as every table of run.py), target <= 2x;
- peak memory of PatternComputer over 10 and 100 batches of a lazily generated stream
  (the statistics are fixed-size, so the peak must not grow with the stream);
- ``pattern.net`` / ``pattern.attribution`` analyze against forward+gradient, target <= 1.3x.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import torch
import torchvision

import innspect
from innspect.patterns import PatternComputer


def _stream(n_batches: int, batch: int, size: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    for _ in range(n_batches):
        yield torch.randn(batch, 3, size, size, generator=generator)


def pattern_rows(
    bench: ModuleType, model_name: str, batch: int, size: int, repeats: int
) -> tuple[list, PatternComputer]:
    """Paired rows: PatternComputer (one batch), pattern.net, pattern.attribution."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    _, reference = bench.plain_runs(model, x)
    computer = PatternComputer(model, "relu")
    computer.update(x)  # capture and first statistics: the warm-up
    subjects = [bench.Subject("PatternComputer, one batch", lambda: computer.update(x))]
    patterns = computer.patterns()
    for name in ("pattern.net", "pattern.attribution"):
        analyzer = innspect.create_analyzer(name, model, patterns=patterns)
        subjects.append(bench.Subject(f"innspect {name}", lambda a=analyzer: a.analyze(x)))
    reference_row = bench.measure_paired(subjects, reference, repeats)
    rows = [reference_row] + [subject.row() for subject in subjects]
    for row in rows:
        print(f"  {row.name}: {row.seconds:.3f} s, ratio {row.ratio or 1.0:.2f}", flush=True)
    return rows, computer


def stream_memory(
    bench: ModuleType, model_name: str, batch: int, size: int, counts: list[int]
) -> list[tuple[int, float, int]]:
    """(batches, seconds, peak RSS delta) of a fresh PatternComputer over each stream."""
    import time

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    result = []
    for n in counts:
        computer = PatternComputer(model, "relu")
        bench.release_free_memory()
        with bench.PeakMemory() as memory:
            start = time.perf_counter()
            computer.update(_stream(n, batch, size))
            seconds = time.perf_counter() - start
        result.append((n, seconds, memory.delta))
        print(f"  {n} batches: {seconds:.1f} s, peak {memory.delta / 2**20:.0f} MiB", flush=True)
        del computer
    return result


def render(
    model_name: str,
    batch: int,
    size: int,
    rows: list,
    memory: list[tuple[int, float, int]],
) -> str:
    reference = rows[0]
    targets = {"PatternComputer, one batch": 2.0}
    lines = [
        f"### Patterns on {model_name}, batch {batch}, {size}x{size}, random weights, CPU\n",
        "| run | median s | ratio to fwd+grad | target | peak RSS delta MiB |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        ratio = row.ratio if row.ratio is not None else row.seconds / reference.seconds
        target = targets.get(row.name, 1.3 if row.name.startswith("innspect") else None)
        verdict = "" if target is None else f"<= {target} {'met' if ratio <= target else 'missed'}"
        lines.append(
            f"| {row.name} | {row.seconds:.3f} | {ratio:.2f} | {verdict} "
            f"| {row.memory / 2**20:.0f} |"
        )
    lines += [
        "",
        "| PatternComputer over a stream of | seconds | seconds per batch | peak RSS delta MiB |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for n, seconds, peak in memory:
        lines.append(f"| {n} batches | {seconds:.1f} | {seconds / n:.2f} | {peak / 2**20:.0f} |")
    if len(memory) > 1:
        first, last = memory[0][2], memory[-1][2]
        grows = last > 1.1 * first + 64 * 2**20
        lines.append(
            f"\nPeak memory {'grows' if grows else 'does not grow'} with the number of "
            f"batches ({first / 2**20:.0f} -> {last / 2**20:.0f} MiB)."
        )
    return "\n".join(lines) + "\n"


def section(
    bench: ModuleType,
    models: list[str],
    batch: int,
    size: int,
    repeats: int,
    stream_batches: list[int],
) -> str:
    """The markdown section for RESULTS.md."""
    parts = ["## PatternNet / PatternAttribution (issue 11)\n"]
    for model_name in models:
        print(f"patterns on {model_name}:", flush=True)
        rows, _ = pattern_rows(bench, model_name, batch, size, repeats)
        memory = stream_memory(bench, model_name, batch, size, stream_batches)
        parts.append(render(model_name, batch, size, rows, memory))
    return "\n".join(parts)
