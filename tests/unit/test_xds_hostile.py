"""Hostile xDS clients over real gRPC (grpc.aio server and clients, port 0): each gets a
gRPC status naming what it did, each case is counted, and a well-behaved node's pushes
keep flowing meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from conftest import eventually
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from xds_snapshots import ack, delta_request, nack, request, snapshot

from junction.xds.cache import SnapshotCache
from junction.xds.limits import XdsLimits
from junction.xds.resources import CLUSTER, Snapshot
from junction.xds.server import XdsServer, create_server

BOUND = 30.0  # seconds: a bound on every wait, not a performance goal
#: Channels to one address share a connection unless told otherwise.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


@dataclass
class Rig:
    cache: SnapshotCache
    server: XdsServer
    channel: grpc.aio.Channel
    port: int

    @property
    def refused(self) -> dict[str, int]:
        return dict(self.server.servicer.refused)

    def ads(self, channel: grpc.aio.Channel | None = None) -> Any:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel or self.channel)
        return stub.StreamAggregatedResources()


async def rig_with(limits: XdsLimits, snap: Snapshot | None = None) -> Rig:
    cache = SnapshotCache(snap or snapshot({"A": 100}))
    server, port = await create_server(cache, limits=limits)
    assert isinstance(server, XdsServer)
    return Rig(cache, server, grpc.aio.insecure_channel(f"127.0.0.1:{port}"), port)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await rig_with(XdsLimits(max_streams=64, send_timeout=10.0))
    try:
        yield r
    finally:
        await r.channel.close()
        await r.server.stop(0)


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while True:
            message = await asyncio.wait_for(call.read(), BOUND)
            assert message is not grpc.aio.EOF
    return info.value


class GoodNode:
    """A well-behaved node on its own channel: CDS only, ACKing every push."""

    def __init__(self, rig: Rig, names: tuple[str, ...] = ()) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{rig.port}")
        self.call = rig.ads(self.channel)
        self.names = names  # empty: every cluster
        self.versions: list[str] = []

    async def start(self) -> None:
        await self.call.write(request(CLUSTER, names=self.names, node="good"))
        await self.receive()

    async def receive(self) -> str:
        response = await asyncio.wait_for(self.call.read(), BOUND)
        await self.call.write(ack(response, self.names))
        self.versions.append(response.version_info)
        return str(response.version_info)

    async def pushed(self, rig: Rig, snap: Snapshot) -> None:
        """A new snapshot reaches this node (its push was not held up by the others)."""
        before = self.versions[-1]
        rig.cache.set(snap)
        version = await self.receive()
        assert version != before
        assert self.names or version == snap.versions[CLUSTER]

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


async def test_unknown_type_urls_and_malformed_requests(rig: Rig) -> None:
    good = GoodNode(rig)
    await good.start()
    call = rig.ads()
    await call.write(request("type.googleapis.com/evil.Thing", node="bad"))
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown type_url 'type.googleapis.com/evil.Thing'" in str(error.details())
    raw = rig.channel.stream_stream(
        ADS, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )()
    await raw.write(b"\xff\xff\xff\xff not a protobuf")
    error = await failure(raw)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid envoy.service.discovery.v3.DiscoveryRequest" in str(error.details())
    assert rig.refused == {"unknown_type_url": 1, "malformed_request": 1}
    await good.pushed(rig, snapshot({"A": 100, "B": 0}))
    await good.close()


async def test_a_hundred_thousand_resource_names_are_refused(rig: Rig) -> None:
    good = GoodNode(rig)
    await good.start()
    names = tuple(f"cluster-{i:06d}" for i in range(100_000))
    for req in (
        request(CLUSTER, names=names, node="big"),
        delta_request(CLUSTER, subscribe=names, node="big"),
    ):
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(rig.channel)
        delta = isinstance(req, discovery_pb2.DeltaDiscoveryRequest)
        call = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        await call.write(req)
        error = await failure(call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "request names 100,000 resources; the limit is 10,000" in str(error.details())
    assert rig.refused == {"too_many_resource_names": 2}
    assert rig.cache.node("big") is None  # refused before the core saw it
    # Delta subscriptions add up over requests: the stream's total is bounded too.
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(rig.channel).DeltaAggregatedResources()
    await call.write(delta_request(CLUSTER, subscribe=names[:6000], node="creeping"))
    await call.write(delta_request(CLUSTER, subscribe=names[6000:12000], node=None))
    error = await failure(call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "stream subscribes to 12,000 Cluster resources" in str(error.details())
    assert rig.refused == {"too_many_resource_names": 3}
    await good.pushed(rig, snapshot({"A": 100, "B": 0}))
    await good.close()


async def test_megabytes_of_error_detail_are_truncated_and_beyond_the_size_refused(
    rig: Rig,
) -> None:
    good = GoodNode(rig)
    await good.start()
    call = rig.ads()
    await call.write(request(CLUSTER, node="chatty"))
    cds = await asyncio.wait_for(call.read(), BOUND)
    await call.write(nack(cds, "", "x" * 3_000_000))

    def nack_kept() -> bool:
        node = rig.cache.node("chatty")
        return node is not None and node.types[0].nack is not None

    await eventually(nack_kept, timeout=BOUND)
    node = rig.cache.node("chatty")
    assert node is not None and node.types[0].nack is not None
    detail = node.types[0].nack.error_detail
    assert len(detail) < 4200 and detail.endswith("(3,000,000 characters, truncated)")
    assert rig.refused == {"error_detail_truncated": 1}
    # Past the request size bound the stream is refused, naming the sizes.
    await call.write(nack(cds, "", "x" * 5_000_000))
    error = await failure(call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the limit is 4,194,304" in str(error.details())
    assert rig.refused == {"error_detail_truncated": 1, "request_too_large": 1}
    await good.pushed(rig, snapshot({"A": 100, "B": 0}))
    await good.close()


async def test_thousands_of_streams_beyond_the_bound_are_refused(rig: Rig) -> None:
    good = GoodNode(rig)
    await good.start()
    # 40 streams a connection: under the per-connection bound, so the server's own
    # stream bound is what refuses them.
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{rig.port}", options=[OWN_CONNECTION])
        for _ in range(25)
    ]
    calls = [rig.ads(channels[i % len(channels)]) for i in range(1000)]
    try:

        async def open_one(i: int, call: Any) -> grpc.StatusCode:
            try:
                await call.write(request(CLUSTER, node=f"swarm-{i}"))
                await asyncio.wait_for(call.read(), BOUND)
            except grpc.aio.AioRpcError as exc:
                assert "the limit is 64" in str(exc.details()), exc
                return exc.code()
            return grpc.StatusCode.OK

        codes = await asyncio.wait_for(
            asyncio.gather(*(open_one(i, c) for i, c in enumerate(calls))), BOUND * 4
        )
        # 64 streams at most (the good node holds one of them).
        assert codes.count(grpc.StatusCode.OK) == 63
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1000 - 63
        assert rig.refused == {"too_many_streams": 1000 - 63}
        assert sum(1 for n in rig.cache.nodes() if n.connected) == 64
        await good.pushed(rig, snapshot({"A": 100, "B": 0}))
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
        await good.close()
    # Their state is dropped as they close: the server is back to one stream.
    await eventually(lambda: rig.server.servicer.open_streams == 0, timeout=BOUND)


async def test_a_stream_that_never_reads_is_ended_and_others_keep_their_pushes() -> None:
    # 8000 clusters: one CDS response (~180 KB) is bigger than the client's 64 KiB window.
    big = snapshot({f"c{i:04d}": 1 for i in range(8000)})
    rig = await rig_with(XdsLimits(send_timeout=1.0), big)
    # The good node asks for one cluster: its small responses never wait on its window,
    # however loaded the machine (a 180 KB one might, and would rightly be cut at 1 s).
    good = GoodNode(rig, names=("c0000",))
    # The stuck client: never reads, and grows no window (no BDP probing).
    stuck_channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{rig.port}", options=[("grpc.http2.bdp_probe", 0), OWN_CONNECTION]
    )
    try:
        await good.start()
        stuck = rig.ads(stuck_channel)
        await stuck.write(request(CLUSTER, node="stuck"))
        await eventually(lambda: rig.refused.get("not_reading", 0) == 1, timeout=BOUND)
        await good.pushed(rig, snapshot({f"c{i:04d}": 1 for i in range(8000)}, lb={"c0000": 1}))
        error = await failure(stuck)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "responses not read for 1 s" in str(error.details())

        def stuck_gone() -> bool:
            node = rig.cache.node("stuck")
            return node is not None and not node.connected

        await eventually(stuck_gone, timeout=BOUND)
    finally:
        await good.close()
        await stuck_channel.close()
        await rig.channel.close()
        await rig.server.stop(0)
