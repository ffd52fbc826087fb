"""The xDS server when its own code fails: a bug ends that stream with INTERNAL (logged
with its stack), never the server. A real grpc.aio client on loopback, as in
test_xds_server.py; the fault is a snapshot cache that raises when told to."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from test_xds_server import failure, recv
from xds_snapshots import delta_request, names_of, request, snapshot

from junction.xds.cache import SnapshotCache
from junction.xds.resources import CLUSTER, Snapshot
from junction.xds.server import create_server


class BrokenCache(SnapshotCache):
    """A cache whose snapshot read raises while ``broken`` (a stand-in for any bug)."""

    broken = False

    @property
    def snapshot(self) -> Snapshot | None:
        if self.broken:
            raise RuntimeError("bug in the snapshot read")
        return super().snapshot


@pytest.fixture
async def broken() -> AsyncIterator[tuple[BrokenCache, grpc.aio.Channel]]:
    cache = BrokenCache(snapshot({"A": 100}))
    server, port = await create_server(cache)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield cache, channel
    finally:
        await channel.close()
        await server.stop(0)


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_an_unexpected_exception_ends_the_stream_with_internal(
    broken: tuple[BrokenCache, grpc.aio.Channel],
    caplog: pytest.LogCaptureFixture,
    delta: bool,
) -> None:
    cache, channel = broken
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

    def open_stream() -> grpc.aio.StreamStreamCall:
        return stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()

    first = delta_request(CLUSTER) if delta else request(CLUSTER)
    cache.broken = True
    call = open_stream()
    with caplog.at_level(logging.ERROR, "junction.xds"):
        await call.write(first)
        error = await failure(call)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error in the xDS server"  # no internals leaked
    assert (
        "internal error" in caplog.text and "RuntimeError: bug in the snapshot read" in caplog.text
    )
    # The server lives on: once the bug is gone, a new stream is served.
    cache.broken = False
    ok = open_stream()
    await ok.write(first)
    response = await recv(ok)
    names = [r.name for r in response.resources] if delta else names_of(response)
    assert names == ["A"]
    ok.cancel()
