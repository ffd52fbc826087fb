"""The shared evidence contract: counts per tick per side, exact merges, a bounded JSON form,
and the windows producing it with the canary's filtering."""

from __future__ import annotations

import orjson
import pytest

from junction.als.record import LogRecord
from junction.als.windows import Windows
from junction.canary.evidence import (
    EvidenceFormatError,
    SideCounts,
    StepEvidence,
    TickCounts,
    bucket_edge,
    latency_bucket,
    snap_threshold,
)


def rec(
    t: float, cluster: str, status: int = 200, ms: float = 5.0, decision: str = ""
) -> LogRecord:
    return LogRecord(t, "n", "/api", cluster, status, ms, False, "GET", "h", "/", decision, "")


def test_side_counts_add_and_validate() -> None:
    assert SideCounts(3, 1, (2, 0)) + SideCounts(4, 2, (1, 1)) == SideCounts(7, 3, (3, 1))
    assert SideCounts() + SideCounts(4, 2, (1, 1)) == SideCounts(4, 2, (1, 1))
    with pytest.raises(EvidenceFormatError, match="latency thresholds"):
        _ = SideCounts(1, 0, (1,)) + SideCounts(1, 0, (1, 0))
    with pytest.raises(EvidenceFormatError, match="errors <= requests"):
        SideCounts.from_json([1, 2, []])


def test_merge_of_replicas_equals_one_receiver() -> None:
    a = StepEvidence.of(
        1.0,
        (10.0,),
        [TickCounts(5, SideCounts(10, 1, (2,)), SideCounts(1, 0, (0,)))],
        missing=1,
    )
    b = StepEvidence.of(
        1.0,
        (10.0,),
        [
            TickCounts(6, SideCounts(9, 0, (1,)), SideCounts(2, 1, (1,))),
            TickCounts(5, SideCounts(1, 0, (0,)), SideCounts(3, 3, (3,))),
        ],
        missing=2,
    )
    merged = a.merge(b)
    assert [t.tick for t in merged.ticks] == [5, 6]
    assert merged.ticks[0] == TickCounts(5, SideCounts(11, 1, (2,)), SideCounts(4, 3, (3,)))
    assert merged.missing == 3
    assert merged == b.merge(a)
    assert merged.totals() == (SideCounts(20, 1, (3,)), SideCounts(6, 4, (4,)))
    with pytest.raises(EvidenceFormatError, match="latency thresholds"):
        a.merge(StepEvidence(1.0, (20.0,)))


def test_json_round_trip_and_bad_input() -> None:
    ev = StepEvidence.of(
        1.0, (10.0, 20.0), [TickCounts(7, SideCounts(5, 1, (2, 1)), SideCounts(1, 0, (1, 0)))], 4
    )
    assert StepEvidence.from_json(orjson.loads(orjson.dumps(ev.to_json()))) == ev
    with pytest.raises(EvidenceFormatError, match="tick_seconds"):
        StepEvidence.from_json({"ticks": []})
    with pytest.raises(EvidenceFormatError, match="slow counts for 2 thresholds"):
        StepEvidence.from_json(
            {"tick_seconds": 1, "thresholds_ms": [1, 2], "ticks": [[1, [3, 0, [1]], [0, 0, []]]]}
        )


def test_thresholds_snap_to_bucket_edges() -> None:
    for ms in (0.5, 3.0, 99.9, 250.0, 12_000.0):
        edge = snap_threshold(ms)
        assert ms <= edge < ms * 1.021
        assert latency_bucket(edge) == latency_bucket(ms)
        assert snap_threshold(edge) == edge
    assert bucket_edge(latency_bucket(100.0)) == snap_threshold(100.0)


def test_windows_step_evidence_counts_per_tick_and_filters() -> None:
    clock = lambda: 1100.0  # noqa: E731
    w = Windows(clock=clock)
    slow = snap_threshold(100.0)
    w.add(
        [
            rec(1000.2, "base", ms=5),
            rec(1000.3, "base", 503, ms=500),
            rec(1000.4, "cand", ms=150),
            rec(1000.4, "cand", 0, ms=99),  # no response: a failure
            rec(1000.4, "cand", 500, ms=500, decision="pin=go"),  # pinned: not counted
            rec(1000.4, "cand", 500, ms=500, decision="exp=feed:treatment"),  # own arm
            rec(1000.4, "other", 500, ms=500),
            rec(1002.0, "cand", ms=1),
        ]
    )
    w.note_missing(3, at=1001.0)
    ev = w.step_evidence("base", "cand", (slow,), 999.0, 1003.0)
    assert ev.tick_seconds == 1.0 and ev.thresholds_ms == (slow,) and ev.missing == 3
    assert ev.ticks == (
        TickCounts(1000, SideCounts(2, 1, (1,)), SideCounts(2, 1, (1,))),
        TickCounts(1002, SideCounts(0, 0, (0,)), SideCounts(1, 0, (0,))),
    )
    # Two receivers that each saw half the logs merge to what one receiver saw.
    w1, w2 = Windows(clock=clock), Windows(clock=clock)
    records = [rec(1000.0 + i / 7, "cand" if i % 3 else "base", 500 if i % 5 == 0 else 200, ms=i)
               for i in range(40)]  # fmt: skip
    w1.add(records[::2])
    w2.add(records[1::2])
    one = Windows(clock=clock)
    one.add(records)
    args = ("base", "cand", (snap_threshold(10.0), snap_threshold(30.0)), 999.0, 1010.0)
    assert w1.step_evidence(*args).merge(w2.step_evidence(*args)) == one.step_evidence(*args)
    assert one.canary_quantiles("base", 999.0, 1010.0, (0.5,)) is not None
    assert one.canary_quantiles("nobody", 999.0, 1010.0, (0.5,)) is None


def test_slow_counts_match_a_direct_count_for_any_threshold_order() -> None:
    clock = lambda: 1100.0  # noqa: E731
    w = Windows(clock=clock)
    durations = [0.5, 1.0, 3.0, 9.9, 10.0, 10.3, 29.0, 31.0, 250.0, 800.0]  # all end in 1000
    w.add([rec(1000.1, "cand", ms=ms) for ms in durations])
    for raw in ((10.0, 30.0), (30.0, 10.0), (100.0, 1.0, 30.0), (10.0, 10.0)):
        edges = tuple(snap_threshold(x) for x in raw)
        ev = w.step_evidence("base", "cand", edges, 999.0, 1001.0)
        expected = tuple(sum(ms > e for ms in durations) for e in edges)
        assert ev.ticks[0].candidate.slow == expected, raw
