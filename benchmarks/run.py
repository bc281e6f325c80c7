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
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

import innspect
from innspect.util.files import write_text

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


@dataclass
class Subject:
    """One row being measured: how to run it, and what its runs gave."""

    label: str
    run: Callable[[], object]
    # None: the first call is the warm-up and is reported (innspect: capture included).
    warmup: Callable[[], object] | None = None
    peer: bool = False  # a peer's failure is reported in the table; innspect's is raised
    first_call: float | None = None
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    memory: int = 0
    note: str = ""

    def row(self) -> Row:
        if self.note:
            return Row(self.label, float("nan"), 0, note=self.note)
        ratio = statistics.median(self.ratios)
        return Row(
            self.label, statistics.median(self.times), self.memory, self.first_call, ratio=ratio
        )


def timed(run: Callable[[], object], cold: bool) -> tuple[float, int]:
    """Seconds of one run and, when ``cold``, its peak RSS delta from a trimmed heap.

    Memory is sampled in the cold runs only: later runs reuse the heap (they would read ~0),
    and the sampling thread would only disturb their timing.
    """
    if not cold:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start, 0
    release_free_memory()
    with PeakMemory() as memory:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    return seconds, memory.delta


def attempt(subject: Subject, run: Callable[[], object], cold: bool) -> tuple[float, int] | None:
    """``timed(run)``; a peer that raises is marked failed (None) instead of ending the run."""
    if not subject.peer:
        return timed(run, cold)
    try:
        return timed(run, cold)
    except Exception as error:  # noqa: BLE001 - a failing peer is reported, not fatal
        subject.note = f"failed: {type(error).__name__}: {error}"
        return None


def measure_paired(subjects: list[Subject], reference: Callable[[], object], repeats: int) -> Row:
    """Warm up every subject, then time them in ``repeats`` rounds paired with reference runs.

    This machine's speed drifts by tens of percent within minutes, so each run's ratio is
    taken against a reference run right beside it (A, reference, B: one reference serves
    the run before and the run after), and a row's ratio is the median of its paired
    ratios. Rounds spread a row's runs over the whole measurement instead of one slow
    minute, and every other round swaps each pair, so neither run of a pair always follows
    the other's (a large peer's freed heap, a warm cache). The first round starts every run from a trimmed heap and gives the memory
    figures. Returns the reference's own row (median over all its runs).
    """
    reference()  # warm-up
    for subject in subjects:
        result = attempt(subject, subject.warmup or subject.run, cold=False)
        if result is not None and subject.warmup is None:
            subject.first_call = result[0]
    reference_times: list[float] = []
    reference_memory: list[int] = []
    for round_index in range(repeats):
        cold = round_index == 0
        active = [subject for subject in subjects if not subject.note]
        for start in range(0, len(active), 2):
            pair = active[start : start + 2]
            if round_index % 2:  # every other round swaps the pair: no run always goes first
                pair = pair[::-1]
            before = pair[0] if len(pair) == 2 else None
            after = pair[-1]
            before_result = attempt(before, before.run, cold) if before else None
            reference_seconds, memory = timed(reference, cold)
            reference_times.append(reference_seconds)
            if cold:
                reference_memory.append(memory)
            after_result = attempt(after, after.run, cold)
            for subject, result in ((before, before_result), (after, after_result)):
                if subject is None or result is None:
                    continue
                subject.times.append(result[0])
                subject.ratios.append(result[0] / reference_seconds)
                if cold:
                    subject.memory = result[1]
        print(f"  round {round_index + 1}/{repeats} done", flush=True)
    return Row(
        "forward+gradient (reference)",
        statistics.median(reference_times),
        int(statistics.median(reference_memory)),
    )


