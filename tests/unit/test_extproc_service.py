"""The decision service as processes: a supervisor, two workers sharing the ports, sources
from files, restarts, and counters summed across workers."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
from conftest import eventually, until
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from test_extproc_http import envoy_json, headers_message, post

from junction.catalog.file import FileCatalog, FileConfig
from junction.extproc.service import ExtProcService, ServiceSettings

CONFIG = """\
listener:
  listen: {port: 8000}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {prefix: ["/api"], weight: 90}
    web-api-go:   {prefix: ["/api"], weight: 10}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    pin: {trust: any}
experiments:
  feed:
    service: web-api
    match: {prefix: /api}
    key: {header: x-user-id}
    arms: {a: {weight: 50}, b: {weight: 50, version: go}}
cluster:
  loadbalancer: {web-api-perl: {}, web-api-go: {}}
"""

INSTANCES = """\
services:
  web-api-perl: [{address: 127.0.0.1, port: 1}]
  web-api-go: [{address: 127.0.0.1, port: 2, status: GO_STATUS}]
"""


@dataclass
class Running:
    service: ExtProcService
    config: Path
    instances: Path

    async def stats(self) -> dict:  # type: ignore[type-arg]
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.service.stats_port}/stats") as r,
        ):
            return orjson.loads(await r.read())  # type: ignore[no-any-return]

    async def ready(self) -> None:
        async def check() -> bool:
            return bool((await self.stats())["ready"])

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await check():
            assert loop.time() < deadline, "workers never became ready"
            await asyncio.sleep(0.05)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config = tmp_path / "config.yaml"
    instances = tmp_path / "instances.yaml"
    config.write_text(CONFIG)
    instances.write_text(INSTANCES.replace("GO_STATUS", "passing"))
    service = ExtProcService(
        ServiceSettings(
            config_source=FileConfig(config, interval=0.05),
            catalog_source=FileCatalog(instances, interval=0.05),
            http_port=0,
            grpc_port=0,
            stats_port=0,
            workers=2,
        )
    )
    await service.start()
    try:
        r = Running(service, config, instances)
        await r.ready()
        yield r
    finally:
        await service.stop()


async def decide_over_http(port: int, connections: int, **headers: str) -> list[dict]:  # type: ignore[type-arg]
    """One request on each of ``connections`` fresh connections; the decoded answers."""

    async def one() -> dict:  # type: ignore[type-arg]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(envoy_json(**headers)))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.close()
        return orjson.loads(body)  # type: ignore[no-any-return]

    return list(await asyncio.gather(*(one() for _ in range(connections))))


def decision_of(answer: dict) -> str:  # type: ignore[type-arg]
    import base64

    for h in answer["request_headers"]["response"]["header_mutation"]["set_headers"]:
        if h["header"]["key"] == "x-junction-decision":
            return base64.b64decode(h["header"]["raw_value"]).decode()
    return ""


async def test_workers_share_the_ports_and_assign_keys_identically(running: Running) -> None:
    service = running.service
    assert service.http_port and service.grpc_port
    answers = await decide_over_http(service.http_port, 40, x_user_id="user-7")
    assert len({decision_of(a) for a in answers}) == 1  # the same arm in every worker
    answers = await decide_over_http(service.http_port, 40, x_junction_version="go")
    assert {decision_of(a) for a in answers} == {"pin=go"}

    # Workers copy their counters to shared memory every PUBLISH_INTERVAL, so a row can be
    # non-zero and still stale: wait for the totals expected, then check them over HTTP.
    async def totals() -> dict[str, int]:
        return service.status()["counters"]  # type: ignore[no-any-return]

    await until(totals, lambda c: (c["requests"], c["decided_pin"]) == (80, 40), timeout=30)
    # Both workers took connections (SO_REUSEPORT spreads them; 80 connections all landing
    # on one of two workers has probability 2**-79).
    assert all(service.shared.row(i)["requests"] > 0 for i in range(2))
    stats = await running.stats()
    assert stats["counters"]["requests"] == 80
    assert stats["counters"]["decided_pin"] == 40

    # The gRPC port is shared too.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = ep_grpc.ExternalProcessorStub(channel)
        message = headers_message(x_junction_version="go")
        (answer,) = [r async for r in stub.Process(iter([message]), timeout=30)]
    values = {
        h.header.key: h.header.raw_value
        for h in answer.request_headers.response.header_mutation.set_headers
    }
    assert values["x-junction-cluster"] == b"web-api-go"


async def test_a_killed_worker_is_restarted_and_its_counts_are_kept(running: Running) -> None:
    service = running.service
    assert service.http_port
    await decide_over_http(service.http_port, 20, x_junction_version="go")
    await eventually(lambda: service.status()["counters"]["requests"] == 20, timeout=30)
    before = [w["pid"] for w in service.status()["workers"]]
    os.kill(before[0], signal.SIGKILL)
    await eventually(lambda: service.status()["workers"][0]["pid"] != before[0], timeout=30)
    await running.ready()
    status = service.status()
    assert status["workers"][0]["restarts"] == 1
    assert status["counters"]["requests"] == 20  # nothing lost with the dead worker
    answers = await decide_over_http(service.http_port, 10, x_junction_version="go")
    assert {decision_of(a) for a in answers} == {"pin=go"}


async def test_health_and_config_changes_reach_every_worker(running: Running) -> None:
    service = running.service
    assert service.http_port
    first = service.status()["table"]
    running.instances.write_text(INSTANCES.replace("GO_STATUS", "critical"))
    await eventually(lambda: service.status()["table"] != first, timeout=30)
    await running.ready()
    answers = await decide_over_http(service.http_port, 20, x_junction_version="go")
    assert {decision_of(a) for a in answers} == {"pin=go,fallback=perl"}

    # A bad config is refused; the last good one keeps serving.
    running.config.write_text(CONFIG.replace("trust: any", "trust: sometimes"))
    await eventually(lambda: service.status()["config_error"] is not None, timeout=30)
    assert "versions.web-api.pin.trust" in service.status()["config_error"]
    answers = await decide_over_http(service.http_port, 5, x_junction_version="go")
    assert {decision_of(a) for a in answers} == {"pin=go,fallback=perl"}
