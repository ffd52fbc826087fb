"""Outlier detection and slow start with a real Envoy, real upstreams and `junction up`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from harness import Junction, Tally, drive, free_port, junction_up, post, upstreams

pytestmark = pytest.mark.slow

CONFIG = """\
listener:
  listen: {{address: 127.0.0.1, port: {listener}}}
  timeout: {{connect: 1, request: 5}}
route: {{domain: [example.com], cluster: {{svc: {{prefix: [/]}}}}}}
cluster:
  loadbalancer:
    svc:
{lb}
"""


@dataclass
class Two:
    junction: Junction
    listener: int
    a: int
    b: int
    instances: Path

    def write_instances(self, ports: list[int]) -> None:
        body = "".join(f"    - {{address: 127.0.0.1, port: {p}}}\n" for p in ports)
        tmp = self.instances.with_suffix(".tmp")
        tmp.write_text("services:\n  svc:\n" + body)
        os.replace(tmp, self.instances)


@asynccontextmanager
async def two_instances(tmp: Path, lb: str, first: list[str]) -> AsyncIterator[Two]:
    """Upstreams a and b of ``svc``; the instances file names those in ``first``."""
    a, b, listener = free_port(), free_port(), free_port()
    config = tmp / "config.yaml"
    config.write_text(CONFIG.format(listener=listener, lb=lb))
    instances = tmp / "instances.yaml"
    async with upstreams([("svc", a), ("svc", b)]):
        two = Two(None, listener, a, b, instances)  # type: ignore[arg-type]
        two.write_instances([{"a": a, "b": b}[k] for k in first])
        async with junction_up(tmp, config, instances, listener_port=listener) as junction:
            two.junction = junction
            await junction.wait_acked()
            yield two


def host_of(clusters: dict[str, Any], port: int) -> dict[str, Any] | None:
    for cluster in clusters["cluster_statuses"]:
        if cluster["name"] == "svc":
            for host in cluster.get("host_statuses", []):
                if host["address"]["socket_address"]["port_value"] == port:
                    return dict(host["health_status"])
    return None


async def test_outlier_detection_ejects_the_failing_instance(tmp_path: Path) -> None:
    lb = (
        "      outlier-detection: {consecutive-5xx: 3, interval: 1, base-ejection-time: 300,\n"
        "                          max-ejection-percent: 100}\n"
    )
    async with two_instances(tmp_path, lb, ["a", "b"]) as two:
        await until(lambda: drive(two.listener, "/x", count=20), lambda t: t.failures == 0)
        await post(f"http://127.0.0.1:{two.b}/_control?error_rate=1")  # b: always 500
        seen = Tally()

        async def ejected() -> dict[str, Any] | None:
            await drive(two.listener, "/x", count=10, tally=seen)
            return host_of(await two.junction.envoy_admin("/clusters?format=json"), two.b)

        flags = await until(ejected, lambda h: bool(h and h.get("failed_outlier_check")))
        assert seen.statuses[500] >= 3, seen  # what it took: consecutive 5xx from b
        # From now on nothing fails and nothing reaches b.
        after = await drive(two.listener, "/x", count=300)
        assert after.failures == 0, (after.statuses, after.errors[:3])
        assert after.ports == {str(two.a): 300}
        # /status and /healthz go by what Envoy reports.
        status = await two.junction.status()
        host = status["envoy_hosts"]["svc"][f"127.0.0.1:{two.b}"]
        assert host["serving"] is False and "failed_outlier_check" in host["flags"], host
        assert status["envoy_hosts"]["svc"][f"127.0.0.1:{two.a}"]["serving"] is True
        assert await two.junction.healthz() == (200, "OK\n")
        assert flags.get("eds_health_status", "HEALTHY") == "HEALTHY"  # EDS says nothing
        # a fails too: with max-ejection-percent 100 it is ejected as well, and /healthz
        # says the cluster has no healthy host although the catalog calls both healthy.
        await post(f"http://127.0.0.1:{two.a}/_control?error_rate=1")

        async def healthz() -> tuple[int, str]:
            await drive(two.listener, "/x", count=10)
            return await two.junction.healthz()

        _, body = await until(healthz, lambda r: r[0] == 503)
        assert "cluster svc has no healthy host" in body, body


async def test_slow_start_ramps_a_new_instance_up(tmp_path: Path) -> None:
    """A joining instance gets far less than an equal share during the window, and an
    equal share once the window is over.

    Envoy scales a host's weight by max(10 %, (t/window) ** (1/aggression)) while it is in
    its window (Envoy docs, "Slow start mode"); with window 15 s and aggression 0.2 the
    factor stays at the 10 % floor for the first 9.4 s (requests are counted for 8 s). Only
    a host whose window is over has full weight, so the old instance must be older than
    the window first."""
    window = 15.0
    lb = f"      lb-policy: round-robin\n      slow-start: {{window: {window}, aggression: 0.2}}\n"
    async with two_instances(tmp_path, lb, ["a"]) as two:
        loop = asyncio.get_running_loop()
        await until(lambda: drive(two.listener, "/x", count=20), lambda t: t.failures == 0)
        a_joined = loop.time()  # no earlier than Envoy's own start of a's window
        await asyncio.sleep(max(0.0, a_joined + window + 1 - loop.time()))
        two.write_instances([two.a, two.b])
        # b's window starts when Envoy adds the host: count from when its admin shows it.
        await until(
            lambda: two.junction.envoy_admin("/clusters?format=json"),
            lambda c: host_of(c, two.b) is not None,
            timeout=10,
        )
        joined = loop.time()
        early = await drive(two.listener, "/x", count=2000, duration=8)
        assert early.failures == 0
        total = sum(early.ports.values())
        share = early.ports[str(two.b)] / total
        # An equal share is 50 %; at 10 % of a's weight b gets ~9 % of the requests.
        # Bound: under 25 % with at least 100 requests (binomial sd under 3 %).
        assert total >= 100, early
        assert early.ports[str(two.b)] > 0 and share < 0.25, early.ports
        # After the window: equal weights, round robin alternates.
        await asyncio.sleep(max(0.0, joined + window + 1 - loop.time()))
        late = await drive(two.listener, "/x", count=400)
        assert late.failures == 0
        assert 160 <= late.ports[str(two.b)] <= 240, late.ports
