"""Two replicas' controllers through the Consul double decide exactly as one receiver of all
the traffic would: the same actions on the same steps; the follower never writes."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from consul_double import ConsulDouble

from junction.als.record import LogRecord
from junction.als.windows import Windows
from junction.canary.controller import CanaryController
from junction.canary.coordinator import FleetCoordinator
from junction.canary.fleet import EvidenceBoard
from junction.canary.leader import LeaderElection
from junction.canary.state import Phase
from junction.canary.store import ConsulStateStore, FileStateStore, StateStore
from junction.catalog.consul import Backoff
from junction.config.load import load_config
from junction.config.model import Config

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

T0 = 1_767_225_600.0
TICK = 0.5
CONFIG = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
cluster: {loadbalancer: {web-api-perl: {}, web-api-go: {}}}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    canary:
      version: go
      weight: 10
      ramp:
        steps: [10, 50, 100]
        interval: 8
        min-requests: 20
        latency-thresholds: [40, 80]
"""


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def tick_records(rng: random.Random, now: float, weight: int, cand_error: float) -> list[LogRecord]:
    out = []
    for _ in range(100):  # 200 req/s
        cand = rng.random() < weight / 100
        failed = rng.random() < (cand_error if cand else 0.01)
        ms = rng.lognormvariate(3.0, 0.5)
        end = now - TICK * rng.random()
        out.append(
            LogRecord(end - ms / 1000, "n", "/api", "web-api-go" if cand else "web-api-perl",
                      500 if failed else 200, ms, False, "GET", "h", "/api/x", "", "")
        )  # fmt: skip
    return out


@contextlib.asynccontextmanager
async def consul_store(double: ConsulDouble) -> AsyncIterator[ConsulStateStore]:
    s = ConsulStateStore(double.address)
    try:
        yield s
    finally:
        await s.close()


Event = tuple[str, int, int, float, Any]


def counted(evidence: dict[str, Any] | None) -> Any:
    """The counts a decision rests on (each side's, and the ramp's candidate totals)."""
    if evidence is None:
        return None
    return [evidence[k] for k in ("baseline", "candidate", "ramp_candidate", "last_tick")]


async def run_worlds(
    double: ConsulDouble, tmp: Path, cand_error: float, seed: int
) -> tuple[list[Event], list[Event], list[int]]:
    """The same traffic to (1) one controller over all of it, (2) two replicas each seeing
    a random half. Returns both worlds' events and the follower's event count."""
    config: Config = load_config(CONFIG, "test")
    clock = Clock()
    single_windows = Windows(slot_seconds=1.0, horizon=300.0, clock=clock)
    single = CanaryController(
        FileStateStore(tmp / "single"), single_windows, lambda: config, tick=TICK, clock=clock
    )
    async with consul_store(double) as store:
        names = ("a", "b")
        windows = {n: Windows(slot_seconds=1.0, horizon=300.0, clock=clock) for n in names}
        coords = {
            n: FleetCoordinator(
                LeaderElection(store, n, ttl=10.0, backoff=Backoff(0.01, 0.05)),
                EvidenceBoard(store, n, clock=clock, wall=clock, interval=TICK),
            )
            for n in names
        }
        tasks = [asyncio.create_task(coords["a"].run())]
        await until(lambda: asyncio.sleep(0, coords["a"].leader()), bool, timeout=10)
        tasks.append(asyncio.create_task(coords["b"].run()))
        ctrl = {
            n: CanaryController(
                store, windows[n], lambda: config, tick=TICK, clock=clock, coordinator=coords[n]
            )
            for n in names
        }
        try:
            rng, split = random.Random(seed), random.Random(seed + 1)
            await single.tick()
            await ctrl["b"].tick()
            await ctrl["a"].tick()
            fleet_store: StateStore = store
            for _ in range(400):
                stored = await fleet_store.get("web-api")
                assert stored is not None and stored.state is not None
                if stored.state.phase is not Phase.RAMPING:
                    break
                clock.now += TICK
                records = tick_records(rng, clock.now, stored.state.weight, cand_error)
                single_windows.add(records)
                for r in records:
                    windows["a" if split.random() < 0.5 else "b"].add([r])
                await single.tick()
                await ctrl["b"].tick()  # the follower publishes first, as it would by then
                await ctrl["a"].tick()
            assert coords["a"].leader() and not coords["b"].leader()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

        def events(c: CanaryController) -> list[Event]:
            return [
                (e.action, e.from_weight, e.to_weight, e.at, counted(e.evidence)) for e in c.events
            ]

        return events(single), events(ctrl["a"]), [len(ctrl["b"].events), ctrl["b"].lost_races]


def same_decisions(one: list[Event], fleet: list[Event]) -> None:
    assert [e[:3] for e in fleet] == [e[:3] for e in one]
    assert [e[4] for e in fleet] == [e[4] for e in one]  # on the same counts
    # The leader stores a new step's thresholds before judging it: at most a tick later.
    for a, b in zip(one, fleet, strict=True):
        assert 0 <= b[3] - a[3] <= TICK, (one, fleet)


async def test_a_healthy_ramp_is_promoted_exactly_as_by_one_receiver(
    double: ConsulDouble, tmp_path: Path
) -> None:
    single, fleet, follower = await run_worlds(double, tmp_path, cand_error=0.01, seed=5)
    assert [e[0] for e in single] == ["start", "promote", "promote"], single
    same_decisions(single, fleet)
    assert follower == [0, 0]  # the follower recorded nothing and never tried to write


async def test_a_failing_candidate_is_rolled_back_exactly_as_by_one_receiver(
    double: ConsulDouble, tmp_path: Path
) -> None:
    single, fleet, follower = await run_worlds(double, tmp_path, cand_error=0.20, seed=7)
    assert [e[0] for e in single] == ["start", "rollback"], single
    same_decisions(single, fleet)
    assert follower == [0, 0]
