"""Leader election: the pure state machine, and the adapter against the Consul double.

Time runs on the double's clock: the tests advance it (a second at a time, letting every
live replica renew) instead of sleeping for TTLs, with Consul's real 10 s minimum TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import until
from consul_double import ConsulDouble

from junction.canary.leader import Election, LeaderElection, Step
from junction.canary.store import ConsulStateStore
from junction.catalog.consul import Backoff

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

TTL = 10.0
KEY = "junction-state/canary-leader"


# ---- the pure state machine ---------------------------------------------------------------


def test_a_replica_creates_acquires_renews_and_leads_only_within_its_lease() -> None:
    e = Election(TTL)
    assert e.next_step(0.0) is Step.CREATE and not e.leader(0.0)
    e = e.created("s1", sent=100.0)
    assert e.next_step(100.0) is Step.ACQUIRE
    e = e.acquired(True, "a")
    assert e.leader(100.0) and e.next_step(101.0) is Step.WATCH
    assert e.next_step(105.0) is Step.RENEW  # TTL/2 after the last renewal
    assert e.leader(109.9) and not e.leader(110.0)  # no renewal: the lease ends at TTL
    e = e.renewal(sent=105.0)
    assert e.leader(114.9) and e.renew_in(106.0) == pytest.approx(4.0)


def test_leadership_is_lost_on_failure_a_lost_session_or_another_holder() -> None:
    leading = Election(TTL).created("s1", 0.0).acquired(True, "a")
    failed = leading.failed("consul at 127.0.0.1:1 is unreachable")
    assert not failed.leader(1.0) and failed.session == "s1"  # retries with the same session
    assert failed.next_step(1.0) is Step.ACQUIRE
    lost = leading.session_lost("expired")
    assert lost.next_step(1.0) is Step.CREATE and not lost.leader(1.0)
    taken = leading.observed("s2", "b")
    assert not taken.leader(1.0) and taken.holder == "b"
    assert taken.problem and "no longer names" in taken.problem
    assert leading.observed("s1", "a").leader(1.0)
    assert not leading.observed(None, None).leader(1.0)  # the key was deleted
    assert leading.resigned().session is None and leading.resigned().renewed == -math.inf


def test_a_refused_acquire_is_a_follower() -> None:
    e = Election(TTL).created("s1", 0.0).acquired(False, "a")
    assert not e.leader(0.0) and e.next_step(1.0) is Step.ACQUIRE


# ---- against the Consul double ----------------------------------------------------------


class Contenders:
    """Replicas running elections on the double's clock; ``kill`` stops one without
    resigning (a crash)."""

    def __init__(self, double: ConsulDouble, store: ConsulStateStore) -> None:
        self.double = double
        self.store = store
        self.clock = double.state.clock
        self.elections: dict[str, LeaderElection] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def sleep(self, seconds: float) -> None:
        target = self.clock.now() + seconds
        while self.clock.now() < target:
            await asyncio.sleep(0.01)

    def start(self, name: str) -> LeaderElection:
        e = LeaderElection(
            self.store, name, key=KEY, ttl=TTL, clock=self.clock.now, sleep=self.sleep,
            backoff=Backoff(0.01, 0.05),
        )  # fmt: skip
        self.elections[name] = e
        self.tasks[name] = asyncio.create_task(e.run())
        return e

    async def kill(self, name: str) -> None:
        task = self.tasks.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def leaders(self) -> list[str]:
        return [n for n, e in self.elections.items() if n in self.tasks and e.leader()]

    async def settle(self) -> None:
        """Until every live replica has a session renewed within TTL/2 (after advancing)."""

        async def renewed() -> bool:
            now = self.clock.now()
            return all(
                self.elections[n].state.session is not None
                and self.elections[n].state.renew_in(now) > 0
                for n in self.tasks
            )

        await until(renewed, bool, timeout=10)

    async def close(self) -> None:
        for name in list(self.tasks):
            await self.kill(name)


@pytest.fixture
async def contenders(double: ConsulDouble, store: ConsulStateStore) -> AsyncIterator[Contenders]:
    c = Contenders(double, store)
    try:
        yield c
    finally:
        await c.close()


async def one_leader(c: Contenders) -> str:
    async def leaders() -> list[str]:
        return c.leaders()

    found = await until(leaders, lambda ls: len(ls) == 1, timeout=10)
    return found[0]


async def test_two_contenders_one_leads_and_the_key_names_it(
    contenders: Contenders, store: ConsulStateStore
) -> None:
    contenders.start("a")
    contenders.start("b")
    leader = await one_leader(contenders)
    other = "b" if leader == "a" else "a"
    for _ in range(25):  # 25 s of renewals: the leadership does not flap
        contenders.double.advance(1.0)
        await contenders.settle()
        assert contenders.leaders() == [leader]
    _, entry = await store.request("read", lambda c: c.kv.get(KEY))
    assert entry["Session"] == contenders.elections[leader].state.session
    assert entry["Value"] == leader.encode()
    assert contenders.elections[other].state.holder == leader
    assert contenders.elections[leader].changes == 1


async def advance_until(
    c: Contenders, done: Callable[[], bool], limit: float, step: float = 1.0
) -> float:
    """Advance the clock ``step`` at a time (live replicas renew in between) until
    ``done``; returns the seconds advanced."""
    elapsed = 0.0
    while not done():
        assert elapsed < limit, f"not done after {limit}s on the double's clock"
        c.double.advance(step)
        elapsed += step
        await c.settle()
        await asyncio.sleep(0.05)  # let a pending acquire land
    return elapsed


async def test_when_the_leader_dies_the_other_takes_over_after_the_ttl(
    contenders: Contenders,
) -> None:
    contenders.start("a")
    await one_leader(contenders)
    contenders.start("b")
    await contenders.settle()
    await contenders.kill("a")  # a crash: no release, no destroy
    b = contenders.elections["b"]
    killed_at = contenders.clock.now()
    renewed_a = contenders.elections["a"].state.renewed

    waited = await advance_until(contenders, b.leader, limit=60)
    took_over = contenders.clock.now() - killed_at
    # Never before the dead leader's TTL ran out (Consul: 1-2x TTL, then the lock-delay)...
    assert contenders.clock.now() - renewed_a >= TTL
    # ...with the double at 2x TTL and a lock-delay of one TTL, 2x TTL + TTL + a retry.
    assert 2 * TTL - TTL / 2 <= took_over <= 3 * TTL + 2, (waited, took_over)
    assert contenders.leaders() == ["b"]


async def test_a_failed_renewal_ends_leadership_until_consul_answers(
    contenders: Contenders, double: ConsulDouble
) -> None:
    a = contenders.start("a")
    await one_leader(contenders)
    double.fail_requests(500, "No cluster leader")
    await advance_until(contenders_without_settle(contenders), lambda: not a.leader(), 10)
    assert a.state.problem and "No cluster leader" in a.state.problem
    double.serve_normally()
    # The session survived (renewed again within 2x TTL): a leads again, same session.
    await advance_until(contenders, a.leader, limit=10)
    assert a.changes == 3


def contenders_without_settle(c: Contenders) -> Contenders:
    """The same contenders, advancing without waiting for renewals (they fail)."""

    class NoSettle(Contenders):
        async def settle(self) -> None:
            await asyncio.sleep(0.05)

    n = NoSettle(c.double, c.store)
    n.elections, n.tasks = c.elections, c.tasks
    return n


async def test_losing_the_lock_to_an_outside_destroy_ends_leadership_at_once(
    contenders: Contenders, store: ConsulStateStore
) -> None:
    a = contenders.start("a")
    await one_leader(contenders)
    sid = a.state.session
    await store.request("destroy", lambda c: c.session.destroy(sid))

    async def leading() -> bool:
        return a.leader()

    # No renewal needed: the blocking watch on the key sees its Session cleared.
    await until(leading, lambda v: not v, timeout=10)
    assert a.state.problem and "no longer names" in a.state.problem


async def test_a_clean_resign_hands_over_without_the_lock_delay(contenders: Contenders) -> None:
    contenders.start("a")
    contenders.start("b")
    leader = await one_leader(contenders)
    other = "b" if leader == "a" else "a"
    await contenders.elections[leader].resign()
    await contenders.kill(leader)

    async def other_leads() -> bool:
        return contenders.elections[other].leader()

    # Released, then destroyed: no lock-delay, so no clock advance is needed.
    await until(other_leads, bool, timeout=10)
