"""GET /metrics of every Junction process, scraped from a real stack and parsed with
prometheus_client's own parser.

One ``junction up`` (real Envoy, the access-log receiver in-process, a two-worker decision
service) and a ``junction als serve``. Counters must move with the traffic that was sent,
the decision service's counters must be the sum over both workers (equal to /stats, and to
the requests sent), and hostile requests (random versions, random paths) must not add a
single series.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import PYTHON, ROOT, drive, free_port, junction_up, stop_process, upstreams, wait_port
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.slow]

CONFIG = """\
listener:
  listen: {{protocol: tcp, address: 127.0.0.1, port: {listener}}}
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
    pin: {{trust: any}}
# force-service: pins with trust any are otherwise decided by Envoy itself (native tier),
# and this test is about the decision service's own counters.
decision: {{transport: http, failure-mode: open, timeout: 5, force-service: true}}
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(session: aiohttp.ClientSession, port: int) -> tuple[Samples, dict[str, str]]:
    """Every sample of ``/metrics`` on ``port``, and each family's type."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    families = list(text_string_to_metric_families(text))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    return samples, {f.name: f.type for f in families}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(
    check: Callable[[], Any], what: str, timeout: float = 30.0
) -> Any:  # the test's own bound, well inside pytest's
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            result = await check()
            if result:
                return result
        if loop.time() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.1)


async def test_every_process_exports_metrics_that_move_with_traffic(tmp_path: Path) -> None:
    perl, go, listener, stats = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(listener=listener))
    instances = tmp_path / "instances.yaml"
    instances.write_text(
        f"services:\n  web-api-perl: [{{address: 127.0.0.1, port: {perl}}}]\n"
        f"  web-api-go: [{{address: 127.0.0.1, port: {go}}}]\n"
    )
    extra = [
        "--extproc-workers", "2", "--extproc-stats-port", str(stats),
        "--extproc-http-port", str(free_port()), "--extproc-grpc-port", str(free_port()),
    ]  # fmt: skip
    async with (
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        junction_up(tmp_path, config, instances, listener_port=listener, extra=extra) as up,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        await up.wait_acked()
        node = (await up.status())["nodes"][0]["node_id"]

        # The control plane: xDS pushes ACKed by this Envoy, with their latency.
        cp, types = await scrape(session, up.http_port)
        assert types["junction_xds_push_ack_seconds"] == "histogram"
        assert types["junction_xds_acks"] == "counter"
        assert get(cp, "junction_xds_connected_nodes") == 1
        assert get(cp, "junction_xds_node_synced", node=node) == 1
        for t in ("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"):
            assert get(cp, "junction_xds_acks_total", type=t, node=node) >= 1, t
            assert get(cp, "junction_xds_push_ack_seconds_count", type=t) >= 1, t
        assert get(cp, "junction_xds_snapshot_resources", type="Cluster") == 2
        assert get(cp, "junction_config_accepted_total", origin=str(config)) == 1
        assert get(cp, "junction_xds_publish_seconds_count") >= 1

        # A bad config is counted as rejected; the good one keeps serving.
        config.write_text("listener: {listen: {port: nope}}\n")
        await until(
            lambda: _value(
                session, up.http_port, "junction_config_rejected_total", origin=str(config)
            ),
            "a rejected config in /metrics",
        )
        config.write_text(CONFIG.format(listener=listener))

        # The decision service: 300 pinned requests, summed over both workers.
        async def ready() -> bool:
            async with session.get(f"http://127.0.0.1:{stats}/stats") as r:
                s = await r.json()
                return bool(s["ready"]) and len(s["workers"]) == 2

        await until(ready, "two ready decision workers")
        before, _ = await scrape(session, stats)
        tally = await drive(listener, "/api/x", count=300, headers={"x-junction-version": "go"})
        assert tally.failures == 0 and tally.services["web-api-go"] == 300, tally

        async def counted() -> Samples | None:
            now, _ = await scrape(session, stats)
            done = get(now, "junction_extproc_decisions_total", kind="pin") - get(
                before, "junction_extproc_decisions_total", kind="pin"
            )
            return now if done >= 300 else None

        after = await until(counted, "300 pin decisions in /metrics")
        assert (
            get(after, "junction_extproc_decisions_total", kind="pin")
            - get(before, "junction_extproc_decisions_total", kind="pin")
            == 300
        )
        async with session.get(f"http://127.0.0.1:{stats}/stats") as r:
            counters = (await r.json())["counters"]
        # /stats and /metrics are the same sum over the workers.
        assert get(after, "junction_extproc_decisions_total", kind="pin") == counters["decided_pin"]
        assert get(after, "junction_extproc_workers") == 2
        # One answer in 16 is timed, in each worker (its 1st, 17th, ...): the summed
        # histogram counts between requests/16 and requests/16 + workers.
        timed = get(after, "junction_extproc_answer_seconds_count")
        assert counters["requests"] // 16 <= timed <= counters["requests"] // 16 + 2
        assert get(after, "junction_extproc_answer_seconds_bucket", le="+Inf") == timed
        assert 0 < get(after, "junction_extproc_answer_seconds_sum") < timed

        # Hostile requests: random versions and paths add no series, only counts.
        series = set(after)
        rng = random.Random(7)
        for _ in range(3):
            version = "".join(rng.choice("abcdefghij") for _ in range(12))
            path = "/api/" + "".join(rng.choice("xyz0123") for _ in range(20))
            await drive(listener, path, count=20, headers={"x-junction-version": version})
        hostile = await until(
            lambda: _scraped_if(
                session, stats,
                lambda s: get(s, "junction_extproc_pins_refused_total", reason="unknown_version") >= 60,
            ),
            "60 refused pins",
        )  # fmt: skip
        assert set(hostile) == series

        # The access-log receiver (in-process with `up`): entries arrive for the traffic.
        logged = await until(
            lambda: _scraped_if(
                session, up.http_port,
                lambda s: get(s, "junction_als_requests_total", cluster="web-api-go",
                              decision="pin", outcome="ok") >= 300,
            ),
            "the pinned requests' access log entries in /metrics",
        )  # fmt: skip
        assert get(logged, "junction_als_entries_processed_total") >= 300


async def _value(session: aiohttp.ClientSession, port: int, name: str, **labels: str) -> float:
    samples, _ = await scrape(session, port)
    return get(samples, name, **labels)


async def _scraped_if(
    session: aiohttp.ClientSession, port: int, check: Callable[[Samples], bool]
) -> Samples | None:
    samples, _ = await scrape(session, port)
    return samples if check(samples) else None


async def test_als_serve_exports_its_metrics(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(listener=free_port()))
    http_port = free_port()
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "junction", "als", "serve", "-c", str(config),
        "--port", "0", "--http-port", str(http_port), "--state-dir", str(tmp_path / "state"),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_port(http_port, timeout=20)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            samples, types = await scrape(session, http_port)
        assert types["junction_als_entries_received"] == "counter"
        assert get(samples, "junction_als_entries_received_total") == 0
        assert get(samples, "junction_als_queue_limit_bytes") > 0
    finally:
        await stop_process(proc)
