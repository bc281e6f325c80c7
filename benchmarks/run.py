"""Side-by-side timings of innspect, Zennit and Captum against a plain forward+gradient pass.

Run with ``make bench``. Every figure of a table comes from this one process, measured one
after the other, so ratios are comparable. Writes ``benchmarks/RESULTS.md`` (atomically),
including the hand-written findings in ``benchmarks/FINDINGS.md``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

import innspect
from innspect.fileio import write_text

HERE = Path(__file__).resolve().parent
PAGE = os.sysconf("SC_PAGE_SIZE")

INNSPECT_ROWS: list[tuple[str, str, dict]] = [
    ("innspect gradient", "gradient", {}),
    ("innspect guided_backprop", "guided_backprop", {}),
    ("innspect lrp.epsilon", "lrp.epsilon", {}),
    ("innspect lrp.sequential_preset_a", "lrp.sequential_preset_a", {}),
    ("innspect lrp.sequential_preset_b", "lrp.sequential_preset_b", {}),
    ("innspect lrp.epsilon_plus_flat", "lrp.epsilon_plus_flat", {}),
    ("innspect deep_taylor", "deep_taylor", {}),
]
SAMPLES = 16  # integrated gradients steps / SmoothGrad samples


def release_free_memory() -> None:
    """Return freed heap memory to the OS, so each row's RSS peak starts from a clean floor.

    Without it, memory freed by one row stays in the process and the next row's peak RSS
    delta reads ~0 however much it allocates.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: deltas are then lower bounds
        pass


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakMemory:
    """Samples RSS in a thread while a block runs; ``delta`` is peak minus the start."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.delta = 0

    def __enter__(self) -> PeakMemory:
        self.start = rss_bytes()
        self.peak = self.start
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta = self.peak - self.start


@dataclass
class Row:
    name: str
    seconds: float
    memory: int
    first_call: float | None = None
    note: str = ""
    ratio: float | None = None  # median of ratios to paired reference runs


def measure(
    name: str,
    run: Callable[[], object],
    repeats: int,
    first_call: bool = False,
    reference: Callable[[], object] | None = None,
    warmup: Callable[[], object] | None = None,
) -> Row:
    """Median wall time over ``repeats`` runs after one warm-up, and peak RSS delta.

    With ``reference``, each run is paired with a reference run right before it and the
    row's ratio is the median of the paired ratios: this machine's speed drifts by tens of
    percent within minutes, and pairing keeps that drift out of the ratios.
    """
    start = time.perf_counter()
    (warmup or run)()  # for innspect analyzers: the first call, capture included
    first = time.perf_counter() - start if first_call else None
    times, ratios = [], []
    memory_delta = 0
    for repeat in range(repeats):
        # The first timed run starts from a trimmed heap and gives the memory figure; the
        # others run on a warm heap, as repeated calls in one process do. A paired
        # reference run always sees the same heap state as the run it is paired with.
        cold = repeat == 0
        if reference is not None:
            if cold:
                release_free_memory()
            start = time.perf_counter()
            reference()
            reference_seconds = time.perf_counter() - start
        if cold:
            release_free_memory()
        with PeakMemory() as memory:
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        if cold:
            memory_delta = memory.delta
        if reference is not None:
            ratios.append(times[-1] / reference_seconds)
    ratio = statistics.median(ratios) if ratios else None
    return Row(name, statistics.median(times), memory_delta, first, ratio=ratio)


def plain_runs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    def forward() -> object:
        with torch.no_grad():
            return model(x)

    def forward_gradient() -> object:
        leaf = x.clone().requires_grad_(True)
        output = model(leaf)
        return torch.autograd.grad(output.max(dim=1).values.sum(), leaf)

    return {"forward": forward, "forward+gradient (reference)": forward_gradient}


def innspect_runs(batch: int) -> list[tuple[str, str, dict]]:
    """(label, analyzer name, options); the averaging methods run ``batch`` rows at a time."""
    averaging = [
        (
            f"innspect integrated_gradients ({SAMPLES})",
            "integrated_gradients",
            {"steps": SAMPLES, "batch_size": batch},
        ),
        (
            f"innspect smoothgrad ({SAMPLES})",
            "smoothgrad",
            {"augment_by_n": SAMPLES, "batch_size": batch},
        ),
    ]
    return INNSPECT_ROWS + averaging


def peer_runs(
    model_name: str, model: torch.nn.Module, x: torch.Tensor
) -> dict[str, tuple[Callable[[], object], Callable[[], object] | None]]:
    """Zennit and Captum runs; each peer works on its own copy (their hooks need no in-place ReLU)."""
    from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency
    from zennit.attribution import Gradient as ZennitGradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    peer = copy.deepcopy(model)
    for module in peer.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    with torch.no_grad():
        target = peer(x).argmax(dim=1)
    batch = x.shape[0]
    canonizer = VGGCanonizer() if model_name.startswith("vgg") else ResNetCanonizer()

    def zennit_epsilon_plus_flat() -> object:
        composite = EpsilonPlusFlat(canonizers=[canonizer])
        with ZennitGradient(peer, composite) as attributor:
            one_hot = torch.nn.functional.one_hot(target, 1000).to(x.dtype)
            return attributor(x, one_hot)[1]

    def integrated_gradients(steps: int) -> Callable[[], object]:
        return lambda: IntegratedGradients(peer).attribute(
            x, target=target, n_steps=steps, method="riemann_left", internal_batch_size=batch
        )

    def smoothgrad(samples: int) -> Callable[[], object]:
        return lambda: NoiseTunnel(Saliency(peer)).attribute(
            x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=1, target=target
        )

    # label -> (run, cheap warm-up or None): the averaging peers warm up with 1-2 samples.
    runs: dict[str, tuple[Callable[[], object], Callable[[], object] | None]] = {
        "Zennit EpsilonPlusFlat": (zennit_epsilon_plus_flat, None),
    }
    if model_name == "vgg16":
        from captum.attr import LRP

        runs["Captum LRP"] = (lambda: LRP(peer).attribute(x, target=target), None)
    runs[f"Captum IntegratedGradients ({SAMPLES})"] = (
        integrated_gradients(SAMPLES),
        integrated_gradients(2),  # Captum needs at least two steps
    )
    runs[f"Captum NoiseTunnel SmoothGrad ({SAMPLES})"] = (smoothgrad(SAMPLES), smoothgrad(1))
    runs["Captum GuidedBackprop"] = (
        lambda: GuidedBackprop(peer).attribute(x, target=target),
        None,
    )
    return runs


def model_table(model_name: str, batch: int, size: int, repeats: int) -> list[Row]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    plain = plain_runs(model, x)
    reference = plain["forward+gradient (reference)"]
    rows = [measure(label, run, repeats) for label, run in plain.items()]
    for label, name, options in innspect_runs(batch):
        try:
            analyzer = innspect.create_analyzer(name, model, **options)
        except KeyError as error:
            rows.append(Row(label, float("nan"), 0, note=f"not available: {error}"))
            continue
        # Every timed run is paired with a reference run right before it (for the 16-pass
        # rows a reference costs 1/16 of the run and keeps drift out of the ratio).
        run = lambda a=analyzer: a.analyze(x)  # noqa: E731
        rows.append(measure(label, run, repeats, first_call=True, reference=reference))
        print(f"  {rows[-1].name}: {rows[-1].seconds:.3f} s", flush=True)
    for label, (run, warmup) in peer_runs(model_name, model, x).items():
        try:
            rows.append(measure(label, run, repeats, reference=reference, warmup=warmup))
        except Exception as error:  # noqa: BLE001 - a failing peer is reported, not fatal
            rows.append(
                Row(label, float("nan"), 0, note=f"failed: {type(error).__name__}: {error}")
            )
        print(f"  {rows[-1].name}: {rows[-1].seconds:.3f} s", flush=True)
    return rows


def batch_table(repeats: int, size: int) -> list[tuple[int, Row, Row]]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    result = []
    for batch in (1, 4, 16):
        x = torch.randn(batch, 3, size, size)
        plain = plain_runs(model, x)["forward+gradient (reference)"]
        reference_times: list[float] = []

        def timed_reference(plain=plain, times=reference_times) -> object:
            # The paired reference runs give the reference's own time too (no extra runs).
            start = time.perf_counter()
            result = plain()
            times.append(time.perf_counter() - start)
            return result

        analyzer = innspect.create_analyzer("lrp.epsilon", model)
        run = lambda a=analyzer, x=x: a.analyze(x)  # noqa: E731
        ours = measure("lrp.epsilon", run, repeats, first_call=True, reference=timed_reference)
        reference = Row("forward+gradient", statistics.median(reference_times), 0)
        result.append((batch, reference, ours))
        print(f"  batch {batch}: {ours.seconds:.3f} s vs {reference.seconds:.3f} s", flush=True)
    return result


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"- CPU: {cpu}, {os.cpu_count()} cores; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; Python {platform.python_version()}\n"
    )


def render_model_table(model_name: str, batch: int, size: int, rows: list[Row]) -> str:
    reference = next(r for r in rows if r.name.startswith("forward+gradient"))
    lines = [
        f"### {model_name}, batch {batch}, {size}x{size}, random weights, CPU\n",
        "| method | median s | ratio to fwd+grad | first call s (ratio to steady) "
        "| peak RSS delta MiB | memory ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row.note:
            lines.append(f"| {row.name} | - | - | - | - | - ({row.note}) |")
            continue
        first = (
            f"{row.first_call:.3f} ({row.first_call / row.seconds:.2f})" if row.first_call else ""
        )
        memory_ratio = row.memory / reference.memory if reference.memory else float("nan")
        ratio = row.ratio if row.ratio is not None else row.seconds / reference.seconds
        paired = "" if row.ratio is None else " (paired)"
        lines.append(
            f"| {row.name} | {row.seconds:.3f} | {ratio:.2f}{paired} | {first} "
            f"| {row.memory / 2**20:.0f} | {memory_ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def render_batch_table(entries: list[tuple[int, Row, Row]], size: int) -> str:
    lines = [
        f"### lrp.epsilon on resnet50 by batch size ({size}x{size})\n",
        "| batch | fwd+grad s | lrp.epsilon s | ratio (paired) | s per image |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch, reference, ours in entries:
        lines.append(
            f"| {batch} | {reference.seconds:.3f} | {ours.seconds:.3f} | "
            f"{ours.ratio:.2f} | {ours.seconds / batch:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--size", type=int, default=224, help="image size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sections = ["# Benchmark results\n", "Made by `make bench` (benchmarks/run.py).\n", machine()]
    for model_name in args.models:
        print(f"{model_name}:", flush=True)
        rows = model_table(model_name, args.batch, args.size, args.repeats)
        sections.append(render_model_table(model_name, args.batch, args.size, rows))
    print("resnet50 by batch:", flush=True)
    sections.append(render_batch_table(batch_table(args.repeats, args.size), args.size))
    findings = HERE / "FINDINGS.md"
    if findings.exists():
        sections.append(findings.read_text())
    sections.append(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s.\n")
    write_text(args.out, "\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
