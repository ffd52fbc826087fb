"""The xDS server's optional ``on_send`` hook: every response and its serialized size.

The benchmark (loadtest/xds_bench.py) counts bytes sent per change through it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message
from xds_snapshots import delta_request, request, snapshot

from junction.xds.cache import SnapshotCache
from junction.xds.resources import CLUSTER
from junction.xds.server import create_server

BOUND = 10.0  # seconds: a bound on every wait, not a performance goal


async def test_on_send_sees_each_response_with_its_wire_size() -> None:
    sent: list[tuple[Message, int]] = []
    cache = SnapshotCache(snapshot({"A": 100}))
    server, port = await create_server(cache, on_send=lambda m, n: sent.append((m, n)))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        sotw: Any = stub.StreamAggregatedResources()
        await sotw.write(request(CLUSTER))
        got = await asyncio.wait_for(sotw.read(), BOUND)
        delta: Any = stub.DeltaAggregatedResources()
        await delta.write(delta_request(CLUSTER))
        got_delta = await asyncio.wait_for(delta.read(), BOUND)
        sotw.cancel()
        delta.cancel()
    finally:
        await channel.close()
        await server.stop(0)

    assert [type(m) for m, _ in sent] == [
        discovery_pb2.DiscoveryResponse,
        discovery_pb2.DeltaDiscoveryResponse,
    ]
    assert sent[0][0] == got and sent[0][1] == len(got.SerializeToString()) > 0
    assert sent[1][0] == got_delta and sent[1][1] == len(got_delta.SerializeToString()) > 0
