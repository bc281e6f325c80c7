"""The benchmark's bookkeeping: which reference run a timed run is paired with, and the verdicts.

The timings themselves are not tested (they belong in benchmarks/); these tests replace the
clock with fixed costs so that a wrong pairing or a wrong verdict shows.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("innspect_benchmark_run", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


class FakeClock:
    """Stands in for ``timed``: a run's cost is what it returns; records the order of calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.reference_cost = iter([2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])

    def costed(self, name: str, cost: float):
        def run() -> float:
            return cost

        run.label = name
        return run

    def reference(self) -> float:
        return next(self.reference_cost)

    def timed(self, run, cold: bool) -> tuple[float, int]:
        name = getattr(run, "label", "reference")
        self.calls.append((name, cold))
        seconds = run()
        return seconds, (100 if name == "reference" else int(seconds * 10)) if cold else 0


def test_each_run_is_paired_with_the_reference_beside_it(bench, monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(bench, "timed", clock.timed)
    a, b, c = (
        bench.Subject(name, clock.costed(name, cost))
        for name, cost in [("a", 1.0), ("b", 3.0), ("c", 5.0)]
    )
    reference_row = bench.measure_paired([a, b, c], clock.reference, repeats=2)
    # One warm-up call each (the first reference value is spent by the warm-up), then per
    # round: a, reference, b, then reference, c (an odd subject out is paired with the one
    # before it); the second round swaps each pair, so no subject always runs first.
    timed_calls = [name for name, _ in clock.calls]
    assert timed_calls[:3] == ["a", "b", "c"]
    assert timed_calls[3:8] == ["a", "reference", "b", "reference", "c"]
    assert timed_calls[8:] == ["b", "reference", "a", "reference", "c"]
    # Reference costs 4, 8 (round 1), 16, 32 (round 2).
    assert a.ratios == [1.0 / 4, 1.0 / 16]
    assert b.ratios == [3.0 / 4, 3.0 / 16]
    assert c.ratios == [5.0 / 8, 5.0 / 32]
    assert reference_row.seconds == pytest.approx((8.0 + 16.0) / 2)  # median of 4, 8, 16, 32
    # Memory comes from the first (cold) round only; the warm-ups are not cold.
    assert [cold for name, cold in clock.calls[3:8]] == [True] * 5
    assert [cold for name, cold in clock.calls[8:]] == [False] * 5
    assert (a.memory, c.memory, reference_row.memory) == (10, 50, 100)
    # Subjects without a separate warm-up report their first call.
    assert a.first_call == 1.0 and a.row().ratio == pytest.approx((0.25 + 1 / 16) / 2)


def test_a_failing_peer_is_reported_and_dropped_but_innspect_failures_raise(
    bench, monkeypatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(bench, "timed", clock.timed)

    def broken() -> float:
        raise RuntimeError("peer broke")

    good = bench.Subject("good", clock.costed("good", 1.0))
    peer = bench.Subject("peer", broken, peer=True)
    bench.measure_paired([good, peer], clock.reference, repeats=3)
    assert peer.row().note == "failed: RuntimeError: peer broke"
    assert len(good.ratios) == 3

    ours = bench.Subject("ours", broken)
    with pytest.raises(RuntimeError, match="peer broke"):
        bench.measure_paired([ours], FakeClock().reference, repeats=1)


def table(bench, **ratios: float) -> list:
    rows = [bench.Row("forward+gradient (reference)", 1.0, 100)]
    names = {
        "epsilon": "innspect lrp.epsilon",
        "preset_a": "innspect lrp.sequential_preset_a",
        "preset_b": "innspect lrp.sequential_preset_b",
        "flat": "innspect lrp.epsilon_plus_flat",
        "ig": "innspect integrated_gradients (16)",
        "sg": "innspect smoothgrad (16)",
    }
    for key, name in names.items():
        rows.append(bench.Row(name, 1.0, 120, first_call=1.1, ratio=ratios.get(key, 1.0)))
    if "zennit" in ratios:
        rows.append(bench.Row("Zennit EpsilonPlusFlat", 3.0, 300, ratio=ratios["zennit"]))
    return rows


def test_targets_are_met_at_their_limit_and_missed_above_it(bench) -> None:
    cells = bench.target_cells(
        table(bench, epsilon=1.3, preset_a=1.61, ig=17.6, sg=17.7, zennit=3.0)
    )
    verdicts = {target.split()[0]: met for target, (_, met) in cells.items()}
    assert verdicts["`lrp.epsilon`"] is True
    assert verdicts["`lrp.sequential_preset_a`"] is False
    assert verdicts["`integrated_gradients`"] is True
    assert verdicts["`smoothgrad`"] is False
    assert verdicts["first"] is True and verdicts["peak"] is True


def test_epsilon_plus_flat_must_also_beat_zennit(bench) -> None:
    target = "`lrp.epsilon_plus_flat` <= 1.6 and faster than Zennit"
    assert bench.target_cells(table(bench, flat=1.5, zennit=3.0))[target] == (
        "1.50 (Zennit 3.00)",
        True,
    )
    assert bench.target_cells(table(bench, flat=1.5, zennit=1.4))[target][1] is False
    assert bench.target_cells(table(bench, flat=1.5))[target][1] is False  # Zennit failed


def test_first_call_and_memory_targets_name_the_worst_row(bench) -> None:
    rows = table(bench, zennit=3.0)
    rows[1].first_call = 2.5  # lrp.epsilon: first call 2.5x its steady state
    rows[2].memory = 160  # preset A: 1.6x the reference's memory
    cells = bench.target_cells(rows)
    assert cells["first call <= 2x the steady state"] == ("at most 2.50 (lrp.epsilon)", False)
    assert cells["peak memory <= 1.5x"] == ("at most 1.60 (lrp.sequential_preset_a)", False)
    text = bench.render_targets({"vgg16": rows, "resnet50": table(bench, zennit=3.0)})
    assert (
        "| first call <= 2x the steady state | at most 2.50 (lrp.epsilon) | at most 1.10 (lrp.epsilon) | vgg16 **no**, resnet50 yes |"
        in text
    )
