"""The grpc.aio xDS server, with a real grpc.aio client on a loopback port (port 0)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from conftest import eventually
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from xds_snapshots import (
    NODE,
    ROUTE_NAME,
    ack,
    delta_ack,
    delta_request,
    nack,
    names_of,
    request,
    route_weights,
    snapshot,
)

from junction.xds.cache import SnapshotCache
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from junction.xds.server import create_server

BOUND = 10.0  # seconds: a bound on every wait, not a performance goal


async def recv(call: Any) -> Any:
    message = await asyncio.wait_for(call.read(), BOUND)
    assert message is not grpc.aio.EOF
    return message


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call.read(), BOUND)
    return info.value


@pytest.fixture
async def xds() -> AsyncIterator[tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server]]:
    cache = SnapshotCache(snapshot({"A": 100}))
    server, port = await create_server(cache)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield cache, channel, server
    finally:
        await channel.close()
        await server.stop(0)


async def connect_sotw(call: Any) -> dict[str, discovery_pb2.DiscoveryResponse]:
    """Envoy's ADS start-up, ACKing everything; returns the last response per type."""
    last = {}
    await call.write(request(CLUSTER))
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


async def test_sotw_ads_serves_in_order_and_reports_the_node_synced(
    xds: tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server], caplog: pytest.LogCaptureFixture
) -> None:
    cache, channel, _ = xds
    caplog.set_level(logging.INFO, logger="junction.xds")
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    last = await connect_sotw(call)
    assert [last[t].type_url for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)] == [
        CLUSTER,
        ENDPOINT,
        LISTENER,
        ROUTE,
    ]
    await eventually(lambda: cache.is_synced(NODE), timeout=BOUND)
    assert cache.health_problems() == []
    [status] = cache.node_status()
    assert status["streams"] == ["sotw/ads"] and status["connected"]
    assert status["types"]["Cluster"]["acked_version"] == last[CLUSTER].version_info

    # A new snapshot: make-before-break over the wire (CDS first, RDS after the ACKs).
    cache.set(snapshot({"A": 90, "B": 10}))
    cds = await recv(call)
    assert names_of(cds) == ["A", "B"]
    await call.write(ack(cds))
    await call.write(ack(last[ENDPOINT], ("A", "B")))
    eds = await recv(call)
    assert names_of(eds) == ["A", "B"]
    await call.write(ack(eds, ("A", "B")))
    rds = await recv(call)
    assert route_weights(rds) == {"A": 90, "B": 10}
    await call.write(ack(rds, (ROUTE_NAME,)))
    await eventually(lambda: cache.is_synced(NODE), timeout=BOUND)

    call.cancel()
    await eventually(lambda: not cache.is_synced(NODE), timeout=BOUND)
    lines = [r.getMessage() for r in caplog.records if r.name == "junction.xds"]
    assert sum(" ACK " in line for line in lines) == 7  # one line per ACK, none per resource
    assert any("connected (sotw/ads" in line for line in lines)
    assert any("disconnected" in line for line in lines)


async def test_delta_ads(xds: tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server]) -> None:
    cache, channel, _ = xds
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
    await call.write(delta_request(CLUSTER))
    cds = await recv(call)
    assert [r.name for r in cds.resources] == ["A"]
    await call.write(delta_request(LISTENER, node=None))
    await call.write(delta_ack(cds))
    await call.write(delta_request(ENDPOINT, subscribe=("A",), node=None))
    eds = await recv(call)
    await call.write(delta_ack(eds))
    lds = await recv(call)
    assert lds.type_url == LISTENER
    await call.write(delta_ack(lds))
    await call.write(delta_request(ROUTE, subscribe=(ROUTE_NAME,), node=None))
    rds = await recv(call)
    await call.write(delta_ack(rds))
    await eventually(lambda: cache.is_synced(NODE), timeout=BOUND)
    assert cache.node_status()[0]["streams"] == ["delta/ads"]

    cache.set(snapshot({"A": 100}, extra_clusters=("C",)))
    cds = await recv(call)
    assert [r.name for r in cds.resources] == ["C"] and list(cds.removed_resources) == []
    call.cancel()


