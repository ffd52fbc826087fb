"""The fleet coordinator against the Consul double: only the leader decides, on the merge of
every replica's offer; nobody decides while Consul is unreachable, and each says why."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from conftest import until
from consul_double import ConsulDouble

from junction.als.evidence import SideCounts, StepEvidence, TickCounts
from junction.canary.coordinator import (
    FleetCoordinator,
    FleetSettingError,
    FleetSettings,
    make_coordinator,
)
from junction.canary.fleet import EvidenceBoard
from junction.canary.leader import LeaderElection
from junction.canary.store import ConsulStateStore
from junction.catalog.consul import Backoff

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")


def counts(ticks: dict[int, tuple[int, int]], thresholds: tuple[float, ...] = ()) -> StepEvidence:
    n = len(thresholds)
    return StepEvidence.of(
        1.0,
        thresholds,
        [TickCounts(k, SideCounts(b, 1, (0,) * n), SideCounts(c, 1, (0,) * n))
         for k, (b, c) in ticks.items()],
    )  # fmt: skip


@contextlib.asynccontextmanager
async def replicas(
    double: ConsulDouble, store: ConsulStateStore, names: list[str]
) -> AsyncIterator[dict[str, FleetCoordinator]]:
    clock = double.state.clock
    out = {}
    tasks = []
    for name in names:
        election = LeaderElection(
            store, name, ttl=10.0, clock=clock.now, backoff=Backoff(0.01, 0.05)
        )
        board = EvidenceBoard(store, name, clock=clock.now, interval=1.0)
        out[name] = FleetCoordinator(election, board)
        tasks.append(asyncio.create_task(out[name].run()))
    try:
        yield out
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def leader(fleet: dict[str, FleetCoordinator]) -> str:
    async def leading() -> list[str]:
        return [n for n, c in fleet.items() if c.leader()]

    return (await until(leading, lambda ls: len(ls) == 1, timeout=10))[0]


async def test_only_the_leader_decides_on_everyones_merged_counts(
    double: ConsulDouble, store: ConsulStateStore
) -> None:
    async with replicas(double, store, ["a", "b", "c"]) as fleet:
        first = await leader(fleet)
        followers = [n for n in fleet if n != first]
        for i, name in enumerate(followers):  # followers publish; they do not decide
            c = fleet[name]

            async def holder(c: FleetCoordinator = c) -> str | None:
                return c.election.state.holder

            await until(holder, lambda h: h == first, timeout=10)  # it has read the key
            assert await c.begin() is False
            assert c.why_not == f"not the leader ({first} leads)"
            c.offer("web", 12, counts({10: (10 * (i + 1), 1), 11: (5, 1), 12: (5, 1)}))
            await c.end()
            assert c.idle()  # published; nothing more to do until a second has passed
        lead = fleet[first]
        assert await lead.begin() is True and lead.why_not is None
        own = lead.offer("web", 11, counts({10: (1, 1), 11: (1, 1)}))
        merged, why = lead.evidence("web", own)
        assert why is None and merged is not None
        # Ticks up to the smallest closed tick (the leader's 11), summed over the three.
        assert [t.tick for t in merged.ticks] == [10, 11]
        assert merged.ticks[0].baseline == SideCounts(31, 3)
        assert merged.ticks[1].candidate == SideCounts(3, 3)
        status = lead.status()
        assert status["deciding"] is True
        assert status["merges"]["web"]["counted"] == sorted(fleet)
        assert all(r["age"] < 10 for r in status["merges"]["web"]["replicas"])


async def test_the_leader_holds_for_a_replica_on_the_previous_thresholds(
    double: ConsulDouble, store: ConsulStateStore
) -> None:
    async with replicas(double, store, ["a", "b"]) as fleet:
        first = await leader(fleet)
        other = fleet["b" if first == "a" else "a"]
        await other.begin()
        other.offer("web", 10, counts({10: (5, 5)}))  # no thresholds yet
        await other.end()
        lead = fleet[first]
        assert await lead.begin()
        own = lead.offer("web", 10, counts({10: (5, 5)}, (40.0,)))
        merged, why = lead.evidence("web", own)
        assert merged is None and why is not None and "has not read the step's state" in why
        assert lead.status()["holds"] == {"web": why}


async def test_nobody_decides_while_consul_is_unreachable_and_each_says_why(
    double: ConsulDouble, store: ConsulStateStore
) -> None:
    async with replicas(double, store, ["a", "b"]) as fleet:
        first = await leader(fleet)
        await double.stop_serving()
        double.advance(5.0)  # the next renewal is due, and fails

        async def nobody() -> list[str]:
            return [n for n, c in fleet.items() if c.leader()]

        await until(nobody, lambda ls: ls == [], timeout=10)
        for c in fleet.values():
            assert await c.begin() is False
            assert c.why_not is not None and "unreachable" in c.why_not, c.why_not
        await double.start_serving()
        assert await leader(fleet) == first  # the same session, still valid: it leads again


def test_fleet_settings_name_the_flag_that_is_wrong() -> None:
    with pytest.raises(FleetSettingError, match="--canary-leader-ttl"):
        FleetSettings(leader_ttl=0)
    with pytest.raises(FleetSettingError, match="--canary-lock-delay"):
        FleetSettings(lock_delay=61)
    with pytest.raises(FleetSettingError, match="--canary-stale-after"):
        FleetSettings(stale_after=0.5)
    with pytest.raises(FleetSettingError, match="--canary-replica"):
        FleetSettings(replica="a/b")
    assert FleetSettings().replica_id("node-1") == "node-1"
    assert FleetSettings(replica="r").replica_id("node-1") == "r"


async def test_make_coordinator_uses_one_replica_id(store: ConsulStateStore) -> None:
    c = make_coordinator(store, FleetSettings(leader_ttl=12, lock_delay=3), node_id="n1")
    assert c.replica == c.election.replica == c.board.replica == "n1"
    assert c.election.lock_delay == 3 and c.election.state.ttl == 12