def plain_runs(
    model: torch.nn.Module, x: torch.Tensor
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The plain forward, and the reference: forward + gradient of each sample's top logit."""

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    def forward_gradient() -> object:
        leaf = x.clone().requires_grad_(True)
        output = model(leaf)
        return torch.autograd.grad(output.max(dim=1).values.sum(), leaf)

    return forward, forward_gradient


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
    """Rows of one model's table: forward, the reference, innspect's analyzers, the peers."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    forward, reference = plain_runs(model, x)
    subjects = [Subject("forward", forward, warmup=forward)]
    for label, name, options in innspect_runs(batch):
        analyzer = innspect.create_analyzer(name, model, **options)
        subjects.append(Subject(label, lambda a=analyzer: a.analyze(x)))
    for label, (run, warmup) in peer_runs(model_name, model, x).items():
        subjects.append(Subject(label, run, warmup=warmup or run, peer=True))
    reference_row = measure_paired(subjects, reference, repeats)
    rows = [subject.row() for subject in subjects]
    rows.insert(1, reference_row)
    for row in rows:
        print(f"  {row.name}: {row.seconds:.3f} s, ratio {row.ratio or 1.0:.2f}", flush=True)
    return rows


def batch_table(
    repeats: int, size: int, measured: dict[int, tuple[Row, Row]]
) -> list[tuple[int, Row, Row]]:
    """``lrp.epsilon`` on resnet50 at batch 1, 4 and 16: (batch, reference row, its row).

    ``measured`` holds batches the model table has already measured, which are not rerun.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    result = []
    for batch in (1, 4, 16):
        if batch in measured:
            result.append((batch, *measured[batch]))
            continue
        x = torch.randn(batch, 3, size, size)
        _, reference = plain_runs(model, x)
        analyzer = innspect.create_analyzer("lrp.epsilon", model)
        subject = Subject("lrp.epsilon", lambda a=analyzer, x=x: a.analyze(x))
        reference_row = measure_paired([subject], reference, repeats)
        result.append((batch, reference_row, subject.row()))
        print(f"  batch {batch}: {subject.row().seconds:.3f} s", flush=True)
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


def render_batch_table(entries: list[tuple[int, Row, Row]], size: int, reused: set[int]) -> str:
    lines = [f"### lrp.epsilon on resnet50 by batch size ({size}x{size})\n"]
    if reused:
        batches = ", ".join(str(batch) for batch in sorted(reused))
        lines.append(f"Batch {batches}: the rows of the resnet50 table above, not run again.\n")
    lines += [
        "| batch | fwd+grad s | lrp.epsilon s | ratio (paired) | s per image |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch, reference, ours in entries:
        lines.append(
            f"| {batch} | {reference.seconds:.3f} | {ours.seconds:.3f} | "
            f"{ours.ratio:.2f} | {ours.seconds / batch:.3f} |"
        )
    return "\n".join(lines) + "\n"


# (target, innspect row, largest ratio allowed, peer row it must beat or None): the issue's
# targets on single rows, in the order.
RATIO_TARGETS: list[tuple[str, str, float, str | None]] = [
    ("`lrp.epsilon` <= 1.3", "innspect lrp.epsilon", 1.3, None),
    ("`lrp.sequential_preset_a` <= 1.6", "innspect lrp.sequential_preset_a", 1.6, None),
    ("`lrp.sequential_preset_b` <= 2.0", "innspect lrp.sequential_preset_b", 2.0, None),
    (
        "`lrp.epsilon_plus_flat` <= 1.6 and faster than Zennit",
        "innspect lrp.epsilon_plus_flat",
        1.6,
        "Zennit EpsilonPlusFlat",
    ),
    (
        f"`integrated_gradients` ({SAMPLES}) <= {1.1 * SAMPLES:.1f}",
        f"innspect integrated_gradients ({SAMPLES})",
        1.1 * SAMPLES,
        None,
    ),
    (
        f"`smoothgrad` ({SAMPLES}) <= {1.1 * SAMPLES:.1f}",
        f"innspect smoothgrad ({SAMPLES})",
        1.1 * SAMPLES,
        None,
    ),
]


def target_cells(rows: list[Row]) -> dict[str, tuple[str, bool]]:
    """Each target's measured value on one model's table, and whether it is met."""
    by_name = {row.name: row for row in rows if not row.note}
    reference = by_name["forward+gradient (reference)"]
    cells: dict[str, tuple[str, bool]] = {}
    for target, name, limit, peer_name in RATIO_TARGETS:
        ratio = by_name[name].ratio
        if peer_name is None:
            cells[target] = (f"{ratio:.2f}", ratio <= limit)
            continue
        peer = by_name.get(peer_name)  # a failed peer is not beaten by default
        peer_ratio = peer.ratio if peer else float("nan")
        label = peer_name.split()[0]
        cells[target] = (
            f"{ratio:.2f} ({label} {peer_ratio:.2f})",
            ratio <= limit and ratio < peer_ratio,
        )
    innspect_rows = [row for row in by_name.values() if row.name.startswith("innspect ")]
    first = max(innspect_rows, key=lambda row: row.first_call / row.seconds)
    first_ratio = first.first_call / first.seconds
    cells["first call <= 2x the steady state"] = (
        f"at most {first_ratio:.2f} ({first.name.removeprefix('innspect ')})",
        first_ratio <= 2.0,
    )
    memory = max(innspect_rows, key=lambda row: row.memory)
    memory_ratio = memory.memory / reference.memory
    cells["peak memory <= 1.5x"] = (
        f"at most {memory_ratio:.2f} ({memory.name.removeprefix('innspect ')})",
        memory_ratio <= 1.5,
    )
    return cells


def render_targets(tables: dict[str, list[Row]]) -> str:
    """The issue's targets, read off this run's tables: value per model and met or not."""
    cells = {model_name: target_cells(rows) for model_name, rows in tables.items()}
    models = list(cells)
    lines = [
        "### Targets in this run\n",
        "Ratios to forward+gradient, read off the tables above by the script. Where a target "
        "is missed, the floors in the findings below give the reason.\n",
        "| target | " + " | ".join(models) + " | met? |",
        "| --- | " + " | ".join("---" for _ in models) + " | --- |",
    ]
    for target in cells[models[0]]:
        values = [cells[model_name][target][0] for model_name in models]
        verdicts = [cells[model_name][target][1] for model_name in models]
        if all(verdicts):
            met = "yes"
        elif not any(verdicts):
            met = "**no**"
        else:
            met = ", ".join(
                f"{model_name} {'yes' if ok else '**no**'}"
                for model_name, ok in zip(models, verdicts, strict=True)
            )
        lines.append(f"| {target} | " + " | ".join(values) + f" | {met} |")
    return "\n".join(lines) + "\n"


def render_duration(benchmark_seconds: float, started_at: float | None) -> str:
    line = f"\nThe benchmark itself took {benchmark_seconds / 60:.1f} min"
    if started_at is not None:
        total = time.time() - started_at
        line += (
            f"; `make bench` took {total / 60:.1f} min in all, setting up its environment included"
        )
    return line + ".\n"


def _group_section(group: str, args: argparse.Namespace, given: list[str]) -> str:
    """The results section of one ``--only`` group (its module's ``section``)."""
    import importlib
    import sys

    module = importlib.import_module(f"bench_{group}")
    this = sys.modules[__name__]
    if group == "patterns":
        return module.section(
            this, args.models, args.pattern_batch, args.size, args.repeats, args.pattern_stream
        )
    if group == "scale":
        size = args.size if "--size" in given else 64
        return module.section(args.scale_samples, size, args.scale_shard, args.batch * 4)
    if group == "deeplift":
        return module.section(this, args.models, args.batch, args.size, args.repeats)
    if group == "averaged":
        return module.section(this, args.batch, args.size, args.repeats)
    if group == "keras":
        return module.section(args.repeats)
    if group == "cam":
        models = args.models if "--models" in given else ["resnet50", "vit_b_16"]
        batch = args.batch if "--batch" in given else 8
        return module.section(
            this,
            models,
            batch,
            args.size,
            args.repeats,
            args.cam_perturb_batch,
            tuple(args.cam_parts),
        )
    if group == "evaluation":
        models = args.models if "--models" in given else ["small_cnn", "resnet50"]
        batch = args.batch if "--batch" in given else 16
        return module.section(this, batch, args.size, args.repeats, models, args.metrics)
    if group == "introspect":
        models = args.models if "--models" in given else ["resnet50"]
        return module.section(
            this, models, args.introspect_batch, args.size, args.repeats, args.introspect_channels
        )
    if group == "text":
        return module.section(this, args.repeats, quick=args.text_quick)
    return module.section(this, args.batch, args.repeats)  # modern


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--size", type=int, default=224, help="image size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--started-at",
        type=float,
        help="Unix time at which `make bench` started, to report the time with set-up",
    )
    parser.add_argument(
        "--only",
        choices=(
            "patterns",
            "introspect",
            "deeplift",
            "scale",
            "modern",
            "averaged",
            "keras",
            "cam",
            "evaluation",
            "text",
        ),
        help="run one group only, written to RESULTS-<group>.md unless --out is given",
    )
    parser.add_argument("--pattern-batch", type=int, default=16, help="batch of --only patterns")
    parser.add_argument(
        "--pattern-stream",
        type=int,
        nargs="+",
        default=[10, 100],
        help="stream lengths (batches) whose peak memory --only patterns compares",
    )
    parser.add_argument(
        "--introspect-batch", type=int, default=16, help="batch of --only introspect"
    )
    parser.add_argument(
        "--introspect-channels", type=int, default=2048, help="layout size of --only introspect"
    )
    parser.add_argument("--scale-samples", type=int, default=512, help="samples of --only scale")
    parser.add_argument(
        "--cam-perturb-batch", type=int, default=1, help="batch of --only cam's Score/Ablation-CAM"
    )
    parser.add_argument(
        "--cam-parts",
        nargs="+",
        choices=("gradient", "score", "ablation"),
        default=["gradient", "score", "ablation"],
        help="which tables --only cam measures (each alone takes minutes to an hour)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        help="--only evaluation: only these metrics' rows (names as in its table)",
    )
    parser.add_argument("--scale-shard", type=int, default=64, help="shard size of --only scale")
    parser.add_argument(
        "--text-quick", action="store_true", help="--only text on a tiny model (a quick check)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sections = ["# Benchmark results\n", "Made by `make bench` (benchmarks/run.py).\n", machine()]
    if args.only is not None:
        # Each group is a module bench_<group>.py with its own section; one writer for all.
        import sys

        given = argv or sys.argv
        out = args.out if "--out" in given else HERE / f"RESULTS-{args.only}.md"
        sections[1] = f"Made by `python benchmarks/run.py --only {args.only}`.\n"
        sections.append(_group_section(args.only, args, given))
        sections.append(render_duration(time.perf_counter() - started, args.started_at))
        write_text(out, "\n".join(sections))
        print(f"wrote {out}")
        return
    tables: dict[str, list[Row]] = {}
    for model_name in args.models:
        print(f"{model_name}:", flush=True)
        tables[model_name] = model_table(model_name, args.batch, args.size, args.repeats)
        sections.append(render_model_table(model_name, args.batch, args.size, tables[model_name]))
    measured: dict[int, tuple[Row, Row]] = {}
    if "resnet50" in tables:
        by_name = {row.name: row for row in tables["resnet50"]}
        measured[args.batch] = (
            by_name["forward+gradient (reference)"],
            by_name["innspect lrp.epsilon"],
        )
    print("resnet50 by batch:", flush=True)
    entries = batch_table(args.repeats, args.size, measured)
    sections.append(render_batch_table(entries, args.size, set(measured)))
    sections.append(render_targets(tables))
    findings = HERE / "FINDINGS.md"
    if findings.exists():
        sections.append(findings.read_text())
    sections.append(render_duration(time.perf_counter() - started, args.started_at))
    write_text(args.out, "\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
