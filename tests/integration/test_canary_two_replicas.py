"""One canary decision from two replicas' evidence: two Envoys, two control planes, the
Consul double, and traffic split between the Envoys.

Each ``junction up`` runs its own Envoy and access-log receiver; canary states, the leader
lock and the replicas' evidence live in the double's KV. Sessions use a 2 s TTL (the double
plays a Consul whose servers set ``session_ttl_min`` to 1 s), so a take-over takes seconds.
Assertions are about who decided, on whose evidence and in which order, never about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from consul_double import ConsulDouble
from harness import Junction, Tally, drive, free_port, junction_up, post, upstreams

pytestmark = pytest.mark.slow

TTL = 2.0
LOCK_DELAY = 1.0
CONFIG = """\
listener:
  listen: {{protocol: tcp, address: 127.0.0.1, port: {listener}}}
  timeout: {{connect: 1, request: 5}}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {{prefix: ["/api"], weight: 90}}
    web-api-go:   {{prefix: ["/api"], weight: 10}}
cluster: {{loadbalancer: {{web-api-perl: {{}}, web-api-go: {{}}}}}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{header: x-junction-version, trust: any}}
    canary:
      version: go
      weight: 10
      ramp:
        steps: {steps}
        interval: {interval}
        min-requests: 20
"""


def write_replica(
    tmp: Path, name: str, listener: int, perl: int, go: int, steps: str, interval: float
) -> tuple[Path, Path, Path]:
    """A replica's directory, config (its own listener port) and instances."""
    d = tmp / name
    d.mkdir()
    cfg = d / "config.yaml"
    cfg.write_text(CONFIG.format(listener=listener, steps=steps, interval=interval))
    inst = d / "instances.yaml"
    inst.write_text(
        "services:\n"
        f"  web-api-perl:\n    - {{address: 127.0.0.1, port: {perl}}}\n"
        f"  web-api-go:\n    - {{address: 127.0.0.1, port: {go}}}\n"
    )
    return d, cfg, inst


@contextlib.asynccontextmanager
async def fleet(
    tmp: Path, consul: ConsulDouble, perl: int, go: int, *, steps: str, interval: float
) -> AsyncIterator[dict[str, Junction]]:
    """Replicas ``a`` and ``b``: ``junction up`` each, states and evidence in Consul."""
    async with contextlib.AsyncExitStack() as stack:
        replicas: dict[str, Junction] = {}
        for name in ("a", "b"):
            listener = free_port()
            d, cfg, inst = write_replica(tmp, name, listener, perl, go, steps, interval)
            extra = [
                "--consul-addr", consul.address, "--canary-replica", name,
                "--canary-leader-ttl", str(TTL), "--canary-lock-delay", str(LOCK_DELAY),
                "--als-flush-interval", "0.2", "--extproc-workers", "0",
            ]  # fmt: skip
            j = await stack.enter_async_context(
                junction_up(d, cfg, inst, listener_port=listener, extra=extra)
            )
            replicas[name] = j
        for j in replicas.values():
            await j.wait_acked()
        yield replicas


async def canary(j: Junction) -> dict[str, Any]:
    async with j.session.get(f"http://127.0.0.1:{j.http_port}/canary/web-api") as resp:
        body: dict[str, Any] = await resp.json()
        return body


def fleet_status(status: dict[str, Any]) -> dict[str, Any]:
    fleet_part: dict[str, Any] = status["als"]["controller"]["fleet"]
    return fleet_part


async def leader_of(replicas: dict[str, Junction]) -> str:
    async def who() -> list[str]:
        out = []
        for name, j in replicas.items():
            with contextlib.suppress(Exception):
                if fleet_status(await j.status())["election"]["leader"]:
                    out.append(name)
        return out

    found = await until(who, lambda names: len(names) == 1, timeout=30)
    return found[0]


def phase(body: dict[str, Any]) -> str | None:
    state = body.get("state")
    return state["phase"] if state else None


@contextlib.asynccontextmanager
async def split_traffic(
    replicas: dict[str, Junction], tallies: dict[str, Tally]
) -> AsyncIterator[Callable[[str], None]]:
    """Traffic through every replica's Envoy (counted per replica) until the block ends; the
    callable stops the traffic of one replica (before it is killed)."""
    stops = {name: asyncio.Event() for name in replicas}
    tasks = [
        asyncio.create_task(
            drive(
                j.listener_port,
                "/api/x",
                count=10**6,
                concurrency=3,
                duration=150,
                stop=stops[name],
                tally=tallies.setdefault(name, Tally()),
            )
        )
        for name, j in replicas.items()
    ]
    try:
        yield lambda name: stops[name].set()
    finally:
        for s in stops.values():
            s.set()
        await asyncio.gather(*tasks)


