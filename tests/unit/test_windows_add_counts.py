"""Windows.add_counts (the simulator's way in) counts what add() counts for the same requests."""

from __future__ import annotations

import random
from collections import Counter

from junction.als.record import SOURCE_SPLIT, LogRecord
from junction.als.windows import WindowKey, Windows
from junction.canary.evidence import latency_bucket, snap_threshold


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_and_records_give_the_same_evidence() -> None:
    rng = random.Random(4)
    clock = Clock(1000.0)
    by_records, by_counts = Windows(clock=clock), Windows(clock=clock)
    thresholds = (snap_threshold(25.0), snap_threshold(60.0))
    for second in range(990, 1000):
        for cluster, p_err in (("go", 0.2), ("perl", 0.01)):
            ms = [rng.lognormvariate(3.0, 0.5) for _ in range(rng.randrange(0, 80))]
            failed = [rng.random() < p_err for _ in ms]
            end = second + 0.5
            by_records.add(
                LogRecord(
                    end - m / 1000,
                    "n",
                    "/api",
                    cluster,
                    500 if f else 200,
                    m,
                    False,
                    "GET",
                    "h",
                    "/",
                    "",
                    "",
                )
                for m, f in zip(ms, failed, strict=True)
            )
            by_counts.add_counts(
                WindowKey("/api", cluster, "", SOURCE_SPLIT),
                end,
                sum(failed),
                Counter(latency_bucket(m) for m in ms),
            )
    a = by_records.step_evidence("perl", "go", thresholds, 990.0, 1000.0)
    b = by_counts.step_evidence("perl", "go", thresholds, 990.0, 1000.0)
    assert a == b and len(a.ticks) == 10 and a.totals()[1].errors > 0
    fa = by_records.canary_figures("go", 990.0, 1000.0)
    fb = by_counts.canary_figures("go", 990.0, 1000.0)
    assert (fa.requests, fa.failures) == (fb.requests, fb.failures)
    assert fa.p99 is not None and fb.p99 is not None and abs(fa.p99 - fb.p99) <= 0.04 * fa.p99


def test_counts_older_than_the_horizon_are_late() -> None:
    clock = Clock(1000.0)
    windows = Windows(clock=clock, horizon=60.0)
    windows.add_counts(WindowKey("r", "c", "", SOURCE_SPLIT), 900.0, 0, {latency_bucket(5.0): 3})
    assert windows.late == 3 and windows.canary_figures("c", 0.0, 1000.0).requests == 0
