"""Decisions Envoy makes natively (junction.xds.translate_native), in a real Envoy, checked
request by request against the decision service's own table (junction.extproc.table) on
the same config: both must pick the same side, tag and version for every key.

Envoy runs Junction's translation rendered static, plus two upstream listeners in the same
process (``direct_response`` echoing the decision and version headers), so the only Python
in the loop is the pipelining client (tests/integration/pipelined.py).

``JUNCTION_AGREEMENT_KEYS`` sets how many keys the agreement test sends (default 100,000:
about 40 s on the loaded 2-core machine it was written on; lower it for a quick run).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import xxhash
from google.protobuf import json_format
from harness import free_port, wait_port
from pipelined import request, send_all

from junction.catalog.model import Catalog, Health, Instance
from junction.config.load import load_config
from junction.config.model import Config
from junction.envoy_process import EnvoyProcess
from junction.extproc.counters import Counters
from junction.extproc.table import DecisionTable
from junction.xds.translate import translate
from junction.xds.validate import static_bootstrap

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CONFIG = """\
listener:
  listen: {{port: {listener}, address: 127.0.0.1}}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {{prefix: ["/api"], weight: 70}}
    web-api-go:   {{prefix: ["/api"], weight: 30}}
cluster: {{loadbalancer: {{web-api-perl: {{}}, web-api-go: {{}}}}}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{trust: any, query: v, when-unavailable: {unavailable}}}
    canary: {{version: go, weight: 30, key: {{header: x-user-id, cookie: uid}}}}