async def final_state(j: Junction, timeout: float = 120) -> dict[str, Any]:
    return await until(
        lambda: canary(j), lambda b: phase(b) in ("promoted", "rolled_back"), timeout=timeout
    )


async def test_a_failing_candidate_is_rolled_back_on_the_merged_evidence(tmp_path: Path) -> None:
    perl, go = free_port(), free_port()
    async with (
        ConsulDouble(session_ttl_min=1.0) as consul,
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        fleet(tmp_path, consul, perl, go, steps="[10, 50, 100]", interval=3.0) as replicas,
    ):
        await post(f"http://127.0.0.1:{go}/_control?error_rate=0.2")
        tallies: dict[str, Tally] = {}
        async with split_traffic(replicas, tallies):
            leader = await leader_of(replicas)
            follower = "b" if leader == "a" else "a"
            body = await final_state(replicas[follower])
            status = fleet_status(await replicas[leader].status())
        assert phase(body) == "rolled_back", body["events"]
        actions = [e["action"] for e in body["events"]]
        assert actions.count("rollback") == 1 and "promote" not in actions
        assert actions.count("start") == 1  # one ramp for the fleet
        # The leader merged both replicas' evidence; the follower never decided.
        assert status["deciding"] is True
        merge = status["merges"]["web-api"]
        assert merge["counted"] == ["a", "b"], merge
        follower_status = fleet_status(await replicas[follower].status())
        assert follower_status["deciding"] is False
        assert "not the leader" in follower_status["why_not"]
        ages = {r["replica"]: r["age"] for r in merge["replicas"]}
        assert set(ages) == {"a", "b"} and all(age <= 10 for age in ages.values())
        # Both Envoys carried traffic, and the candidate's failures reached both.
        for t in tallies.values():
            assert sum(t.statuses.values()) >= 50 and t.statuses[500] > 0, t.statuses


async def test_a_healthy_candidate_is_promoted_once_per_step_by_the_fleet(tmp_path: Path) -> None:
    perl, go = free_port(), free_port()
    async with (
        ConsulDouble(session_ttl_min=1.0) as consul,
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        fleet(tmp_path, consul, perl, go, steps="[10, 25, 50, 100]", interval=2.0) as replicas,
    ):
        tallies: dict[str, Tally] = {}
        async with split_traffic(replicas, tallies):
            body = await final_state(replicas["a"])
        assert phase(body) == "promoted", body["events"]
        steps = [
            (e["from_weight"], e["to_weight"]) for e in body["events"] if e["action"] == "promote"
        ]
        assert steps == [(10, 25), (25, 50), (50, 100)]  # exactly one event per step
        assert [e["action"] for e in body["events"]].count("start") == 1
        assert all(t.failures == 0 for t in tallies.values())
        for j in replicas.values():  # both replicas serve the same final state
            assert (await canary(j))["state"]["weight"] == 100


async def test_killing_the_leader_mid_ramp_the_other_continues_at_the_same_step(
    tmp_path: Path,
) -> None:
    perl, go = free_port(), free_port()
    async with (
        ConsulDouble(session_ttl_min=1.0) as consul,
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        fleet(tmp_path, consul, perl, go, steps="[10, 25, 50, 75, 100]", interval=2.0) as replicas,
    ):
        tallies: dict[str, Tally] = {}
        async with split_traffic(replicas, tallies) as stop_traffic:
            leader = await leader_of(replicas)
            survivor = "b" if leader == "a" else "a"
            await until(lambda: canary(replicas[survivor]), lambda b: b["state"]["weight"] >= 25,
                        timeout=90)  # fmt: skip
            stop_traffic(leader)
            replicas[leader].proc.send_signal(signal.SIGKILL)
            await replicas[leader].proc.wait()
            killed_at = time.time()  # the controllers' clock: the same host's wall clock
            before = await canary(replicas[survivor])
            body = await final_state(replicas[survivor])
            status = fleet_status(await replicas[survivor].status())
        assert phase(body) == "promoted", body["events"]
        assert before["state"]["phase"] == "ramping"
        after = [e for e in body["events"] if e["at"] > before["state"]["updated"]]
        assert after and after[0]["from_weight"] == before["state"]["weight"]
        assert "start" not in [e["action"] for e in after]  # continued, not restarted
        # No decision before the dead leader's session could have run out.
        assert after[0]["at"] >= killed_at + TTL, (after[0], killed_at)
        steps = [
            (e["from_weight"], e["to_weight"]) for e in body["events"] if e["action"] == "promote"
        ]
        assert steps == [(10, 25), (25, 50), (50, 75), (75, 100)]  # never a step twice
        assert status["election"]["leader"] is True and status["replica"] == survivor
        dead = {r["replica"]: r for r in status["merges"]["web-api"]["replicas"]}
        assert leader not in dead or not dead[leader]["counted"]  # stale or withdrawn
