"""Health judged per managed Envoy, over real gRPC (grpc.aio server and clients, port 0).

A rogue client (another node id) that NACKs must not turn the managed node's health; a
duplicate stream with the managed node's own id that NACKs and then closes must leave the
node's state to its remaining stream, which is judged on its own answers again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from conftest import eventually
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from xds_snapshots import NODE, ROUTE_NAME, ack, nack, request, snapshot

from junction.xds.cache import SnapshotCache
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from junction.xds.server import create_server

BOUND = 10.0  # seconds: a bound on every wait, not a performance goal
Response = discovery_pb2.DiscoveryResponse


async def recv(call: Any) -> Response:
    message = await asyncio.wait_for(call.read(), BOUND)
    assert message is not grpc.aio.EOF
    return message  # type: ignore[no-any-return]


@pytest.fixture
async def xds() -> AsyncIterator[tuple[SnapshotCache, grpc.aio.Channel]]:
    cache = SnapshotCache(snapshot({"A": 100}))
    server, port = await create_server(cache)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield cache, channel
    finally:
        await channel.close()
        await server.stop(0)


async def connect(call: Any, node: str = NODE) -> dict[str, Response]:
    """Envoy's ADS start-up, ACKing everything; returns the last response per type."""
    last = {}
    await call.write(request(CLUSTER, node=node))
    last[CLUSTER] = await recv(call)
    await call.write(request(LISTENER, node=None))
    await call.write(ack(last[CLUSTER]))
    await call.write(request(ENDPOINT, names=("A",), node=None))
    last[ENDPOINT] = await recv(call)
    await call.write(ack(last[ENDPOINT], ("A",)))
    last[LISTENER] = await recv(call)
    await call.write(ack(last[LISTENER]))
    await call.write(request(ROUTE, names=(ROUTE_NAME,), node=None))
    last[ROUTE] = await recv(call)
    await call.write(ack(last[ROUTE], (ROUTE_NAME,)))
    return last


def ads(channel: grpc.aio.Channel) -> Any:
    return ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()


async def test_a_rogue_client_that_nacks_shows_in_status_but_not_in_health(
    xds: tuple[SnapshotCache, grpc.aio.Channel],
) -> None:
    cache, channel = xds
    managed = ads(channel)
    await connect(managed)
    version = cache.snapshot.version  # type: ignore[union-attr]
    await eventually(lambda: cache.health_problems(version, (NODE,)) == [], timeout=BOUND)
    rogue = ads(channel)
    await rogue.write(request(CLUSTER, node="rogue"))
    cds = await recv(rogue)
    await rogue.write(nack(cds, "", "rogue says no"))

    def rogue_nacked() -> bool:
        node = cache.node("rogue")
        return node is not None and node.types[0].nack is not None

    await eventually(rogue_nacked, timeout=BOUND)
    assert cache.health_problems(version, (NODE,)) == []
    assert {n["node_id"] for n in cache.node_status()} == {NODE, "rogue"}
    # What the old rule (every connected node) would have said:
    assert any("rogue" in p for p in cache.health_problems(version))
    managed.cancel()
    rogue.cancel()


async def test_a_duplicate_stream_that_nacks_and_closes_does_not_stick(
    xds: tuple[SnapshotCache, grpc.aio.Channel],
) -> None:
    cache, channel = xds
    first = ads(channel)
    last = await connect(first)
    version = cache.snapshot.version  # type: ignore[union-attr]
    await eventually(lambda: cache.health_problems(version, (NODE,)) == [], timeout=BOUND)
    dup = ads(channel)
    await dup.write(request(CLUSTER, node=NODE))
    cds = await recv(dup)
    await dup.write(nack(cds, "", "duplicate says no"))
    # While open, the duplicate is the newest stream: its NACK is the node's state.
    await eventually(
        lambda: any("NACKed" in p for p in cache.health_problems(version, (NODE,))),
        timeout=BOUND,
    )
    dup.cancel()
    # The first stream takes CDS back: it is sent the target again under a fresh nonce;
    # until its Envoy answers, the node is not reported healthy.
    resent = await recv(first)
    assert resent.type_url == CLUSTER and resent.nonce != last[CLUSTER].nonce
    assert cache.health_problems(version, (NODE,)) != []
    await first.write(ack(resent))
    # Only CDS was taken by the duplicate: its ACK makes the node healthy again.
    await eventually(lambda: cache.health_problems(version, (NODE,)) == [], timeout=BOUND)
    [status] = cache.node_status()
    assert status["connected"] and status["synced"] and status["streams"] == ["sotw/ads"]
    assert all(t["nack"] is None for t in status["types"].values())
    first.cancel()
