"""Fleet evidence: exact merges of the replicas' counts, staleness, the bounds, and the
publish/read cycle through py-consul against the Consul double."""

from __future__ import annotations

import random

import orjson
import pytest
from consul_double import ConsulDouble

from junction.als.evidence import (
    EvidenceFormatError,
    SideCounts,
    StepEvidence,
    TickCounts,
    snap_threshold,
)
from junction.als.record import LogRecord
from junction.als.windows import Windows
from junction.canary.errors import StoreError
from junction.canary.fleet import (
    EvidenceBoard,
    ServiceEvidence,
    Summary,
    bound_ticks,
    encode_bounded,
    merge_fleet,
)
from junction.canary.store import ConsulStateStore

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

BASE, CAND = "web-api-perl", "web-api-go"
T0 = 1_767_225_600.0


def traffic(seed: int, seconds: int = 120, rps: int = 50) -> list[LogRecord]:
    """Synthetic split traffic: 10 % candidate, 1 % vs 4 % errors, log-normal latencies."""
    rng = random.Random(seed)
    out = []
    for i in range(seconds * rps):
        t = T0 + i / rps + rng.random() / rps
        cand = rng.random() < 0.10
        failed = rng.random() < (0.04 if cand else 0.01)
        ms = rng.lognormvariate(3.0, 0.6) * (1.2 if cand else 1.0)
        cluster = CAND if cand else BASE
        out.append(
            LogRecord(t, "n", "/api", cluster, 503 if failed else 200, ms, False, "GET", "h",
                      "/api/x", "", "")
        )  # fmt: skip
    return out


def windows_of(records: list[LogRecord]) -> Windows:
    w = Windows(slot_seconds=1.0, horizon=300.0, clock=lambda: T0 + 130)
    w.add(records)
    return w


THRESHOLDS = tuple(snap_threshold(ms) for ms in (20.0, 40.0, 80.0))


def step_ev(w: Windows) -> StepEvidence:
    return w.step_evidence(BASE, CAND, THRESHOLDS, T0, T0 + 130)


@pytest.mark.parametrize("replicas", [2, 5])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merged_evidence_of_replicas_equals_one_receivers(replicas: int, seed: int) -> None:
    records = traffic(seed)
    one = step_ev(windows_of(records))
    rng = random.Random(seed + 100)  # the load balancer: every request to one replica
    parts: list[list[LogRecord]] = [[] for _ in range(replicas)]
    for r in records:
        parts[rng.randrange(replicas)].append(r)
    through = max(t.tick for t in one.ticks)
    summaries = []
    for i, part in enumerate(parts):
        ev = step_ev(windows_of(part))
        published = Summary(f"r{i}", T0 + 130, {"web-api": ServiceEvidence(through, ev)})
        raw, _ = encode_bounded(published)  # through KV: bytes and back
        summaries.append((Summary.loads(raw), 0.5))
    fleet = merge_fleet(summaries, "web-api", tick_seconds=1.0, thresholds_ms=THRESHOLDS)
    assert fleet.counted() == [f"r{i}" for i in range(replicas)]
    assert fleet.evidence == one  # tick by tick, side by side, every slow count
    assert sum(t.candidate.errors for t in one.ticks) > 0  # not vacuously equal


def ev(ticks: dict[int, tuple[int, int]], thresholds: tuple[float, ...] = ()) -> StepEvidence:
    """Evidence with (baseline requests, candidate requests) per tick, no errors."""
    n = len(thresholds)
    return StepEvidence.of(
        1.0,
        thresholds,
        [TickCounts(k, SideCounts(b, 0, (0,) * n), SideCounts(c, 0, (0,) * n))
         for k, (b, c) in ticks.items()],
    )  # fmt: skip


def test_only_ticks_every_counted_replica_closed_are_merged() -> None:
    a = Summary("a", T0, {"s": ServiceEvidence(11, ev({10: (5, 1), 11: (5, 1), 12: (3, 0)}))})
    b = Summary("b", T0, {"s": ServiceEvidence(10, ev({10: (4, 1), 11: (2, 0)}))})
    fleet = merge_fleet([(a, 1.0), (b, 1.0)], "s", tick_seconds=1.0, thresholds_ms=())
    assert fleet.through == 10  # b has not closed tick 11 yet: it may still grow
    assert fleet.evidence is not None
    assert [t.tick for t in fleet.evidence.ticks] == [10]
    assert fleet.evidence.ticks[0].baseline.requests == 9


def test_stale_other_threshold_and_silent_replicas_are_left_out_and_say_why() -> None:
    fresh = Summary("a", T0, {"s": ServiceEvidence(10, ev({10: (5, 1)}))})
    stale = Summary("b", T0, {"s": ServiceEvidence(10, ev({10: (50, 10)}))})
    other = Summary("c", T0, {"s": ServiceEvidence(10, ev({10: (7, 7)}, (20.0,)))})
    silent = Summary("d", T0, {})
    fleet = merge_fleet(
        [(fresh, 2.0), (stale, 10.5), (other, 0.1), (silent, 0.1)],
        "s",
        tick_seconds=1.0,
        thresholds_ms=(),
        stale_after=10.0,
    )
    assert fleet.counted() == ["a"]
    assert fleet.evidence is not None and fleet.evidence.ticks[0].baseline.requests == 5
    why = {r.replica: r.why for r in fleet.replicas}
    assert why["b"] is not None and "stale: no update for 10.5s" in why["b"]
    assert why["c"] is not None and "latency thresholds [20.0]" in why["c"]
    assert why["d"] == "no evidence for this service"
    assert fleet.waiting == ("c",)  # fresh, but has not read this step's thresholds yet
    nobody = merge_fleet([(stale, 11.0)], "s", tick_seconds=1.0, thresholds_ms=())
    assert nobody.evidence is None and nobody.through is None


