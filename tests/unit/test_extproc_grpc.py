"""The gRPC transport over a real channel: the same decisions as the HTTP transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.protobuf import struct_pb2
from test_extproc_http import headers_message

from junction.config.load import load_config
from junction.extproc.counters import Counters
from junction.extproc.grpc_adapter import GrpcProcessor, serve_grpc
from junction.extproc.table import DecisionTable

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
    pin: {trust: cidr, trusted-cidrs: [10.0.0.0/8], when-unavailable: reject}
experiments:
  feed:
    service: web-api
    match: {prefix: /api/feed}
    sticky-cookie: {name: jx-feed}
    arms: {treatment: {weight: 100, version: go}}
cluster:
  loadbalancer: {web-api-perl: {}, web-api-go: {}}
"""


def with_source(msg: ep.ProcessingRequest, source: str) -> ep.ProcessingRequest:
    """``msg`` with the ``source.address`` attribute (as Envoy sends it for CIDR trust)."""
    msg.attributes["envoy.filters.http.ext_proc"].CopyFrom(
        struct_pb2.Struct(fields={"source.address": struct_pb2.Value(string_value=source)})
    )
    return msg


@pytest.fixture
async def stub() -> AsyncIterator[tuple[GrpcProcessor, ep_grpc.ExternalProcessorStub]]:
    table = DecisionTable(load_config(CONFIG, "t"), frozenset({"web-api-perl"}))
    processor = GrpcProcessor(Counters(), table)
    server, port = await serve_grpc(processor, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield processor, ep_grpc.ExternalProcessorStub(channel)
    await channel.close()
    await server.stop(grace=None)


async def exchange(
    stub: ep_grpc.ExternalProcessorStub, *messages: ep.ProcessingRequest
) -> list[ep.ProcessingResponse]:
    call = stub.Process(iter(messages), timeout=5)
    return [r async for r in call]


def set_headers(resp: ep.ProcessingResponse) -> dict[str, str]:
    mutation = resp.request_headers.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


async def test_trusted_pin_routes_and_untrusted_pin_is_ignored(
    stub: tuple[GrpcProcessor, ep_grpc.ExternalProcessorStub],
) -> None:
    processor, client = stub
    (trusted,) = await exchange(
        client, with_source(headers_message(x_junction_version="go"), "10.1.1.1:4000")
    )
    assert set_headers(trusted)["x-junction-cluster"] == "web-api-go"
    assert trusted.request_headers.response.clear_route_cache
    (untrusted,) = await exchange(
        client, with_source(headers_message(x_junction_version="go"), "192.0.2.1:4000")
    )
    assert "x-junction-cluster" not in set_headers(untrusted)
    assert untrusted.request_headers.response.header_mutation.remove_headers == [
        "x-junction-version"
    ]
    assert (processor.counters.decided_pin, processor.counters.pin_untrusted) == (1, 1)
    assert processor.counters.grpc_streams == 2


async def test_pin_to_a_version_without_healthy_hosts_is_rejected(
    stub: tuple[GrpcProcessor, ep_grpc.ExternalProcessorStub],
) -> None:
    _, client = stub
    (resp,) = await exchange(
        client, with_source(headers_message(x_junction_version="perl"), "10.0.0.1:1")
    )
    assert resp.WhichOneof("response") == "immediate_response"
    assert resp.immediate_response.status.code == 503
    assert b"no healthy host" in resp.immediate_response.body


async def test_sticky_cookie_and_experiment_arm(
    stub: tuple[GrpcProcessor, ep_grpc.ExternalProcessorStub],
) -> None:
    _, client = stub
    (resp,) = await exchange(client, headers_message("/api/feed"))
    assert set_headers(resp)["x-junction-decision"] == "exp=feed:treatment"
    cookie = (
        resp.dynamic_metadata.fields["junction.extproc"]
        .struct_value.fields["set-cookie"]
        .string_value
    )
    assert cookie.startswith("jx-feed=")


async def test_several_messages_on_one_stream_and_other_kinds(
    stub: tuple[GrpcProcessor, ep_grpc.ExternalProcessorStub],
) -> None:
    processor, client = stub
    answers = await exchange(
        client,
        with_source(headers_message(x_junction_version="go"), "10.0.0.1:1"),
        ep.ProcessingRequest(response_headers=ep.HttpHeaders()),
        ep.ProcessingRequest(request_body=ep.HttpBody(body=b"x")),
    )
    assert set_headers(answers[0])["x-junction-version"] == "go"
    assert answers[1] == ep.ProcessingResponse(response_headers=ep.HeadersResponse())
    assert answers[2] == ep.ProcessingResponse(request_body=ep.BodyResponse())
    assert processor.counters.message_unexpected == 2


async def test_streams_are_refused_before_a_table_is_loaded(
    stub: tuple[GrpcProcessor, ep_grpc.ExternalProcessorStub],
) -> None:
    processor, client = stub
    processor.table = None
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange(client, headers_message())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
