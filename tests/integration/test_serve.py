"""`junction serve` with an Envoy started elsewhere from `junction bootstrap`'s output,
and two replicas side by side (one per Envoy) sharing only their sources."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from conftest import until
from envoy.service.discovery.v3 import ads_pb2_grpc
from harness import ROOT, STARTUP, drive, free_port, stop_process, upstreams, wait_port
from xds_snapshots import nack, request

from junction.envoy_process import EnvoyProcess
from junction.xds.resources import CLUSTER

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def serve(
    tmp: Path, config: Path, instances: Path, name: str, *extra: str
) -> AsyncIterator[tuple[int, int]]:
    http_port, xds_port = free_port(), free_port()
    log = (tmp / f"{name}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "junction", "serve", "-c", str(config), "--instances", str(instances),
        "--http-port", str(http_port), "--xds-port", str(xds_port), *extra,
        stdout=log, stderr=log, cwd=ROOT,
    )  # fmt: skip
    try:
        await wait_port(http_port, timeout=STARTUP)
        yield http_port, xds_port
    finally:
        await stop_process(proc)
        log.close()


async def bootstrap_for(xds_port: int, node_id: str) -> dict:  # type: ignore[type-arg]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "junction", "bootstrap", "--node-id", node_id,
        "--xds-port", str(xds_port), "--admin-port", "0",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out)  # type: ignore[no-any-return]


async def synced(http_port: int, node_id: str, timeout: float = 15) -> dict:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{http_port}/status") as resp:
                status = await resp.json()
            nodes = {n["node_id"]: n for n in status["nodes"]}
            if node_id in nodes and nodes[node_id]["synced"]:
                return status  # type: ignore[no-any-return]
            assert loop.time() < deadline, status
            await asyncio.sleep(0.05)


async def test_two_replicas_each_with_its_own_envoy(tmp_path: Path) -> None:
    go, perl, listener_a, listener_b = free_port(), free_port(), free_port(), free_port()
    instances = tmp_path / "instances.yaml"
    instances.write_text(
        f"services:\n  web-api-go: [{{address: 127.0.0.1, port: {go}}}]\n"
        f"  web-api-perl: [{{address: 127.0.0.1, port: {perl}}}]\n"
    )
    configs = []
    for name, port in (("a", listener_a), ("b", listener_b)):
        path = tmp_path / f"config-{name}.yaml"
        path.write_text(
            f"listener: {{listen: {{address: 127.0.0.1, port: {port}}}}}\n"
            "route:\n  domain: [example.com]\n  cluster:\n"
            "    web-api-go: {prefix: [/api], weight: 50}\n"
            "    web-api-perl: {prefix: [/api], weight: 50}\n"
            "cluster: {loadbalancer: {web-api-go: {}, web-api-perl: {}}}\n"
        )
        configs.append(path)
    async with (
        upstreams([("web-api-go", go), ("web-api-perl", perl)]),
        serve(tmp_path, configs[0], instances, "a") as (http_a, xds_a),
        serve(tmp_path, configs[1], instances, "b") as (http_b, xds_b),
    ):
        envoy_a = EnvoyProcess(await bootstrap_for(xds_a, "edge-a"))
        envoy_b = EnvoyProcess(await bootstrap_for(xds_b, "edge-b"))
        async with envoy_a, envoy_b:
            status_a = await synced(http_a, "edge-a")
            status_b = await synced(http_b, "edge-b")
            # Each replica serves its own Envoy only; they share nothing but the sources.
            assert [n["node_id"] for n in status_a["nodes"]] == ["edge-a"]
            assert [n["node_id"] for n in status_b["nodes"]] == ["edge-b"]
            for listener in (listener_a, listener_b):
                tally = await drive(listener, "/api/x", count=100)
                assert tally.failures == 0
                assert set(tally.services) == {"web-api-go", "web-api-perl"}
            url = f"http://127.0.0.1:{http_a}/healthz"
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                assert (resp.status, await resp.text()) == (200, "OK\n")


async def test_healthz_judges_the_named_envoy_and_never_a_rogue_client(tmp_path: Path) -> None:
    go, listener = free_port(), free_port()
    instances = tmp_path / "instances.yaml"
    instances.write_text(f"services:\n  web-api-go: [{{address: 127.0.0.1, port: {go}}}]\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listener: {{listen: {{address: 127.0.0.1, port: {listener}}}}}\n"
        "route:\n  domain: [example.com]\n  cluster:\n    web-api-go: {prefix: [/]}\n"
        "cluster: {loadbalancer: {web-api-go: {}}}\n"
    )
    async with (
        upstreams([("web-api-go", go)]),
        serve(tmp_path, config, instances, "n", "--node-id", "edge-a") as (http, xds),
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{http}/healthz"

        async def healthz() -> tuple[int, str]:
            async with session.get(url) as resp:
                return resp.status, await resp.text()

        await until(healthz, lambda r: r == (503, "node edge-a: never connected to xDS\n"))
        async with EnvoyProcess(await bootstrap_for(xds, "edge-a")):
            await synced(http, "edge-a")
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds}")
            rogue = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            try:
                await rogue.write(request(CLUSTER, node="rogue"))
                cds = await asyncio.wait_for(rogue.read(), 15)
                await rogue.write(nack(cds, "", "rogue says no"))
                status = await until_rogue_nacked(session, http)
                assert status["healthz"] == {"status": 200, "reasons": []}
                assert status["health_nodes"] == ["edge-a"]
                async with session.get(url) as resp:
                    assert (resp.status, await resp.text()) == (200, "OK\n")
            finally:
                rogue.cancel()
                await channel.close()


async def until_rogue_nacked(session: aiohttp.ClientSession, http: int) -> dict:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        async with session.get(f"http://127.0.0.1:{http}/status") as resp:
            status = await resp.json()
        nodes = {n["node_id"]: n for n in status["nodes"]}
        if "rogue" in nodes and nodes["rogue"]["types"]["Cluster"]["nack"]:
            return status  # type: ignore[no-any-return]
        assert loop.time() < deadline, status
        await asyncio.sleep(0.05)