async def test_per_type_services_share_the_node_for_gating(
    xds: tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server],
) -> None:
    cache, channel, _ = xds
    cds_call = cds_pb2_grpc.ClusterDiscoveryServiceStub(channel).StreamClusters()
    eds_call = eds_pb2_grpc.EndpointDiscoveryServiceStub(channel).StreamEndpoints()
    rds_call = rds_pb2_grpc.RouteDiscoveryServiceStub(channel).StreamRoutes()
    await rds_call.write(request("", names=(ROUTE_NAME,)))  # type URL implied by the service
    await cds_call.write(request(""))
    cds = await recv(cds_call)
    assert cds.type_url == CLUSTER
    await cds_call.write(ack(cds))
    await eds_call.write(request(ENDPOINT, names=("A",)))
    eds = await recv(eds_call)
    await eds_call.write(ack(eds, ("A",)))
    # The EDS ACK on another stream is what releases the routes on this one.
    rds = await recv(rds_call)
    assert route_weights(rds) == {"A": 100}
    streams = sorted(cache.node_status()[0]["streams"])
    assert streams == ["sotw/Cluster", "sotw/ClusterLoadAssignment", "sotw/RouteConfiguration"]
    for call in (cds_call, eds_call, rds_call):
        call.cancel()


async def test_nack_is_recorded_and_the_last_good_version_resent(
    xds: tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server], caplog: pytest.LogCaptureFixture
) -> None:
    cache, channel, _ = xds
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    last = await connect_sotw(call)
    bad = snapshot({"A": 100}, extra_clusters=("C",), config_version="v2")
    cache.set(bad)
    cds = await recv(call)
    await call.write(nack(cds, last[CLUSTER].version_info, "cluster C: unsupported lb_policy"))
    restore = await recv(call)
    assert restore.version_info == last[CLUSTER].version_info
    await call.write(ack(restore))
    problems = cache.health_problems(bad.version)
    assert any("NACKed" in p and "unsupported lb_policy" in p for p in problems), problems
    nacked = cache.node_status()[0]["types"]["Cluster"]["nack"]
    assert nacked["version"] == cds.version_info and nacked["config_version"] == "v2"
    assert any(
        r.levelno == logging.WARNING and "NACK" in r.getMessage() and "v2" in r.getMessage()
        for r in caplog.records
    )
    # A fixed config goes out; the rejected one was never sent again in between.
    fixed = snapshot({"A": 100}, lb={"A": 1}, config_version="v3")
    cache.set(fixed)
    assert (await recv(call)).version_info == fixed.versions[CLUSTER]
    call.cancel()


async def test_reconnect_resends_nothing_the_node_has(
    xds: tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server],
) -> None:
    cache, channel, _ = xds
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    first = stub.StreamAggregatedResources()
    last = await connect_sotw(first)
    await eventually(lambda: cache.is_synced(NODE), timeout=BOUND)
    first.cancel()
    await eventually(lambda: not cache.node_status()[0]["connected"], timeout=BOUND)

    again = stub.StreamAggregatedResources()
    await again.write(request(CLUSTER, version=last[CLUSTER].version_info))
    await again.write(request(LISTENER, version=last[LISTENER].version_info, node=None))
    await again.write(
        request(ENDPOINT, names=("A",), version=last[ENDPOINT].version_info, node=None)
    )
    await again.write(
        request(ROUTE, names=(ROUTE_NAME,), version=last[ROUTE].version_info, node=None)
    )
    await eventually(lambda: cache.is_synced(NODE), timeout=BOUND)
    # The first thing the node receives is the next change, not a resend.
    cache.set(snapshot({"A": 100}, extra_clusters=("C",)))
    cds = await recv(again)
    assert cds.type_url == CLUSTER and names_of(cds) == ["A", "C"]
    again.cancel()


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (request("type.googleapis.com/envoy.Bogus"), "type.googleapis.com/envoy.Bogus"),
        (request(CLUSTER, node=None), "node.id"),
    ],
)
async def test_protocol_errors_end_the_stream_with_invalid_argument(
    xds: tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server],
    first: discovery_pb2.DiscoveryRequest,
    expected: str,
) -> None:
    _, channel, _ = xds
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    call = stub.StreamAggregatedResources()
    await call.write(first)
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")
    # The server lives on.
    ok = stub.StreamAggregatedResources()
    await ok.write(request(CLUSTER))
    assert names_of(await recv(ok)) == ["A"]
    ok.cancel()


async def test_garbage_bytes_are_rejected_with_a_clear_status(
    xds: tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server],
) -> None:
    _, channel, _ = xds
    method = channel.stream_stream(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
        request_serializer=lambda raw: raw,
        response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
    )
    call = method()
    await call.write(b"\xff\xff\xff\xff not a protobuf")
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DeltaDiscoveryRequest" in (error.details() or "")


async def test_stop_ends_open_streams_cleanly(
    xds: tuple[SnapshotCache, grpc.aio.Channel, grpc.aio.Server],
) -> None:
    cache, channel, server = xds
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    await call.write(request(CLUSTER))
    await recv(call)
    await server.stop(BOUND)
    # Ended by the server (OK), not cancelled at the end of the grace period.
    assert await asyncio.wait_for(call.code(), BOUND) == grpc.StatusCode.OK
    await eventually(lambda: not cache.node_status()[0]["connected"], timeout=BOUND)