"""
AGREEMENT_KEYS = int(os.environ.get("JUNCTION_AGREEMENT_KEYS", "100000"))


def upstream_listener(name: str, port: int) -> dict[str, Any]:
    """A listener answering 200 with the service name and the decision headers it got."""
    echo = [
        {"header": {"key": "x-upstream-service", "value": name}},
        {"header": {"key": "x-echo-decision", "value": "%REQ(x-junction-decision)%"}},
        {"header": {"key": "x-echo-version", "value": "%REQ(x-junction-version)%"}},
    ]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": name,
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200},
                            "response_headers_to_add": echo,
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


@dataclass
class Native:
    port: int
    config: Config
    table: DecisionTable


def native_bootstrap(config: Config, perl: int, go: int, go_health: Health) -> dict[str, Any]:
    catalog = Catalog(
        {
            "web-api-perl": (Instance("127.0.0.1", perl),),
            "web-api-go": (Instance("127.0.0.1", go, health=go_health),),
        }
    )
    doc: dict[str, Any] = json_format.MessageToDict(static_bootstrap(translate(config, catalog)))
    doc["staticResources"]["listeners"] += [
        upstream_listener("web-api-perl", perl),
        upstream_listener("web-api-go", go),
    ]
    doc["admin"] = {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}}
    return doc


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def native() -> AsyncIterator[Native]:
    listener, perl, go = free_port(), free_port(), free_port()
    config = load_config(CONFIG.format(listener=listener, unavailable="default"), "t")
    async with EnvoyProcess(native_bootstrap(config, perl, go, Health.HEALTHY)):
        await wait_port(listener)
        yield Native(listener, config, DecisionTable(config))


@dataclass(frozen=True)
class Side:
    """Where a request went and what the upstream was told."""

    status: int
    service: str
    decision: str
    version: str


def envoy_sides(replies: Sequence[tuple[int, dict[bytes, bytes]]]) -> list[Side]:
    return [
        Side(
            status,
            h.get(b"x-upstream-service", b"-").decode(),
            h.get(b"x-echo-decision", b"").decode(),
            h.get(b"x-echo-version", b"").decode(),
        )
        for status, h in replies
    ]


def service_side(table: DecisionTable, path: bytes, headers: Sequence[tuple[bytes, bytes]]) -> Side:
    """What the decision service decides for the same request (its compiled table)."""
    given: dict[str, list[bytes]] = {
        ":authority": [b"example.com"],
        ":path": [path],
        ":method": [b"GET"],
    }
    for name, value in headers:
        given.setdefault(name.decode(), []).append(value)
    d = table.decide(given, None, Counters())
    sets = dict(d.set_headers)
    if d.status:
        return Side(d.status, "-", "", "")
    return Side(
        200,
        sets.get("x-junction-cluster", "?"),
        sets.get("x-junction-decision", ""),
        sets.get("x-junction-version", ""),
    )


async def agree(
    native: Native, cases: Sequence[tuple[bytes, Sequence[tuple[bytes, bytes]]]], batch: int = 100
) -> list[Side]:
    """Send every case through Envoy; assert each lands where the service would send it."""
    got = envoy_sides(await send_all(native.port, [request(p, h) for p, h in cases], batch=batch))
    for (path, headers), side in zip(cases, got, strict=True):
        assert side == service_side(native.table, path, headers), (path, headers)
    return got


def keys(n: int, seed: int) -> list[bytes]:
    """Varied keys: numbers, hex ids, e-mail-like strings, odd bytes (seeded)."""
    rng = random.Random(seed)
    shapes = (
        lambda i: b"%d" % i,
        lambda i: b"user-%d" % i,
        lambda i: rng.randbytes(16).hex().encode(),
        lambda i: b"u%d@example.com" % rng.randrange(10**9),
        lambda i: bytes(rng.choice(b"abcXYZ019-_.~!*") for _ in range(rng.randrange(1, 40))),
    )
    return [shapes[i % len(shapes)](i) for i in range(n)]


async def test_envoy_and_the_service_put_every_key_on_the_same_side(native: Native) -> None:
    ks = keys(AGREEMENT_KEYS, seed=13)
    got = await agree(native, [(b"/api/x", [(b"x-user-id", k)]) for k in ks])
    # ...and that side is xxh64(key, seed 0) % 10000 < 3000, the documented function.
    for k, side in zip(ks, got, strict=True):
        want = "web-api-go" if xxhash.xxh64_intdigest(k) % 10000 < 3000 else "web-api-perl"
        assert side.service == want, k
    share = sum(s.service == "web-api-go" for s in got) / len(got)
    sd = (0.3 * 0.7 / len(got)) ** 0.5  # 30 % of keys; six sd either side
    assert abs(share - 0.3) < 6 * sd, share
    # Sticky: the same keys again, over other connections, land the same way.
    again = envoy_sides(
        await send_all(
            native.port, [request(b"/api/y", [(b"x-user-id", k)]) for k in ks[:2000]], connections=3
        )
    )
    assert again == got[:2000]


async def test_edge_cases_of_the_key_agree(native: Native) -> None:
    cases: list[tuple[bytes, list[tuple[bytes, bytes]]]] = []
    for k in keys(300, seed=7):
        cases += [
            (b"/api", [(b"x-user-id", k), (b"x-user-id", b"z" + k)]),  # repeated: sorted chain
            (b"/api", [(b"x-user-id", b"z" + k), (b"x-user-id", k)]),
            (b"/api", [(b"x-user-id", k + b"," + k)]),  # a comma is part of the value
            (b"/api", [(b"x-user-id", k * (2000 // len(k) + 1))]),  # over MAX_KEY: still hashed
            (b"/api", [(b"cookie", b"a=1; uid=" + k)]),  # no header: the cookie
            (b"/api", [(b"cookie", b'uid="' + k + b'"')]),  # quotes removed
            (b"/api", [(b"cookie", b"uid=" + k + b"; uid=other")]),  # the first one
            (b"/api", [(b"cookie", b"a=1"), (b"cookie", b"uid=" + k)]),  # any Cookie header
            (b"/api", [(b"x-user-id", k), (b"cookie", b"uid=zz")]),  # header wins (terminal)
        ]
    cases.append((b"/api", [(b"x-user-id", b"")]))  # an empty value is hashed too
    await agree(native, cases)


async def test_requests_without_a_key_get_the_same_split_at_random(native: Native) -> None:
    n = 4000
    for headers in ([], [(b"cookie", b"uid=")]):
        got = envoy_sides(await send_all(native.port, [request(b"/api", headers)] * n))
        sides = Counter(s.service for s in got)
        # 30 % of 4000: sd 29; five sd either side. A key-less request is never "sticky".
        assert 1055 <= sides["web-api-go"] <= 1345, sides
        assert {s.decision for s in got} == {"canary=go", "canary=perl"}
        for s in got:
            assert s.decision == f"canary={s.version}"
            assert s.service == f"web-api-{s.version}"


async def test_native_pins_agree_with_the_service(native: Native) -> None:
    user = [(b"x-user-id", b"u-1"), (b"cookie", b"uid=u-2")]
    cases: list[tuple[bytes, list[tuple[bytes, bytes]]]] = [
        (b"/api/x", [(b"x-junction-version", b"go")]),
        (b"/api/x", [(b"x-junction-version", b"perl"), *user]),
        (b"/api/x", [(b"x-junction-version", b"java"), *user]),
        (b"/api/x", [(b"x-junction-version", b"Go"), *user]),  # case-sensitive
        (b"/api/x?v=go", user),
        (b"/api/x?a=1&v=perl", []),
        (b"/api/x?v=java", user),
        (b"/api/x?v=go", [(b"x-junction-version", b"java"), *user]),  # the header is read first
        (b"/api/x?v=perl", [(b"x-junction-version", b"go")]),
        (b"/api/x?vv=go", user),
    ]
    cases.append((b"/api/x?v=%67o", user))  # not percent-decoded, by either
    got = await agree(native, cases * 20)
    assert got[0] == Side(200, "web-api-go", "pin=go", "go")
    assert got[4] == Side(200, "web-api-go", "pin=go", "go")


async def test_repeated_pins_are_where_native_and_service_differ(native: Native) -> None:
    """Documented difference (README): Envoy's HeaderMatcher matches if any value of a
    repeated header matches, and a QueryParameterMatcher reads the first value; the
    service refuses both as ambiguous. With trust: any a client may pin any version
    anyway, so this chooses nothing a client could not choose."""
    pinned = Side(200, "web-api-go", "pin=go", "go")
    for path, headers in [
        (b"/api", [(b"x-junction-version", b"perl"), (b"x-junction-version", b"go")]),
        (b"/api", [(b"x-junction-version", b"go"), (b"x-junction-version", b"go")]),
        (b"/api?v=go&v=perl", []),
    ]:
        (got,) = envoy_sides(await send_all(native.port, [request(path, headers)]))
        assert got == pinned, (path, headers)  # the first matching version route
        assert service_side(native.table, path, headers).decision.startswith("canary=")


@pytest.mark.parametrize("mode", ["default", "reject"])
async def test_a_pin_to_a_version_without_healthy_hosts(mode: str) -> None:
    listener, perl, go = free_port(), free_port(), free_port()
    config = load_config(CONFIG.format(listener=listener, unavailable=mode), "t")
    table = DecisionTable(config, frozenset({"web-api-go"}))
    async with EnvoyProcess(native_bootstrap(config, perl, go, Health.UNHEALTHY)):
        await wait_port(listener)
        n = Native(listener, config, table)
        # One request at a time: here Envoy 1.40 closed the connection after a local
        # reply (direct_response 503) while pipelined requests were still queued.
        got = await agree(
            n, [(b"/api", [(b"x-junction-version", b"go")]), (b"/api?v=go", [])] * 10, batch=1
        )
    if mode == "default":
        assert set(got) == {Side(200, "web-api-perl", "pin=go,fallback=perl", "perl")}
    else:
        assert {s.status for s in got} == {503}
