"""Versioned routing for egress with a real Envoy: the application's outbound calls land on
the callee's version named by the propagated header, and a pinned call chain stays on one
release end to end (ingress -> demo app -> egress -> callee)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from conftest import until
from harness import PYTHON, ROOT, Junction, drive, free_port, junction_up, stop_process, wait_port

pytestmark = pytest.mark.slow

CONFIG = """\
listener:
  listen: {{address: 127.0.0.1, port: {listener}}}
  timeout: {{connect: 1, request: 10}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {{prefix: [/api], weight: 100}}
    web-api-go:   {{prefix: [/api], weight: 0}}
    web-asset:    {{prefix: [/asset]}}
cluster:
  loadbalancer:
    web-api-perl: {{}}
    web-api-go: {{}}
    web-asset: {{}}
    web-feed-perl: {{lb-policy: round-robin}}
    web-feed-go:   {{lb-policy: round-robin}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{header: x-junction-version, trust: any}}
  web-feed:                     # reached only through egress: no route, no pin
    default: perl
    clusters: {{perl: web-feed-perl, go: web-feed-go}}
egress:
  listen: {{address: 127.0.0.1, port: {egress}}}
  services: [web-feed]
"""

SERVICES = ("web-api-perl", "web-api-go", "web-asset", "web-feed-perl", "web-feed-go")


@dataclass
class Stack:
    junction: Junction
    listener: int
    egress: int


@asynccontextmanager
async def apps(ports: dict[str, int], egress: int) -> AsyncIterator[None]:
    """The demo upstreams, able to call through the egress listener (``/call/CALLEE/``)."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(ROOT / "examples" / "upstream.py"), "--egress", f"127.0.0.1:{egress}",
        *[f"{n}:{p}" for n, p in ports.items()],
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for port in ports.values():
            await wait_port(port)
        yield
    finally:
        await stop_process(proc)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    ports = {name: free_port() for name in SERVICES}
    listener, egress = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(listener=listener, egress=egress))
    instances = tmp_path / "instances.yaml"
    instances.write_text(
        "services:\n"
        + "".join(f"  {n}: [{{address: 127.0.0.1, port: {p}}}]\n" for n, p in ports.items())
    )
    async with (
        apps(ports, egress),
        junction_up(
            tmp_path, config, instances, listener_port=listener, extra=["--extproc-workers", "1"]
        ) as junction,
    ):
        await junction.wait_acked()
        await wait_port(egress)
        yield Stack(junction, listener, egress)


async def get(
    port: int, path: str, host: str, headers: dict[str, str] | None = None
) -> dict[str, str]:
    """One request; the response status and headers (lowercased names)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(
            f"http://127.0.0.1:{port}{path}", headers={"Host": host, **(headers or {})}
        ) as resp,
    ):
        await resp.read()
        return {"status": str(resp.status), **{k.lower(): v for k, v in resp.headers.items()}}


async def test_egress_routes_on_the_version_header(stack: Stack) -> None:
    go = await drive(
        stack.egress, "/feed", host="web-feed", count=1000, concurrency=16,
        headers={"x-junction-version": "go"},
    )  # fmt: skip
    assert go.services == {"web-feed-go": 1000}, go
    assert go.failures == 0
    plain = await drive(stack.egress, "/feed", host="web-feed", count=200)
    assert plain.services == {"web-feed-perl": 200}  # no header: the default version
    unknown = await drive(
        stack.egress, "/feed", host="web-feed", count=200, headers={"x-junction-version": "rust"}
    )
    assert unknown.services == {"web-feed-perl": 200}  # a version it lacks: the default
    # NAME:PORT as Host works too, and the header travels on to the callee.
    answer = await get(stack.egress, "/x", f"web-feed:{stack.egress}", {"x-junction-version": "go"})
    assert answer["x-upstream-service"] == "web-feed-go"
    assert answer["x-echo-x-junction-version"] == "go"
    # Egress serves only the listed services; ingress does not serve them at all.
    assert (await get(stack.egress, "/x", "web-api"))["status"] == "404"
    assert (await get(stack.listener, "/x", "web-feed"))["status"] == "404"


async def test_a_pinned_call_chain_stays_on_its_version(stack: Stack) -> None:
    """ingress (pinned to go) -> web-api-go -> egress (header forwarded) -> web-feed-go."""

    async def chained() -> dict[str, str]:
        return await get(
            stack.listener, "/api/call/web-feed/items", "example.com", {"x-junction-version": "go"}
        )

    # The decision service may still be starting (it fails open to the plain routes).
    answer = await until(chained, lambda a: a.get("x-upstream-service") == "web-api-go")
    assert answer["status"] == "200"
    assert answer["x-callee-service"] == "web-feed-go"
    assert answer["x-callee-version"] == "go"
    for _ in range(20):
        again = await chained()
        assert (again["x-upstream-service"], again["x-callee-service"]) == (
            "web-api-go",
            "web-feed-go",
        )
    unpinned = await get(stack.listener, "/api/call/web-feed/items", "example.com")
    assert (unpinned["x-upstream-service"], unpinned["x-callee-service"]) == (
        "web-api-perl",
        "web-feed-perl",
    )


async def test_ingress_strips_version_headers_it_did_not_decide(stack: Stack) -> None:
    """/asset has no decision: an outsider's x-junction-version must not reach web-asset
    (which would forward it and steer its call to web-feed)."""
    answer = await get(
        stack.listener, "/asset/call/web-feed/x", "example.com", {"x-junction-version": "go"}
    )
    assert answer["x-upstream-service"] == "web-asset"
    assert answer.get("x-echo-x-junction-version") is None
    assert answer["x-callee-service"] == "web-feed-perl"
