"""Sliding windows: counts, failures, sketch quantiles, slots in and out of range."""

from __future__ import annotations

import random

import pytest

from junction.als.record import LogRecord
from junction.als.windows import Figures, WindowKey, Windows


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rec(
    t: float,
    cluster: str = "go",
    status: int = 200,
    ms: float = 10.0,
    decision: str = "",
    reset: bool = False,
    route: str = "/api",
) -> LogRecord:
    # `t` is the start; the windows place a record at t + ms.
    return LogRecord(
        t - ms / 1000, "n", route, cluster, status, ms, reset, "GET", "h", "/", decision, ""
    )


def test_counts_failures_and_quantiles() -> None:
    clock = Clock(1000.0)
    w = Windows(clock=clock)
    rng = random.Random(7)
    latencies = [rng.uniform(1, 100) for _ in range(2000)]
    w.add(rec(999.5, ms=ms) for ms in latencies)
    w.add([rec(999.5, status=503), rec(999.5, status=0, reset=True), rec(999.5, status=404)])
    f = w.figures(990, 1000)
    assert (f.requests, f.failures, f.server_errors, f.resets) == (2003, 2, 1, 1)
    assert f.error_rate == pytest.approx(2 / 2003)
    exact = sorted([*latencies, 10.0, 10.0, 10.0])
    for q, got in ((0.5, f.p50), (0.95, f.p95), (0.99, f.p99)):
        true = exact[int(q * (len(exact) - 1))]
        assert (
            got is not None and abs(got - true) / true < 0.03
        )  # DDSketch: 1 % relative + rank slack


def test_windows_select_slots_by_end_time() -> None:
    clock = Clock(1000.0)
    w = Windows(slot_seconds=1.0, clock=clock)
    w.add([rec(950.0), rec(990.2), rec(999.9, ms=50)])  # the last one ends "in the future": now
    assert w.figures(995, 1000).requests == 1
    assert w.figures(989, 991).requests == 1
    assert w.figures(900, 1000).requests == 3
    assert w.figures(960, 980) == Figures()


def test_old_slots_leave_the_horizon_and_late_records_are_counted() -> None:
    clock = Clock(1000.0)
    w = Windows(slot_seconds=1.0, horizon=60.0, clock=clock)
    w.add([rec(950.0)])
    w.add([rec(900.0)])  # ended before the horizon
    assert w.late == 1
    clock.now = 1100.0
    w.add([rec(1099.0)])  # opening a new slot prunes those behind the horizon
    assert w.figures(0, 2000).requests == 1


def test_canary_figures_exclude_pins_and_experiment_arms() -> None:
    clock = Clock(1000.0)
    w = Windows(clock=clock)
    w.add([
        rec(999, "go", decision="canary=go"),
        rec(999, "go", decision=""),
        rec(999, "go", decision="exp=feed:control,canary=go"),
        rec(999, "go", status=500, decision="pin=go"),
        rec(999, "go", status=500, decision="exp=feed:treatment"),
        rec(999, "perl", decision="canary=perl"),
    ])  # fmt: skip
    go = w.canary_figures("go", 990, 1000)
    assert (go.requests, go.failures) == (3, 0)
    assert w.canary_figures("perl", 990, 1000).requests == 1
    assert w.figures(990, 1000, cluster="go").requests == 5
    assert w.figures(990, 1000, arm="feed:treatment").failures == 1
    assert WindowKey("/api", "go", "", "pin") in w.keys(990, 1000)


def test_missing_entries_are_kept_per_slot() -> None:
    clock = Clock(1000.0)
    w = Windows(clock=clock)
    w.note_missing(5)
    w.note_missing(0)
    w.note_missing(2, at=980.0)
    assert w.missing(999, 1000) == 5
    assert w.missing(970, 1000) == 7
    assert w.missing(900, 970) == 0


def test_summary_lists_every_key() -> None:
    clock = Clock(1000.0)
    w = Windows(clock=clock)
    w.add([rec(999, "go"), rec(999, "perl", status=500)])
    rows = {r["cluster"]: r for r in w.summary(60)}
    assert rows["perl"]["error_rate"] == 1.0 and rows["go"]["requests"] == 1


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        Windows(slot_seconds=0)
    with pytest.raises(ValueError):
        Windows(slot_seconds=10, horizon=5)
