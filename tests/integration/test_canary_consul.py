"""Canary states in Consul KV, shared by two control-plane replicas (against ConsulDouble).

Replica A is `junction up` (a real Envoy, traffic); replica B is `junction serve` with its
own receiver and controller, which sees no traffic. Both controllers read and write
`junction-state/canary/web-api` with CAS: the ramp still takes each step exactly once, a
command given to one replica is seen by the other, and the human config key is never
written.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import consul.aio
import pytest
from conftest import until
from consul_double import ConsulDouble
from harness import ROOT, Tally, drive, free_port, junction_up, upstreams, wait_port

pytestmark = pytest.mark.slow

KEY = "junction/config"
STATE_KEY = "junction-state/canary/web-api"
CONFIG = """\
listener:
  listen: {{protocol: tcp, address: 127.0.0.1, port: {listener}}}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {{prefix: ["/api"], weight: 90}}
    web-api-go:   {{prefix: ["/api"], weight: 10}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    canary:
      version: go
      weight: 10
      ramp: {{steps: [10, 50, 100], interval: 1.5, min-requests: 20, alpha: 0.001}}
"""


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        return await resp.json()


async def test_two_replicas_share_the_ramp_through_consul(tmp_path: Path) -> None:
    perl, go, listener = free_port(), free_port(), free_port()
    async with (
        ConsulDouble() as double,
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
    ):
        host, port = double.address.split(":")
        client = consul.aio.Consul(host=host, port=int(port))
        try:
            config_text = CONFIG.format(listener=listener)
            await client.kv.put(KEY, config_text)
            for sid, name, p in (("perl-1", "web-api-perl", perl), ("go-1", "web-api-go", go)):
                await client.agent.service.register(
                    name, service_id=sid, address="127.0.0.1", port=p
                )
            common = [
                "--consul-addr",
                double.address,
                "--consul-key",
                KEY,
                "--als-flush-interval",
                "0.2",
            ]
            a_dir, b_dir = tmp_path / "a", tmp_path / "b"
            a_dir.mkdir()
            b_dir.mkdir()
            b_http = free_port()
            b_args = [
                sys.executable, "-m", "junction", "--log-level", "info", "serve",
                "--http-port", str(b_http), "--xds-port", "0", "--als-port", "0", *common,
            ]  # fmt: skip
            with (b_dir / "junction.log").open("wb") as log:
                replica_b = await asyncio.create_subprocess_exec(
                    *b_args, stdout=log, stderr=log, cwd=ROOT
                )
            try:
                async with (
                    junction_up(
                        a_dir,
                        None,
                        None,
                        listener_port=listener,
                        extra=[*common, "--extproc-workers", "0"],
                    ) as a,
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                ):
                    await wait_port(b_http, timeout=20)
                    await a.wait_acked()
                    tally, stop = Tally(), asyncio.Event()
                    traffic = asyncio.create_task(
                        drive(
                            listener,
                            "/api/x",
                            count=10**6,
                            concurrency=4,
                            duration=120,
                            stop=stop,
                            tally=tally,
                        )
                    )
                    try:
                        # A command on replica B reaches replica A through the store.
                        await until(
                            lambda: get_json(session, f"http://127.0.0.1:{b_http}/canary/web-api"),
                            lambda b: (b.get("state") or {}).get("weight") == 10,
                        )
                        async with session.post(
                            f"http://127.0.0.1:{b_http}/canary/web-api/pause"
                        ) as resp:
                            assert resp.status == 200
                        paused = await until(
                            lambda: get_json(
                                session, f"http://127.0.0.1:{a.http_port}/canary/web-api"
                            ),
                            lambda b: b["state"]["phase"] == "paused",
                            timeout=10,
                        )
                        assert paused["state"]["weight"] == 10
                        async with session.post(
                            f"http://127.0.0.1:{a.http_port}/canary/web-api/resume"
                        ) as resp:
                            assert resp.status == 200
                        final = await until(
                            lambda: get_json(session, f"http://127.0.0.1:{b_http}/canary/web-api"),
                            lambda b: b["state"]["phase"] in ("promoted", "rolled_back"),
                            timeout=90,
                        )
                    finally:
                        stop.set()
                        await traffic
                    assert final["state"]["phase"] == "promoted", final["events"]
                    steps = [
                        (e["from_weight"], e["to_weight"])
                        for e in final["events"]
                        if e["action"] == "promote"
                    ]
                    assert steps == [(10, 50), (50, 100)]  # each step once, whichever replica
                    assert [e["action"] for e in final["events"]].count("start") == 1
                    assert tally.failures == 0
            finally:
                if replica_b.returncode is None:
                    replica_b.terminate()
                    await replica_b.wait()
            _, entry = await client.kv.get(STATE_KEY)
            stored = json.loads(entry["Value"])
            assert stored["phase"] == "promoted" and stored["weight"] == 100
            _, config_entry = await client.kv.get(KEY)
            assert config_entry["Value"].decode() == config_text  # the human key untouched
        finally:
            await client.close()