def test_the_bound_keeps_the_newest_ticks_and_counts_the_rest_missing() -> None:
    one = ServiceEvidence(9, ev({k: (10, 2) for k in range(10)}))
    kept = bound_ticks(one, 4)
    assert [t.tick for t in kept.evidence.ticks] == [6, 7, 8, 9]
    assert kept.dropped == 6 and kept.evidence.missing == 6 * 12
    assert bound_ticks(one, 10) is one
    big = Summary("r", T0, {f"svc{i}": one for i in range(20)})
    raw, fitted = encode_bounded(big, max_ticks=10, max_bytes=3000)
    assert len(raw) <= 3000
    assert all(len(s.evidence.ticks) < 10 for s in fitted.services.values())
    assert Summary.loads(raw) == fitted
    with pytest.raises(EvidenceFormatError, match="do not fit"):
        encode_bounded(big, max_bytes=100)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"nope", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"replica": "a"}', "missing field 'published'"),
        (b'{"replica": "a", "published": 1, "services": {"s": {"tick_seconds": 1}}}',
         "services.s: missing field 'through'"),
        (b'{"replica": "a", "published": 1, "services": {"s": {"through": 1,'
         b' "tick_seconds": 1, "ticks": [[1, [1, 2, []], [0, 0, []]]]}}}',
         "errors <= requests"),
    ],
)  # fmt: skip
def test_bad_published_values_name_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        Summary.loads(raw)


# ---- the board against the Consul double --------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_publish_read_merge_age_and_withdraw(
    double: ConsulDouble, store: ConsulStateStore
) -> None:
    clock, wall = Clock(), Clock()
    boards = [
        EvidenceBoard(store, name, clock=clock, wall=wall, interval=1.0, stale_after=10.0)
        for name in ("a", "b")
    ]
    a, b = boards
    assert await a.publish({"s": ServiceEvidence(10, ev({10: (5, 1)}))})
    assert not await a.publish({"s": ServiceEvidence(10, ev({10: (5, 1)}))})  # rate bound
    assert await b.publish({"s": ServiceEvidence(10, ev({10: (4, 2)}))})
    double.put_kv("junction-state/canary-evidence/junk", "not json")
    await a.read()
    fleet = a.merged("s", tick_seconds=1.0, thresholds_ms=())
    assert fleet.counted() == ["a", "b"]
    assert fleet.evidence is not None and fleet.evidence.ticks[0].candidate.requests == 3
    [problem] = a.status()["problems"]
    assert problem.startswith("junction-state/canary-evidence/junk: not canary evidence (not JSON")
    # b stops publishing; a keeps on. Ages run on the reader's clock from the last change.
    for _ in range(11):
        clock.now += 1.0
        wall.now += 1.0
        assert await a.publish({"s": ServiceEvidence(10, ev({10: (5, 1)}))})
        await a.read()
    fleet = a.merged("s", tick_seconds=1.0, thresholds_ms=())
    assert fleet.counted() == ["a"]
    ages = {r.replica: r.age for r in fleet.replicas}
    assert ages == {"a": 0.0, "b": 11.0}
    assert a.status()["replicas"]["b"]["stale"] is True
    # A reader that first sees an old value ages it by the publisher's timestamp.
    late = EvidenceBoard(store, "c", clock=clock, wall=wall)
    await late.read()
    ages = {r.replica: r.age for r in late.merged("s", tick_seconds=1.0, thresholds_ms=()).replicas}
    assert ages["b"] == 11.0 and ages["a"] == 0.0
    # The reader's own current evidence replaces what it published last.
    mine = a.merged(
        "s", tick_seconds=1.0, thresholds_ms=(), own=ServiceEvidence(11, ev({10: (9, 9)}))
    )
    assert mine.evidence is not None and mine.evidence.ticks[0].candidate.requests == 9
    await b.withdraw()
    await a.read()
    assert sorted(a.summaries) == ["a"]
    raw = double.state.kv_read("junction-state/canary-evidence/a", False)[1][0].value
    assert orjson.loads(raw or b"")["replica"] == "a"


async def test_an_unreachable_consul_is_a_store_error_naming_it(double: ConsulDouble) -> None:
    s = ConsulStateStore(double.address)
    board = EvidenceBoard(s, "a")
    await double.stop_serving()
    try:
        with pytest.raises(StoreError, match=f"consul at {double.address}"):
            await board.publish({})
        with pytest.raises(StoreError, match="reading junction-state/canary-evidence/"):
            await board.read()
    finally:
        await s.close()
    with pytest.raises(StoreError, match="without '/'"):
        EvidenceBoard(s, "a/b")
