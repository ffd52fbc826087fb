"""envoy/pin.lua, the in-proxy header pin, in a real Envoy on Junction's own routes."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from google.protobuf import json_format
from harness import free_port, upstreams, wait_port

from junction.catalog.model import Catalog, Instance
from junction.config.load import load_config
from junction.envoy_process import EnvoyProcess
from junction.xds.translate import translate
from junction.xds.translate_extproc import EXTPROC_FILTER
from junction.xds.validate import static_bootstrap

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
listener:
  listen: {{port: {listener}, address: 127.0.0.1}}
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
# The service's wiring (ext_proc filter, x-junction-cluster routes) for pin.lua to stand in
# for: without this, Envoy matches a trust-any pin natively (junction.extproc.tiers).
decision: {{force-service: true}}
"""


def lua_bootstrap(listener: int, perl: int, go: int) -> dict[str, Any]:
    """Junction's translation rendered static, the ext_proc filter swapped for pin.lua."""
    config = load_config(CONFIG.format(listener=listener), "t")
    catalog = Catalog(
        {
            "web-api-perl": (Instance("127.0.0.1", perl),),
            "web-api-go": (Instance("127.0.0.1", go),),
        }
    )
    doc: dict[str, Any] = json_format.MessageToDict(static_bootstrap(translate(config, catalog)))
    hcm = doc["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
    lua = {
        "name": "envoy.filters.http.lua",
        "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "defaultSourceCode": {"inlineString": (ROOT / "envoy" / "pin.lua").read_text()},
        },
    }
    hcm["httpFilters"] = [lua if f["name"] == EXTPROC_FILTER else f for f in hcm["httpFilters"]]
    doc["admin"] = {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}}
    return doc


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def envoy() -> AsyncIterator[int]:
    perl, go, listener = free_port(), free_port(), free_port()
    async with (
        upstreams([("web-api-perl", perl), ("web-api-go", go)]),
        EnvoyProcess(lua_bootstrap(listener, perl, go)),
    ):
        await wait_port(listener)
        yield listener


async def services(port: int, n: int, headers: list[tuple[str, str]]) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            send = [("Host", "example.com"), *headers]
            async with session.get(f"http://127.0.0.1:{port}/api/x", headers=send) as r:
                assert r.status == 200
                seen[r.headers["x-upstream-service"]] += 1
                seen["decision=" + r.headers.get("x-echo-x-junction-decision", "")] += 1
    return seen


async def test_pins_route_to_their_version(envoy: int) -> None:
    go = await services(envoy, 100, [("x-junction-version", "go")])
    assert go == {"web-api-go": 100, "decision=pin=go": 100}
    perl = await services(envoy, 20, [("x-junction-version", "perl")])
    assert perl["web-api-perl"] == 20


async def test_no_pin_or_a_bad_one_takes_the_plain_route(envoy: int) -> None:
    for headers in (
        [],
        [("x-junction-version", "java")],
        [("x-junction-version", "go"), ("x-junction-version", "perl")],
        [("x-junction-cluster", "web-api-go")],  # a client's own routing header is stripped
    ):
        seen = await services(envoy, 200, headers)
        assert seen["decision="] == 200, (headers, seen)
        # The plain 90/10 route: perl mostly; all-go would mean the header was obeyed.
        assert seen["web-api-perl"] > 140, (headers, seen)
