"""The http_service transport over real sockets: keep-alive, pipelining, chunked bodies,
bounds, timeouts, and answers Envoy can parse."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import json_format

from junction.config.load import load_config
from junction.extproc.counters import Counters
from junction.extproc.http_adapter import HttpLimits, HttpProcessor, serve_http
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
    pin: {trust: any}
experiments:
  feed:
    service: web-api
    match: {prefix: /api/feed}
    sticky-cookie: {name: jx-feed}
    arms: {control: {weight: 100}}
cluster:
  loadbalancer: {web-api-perl: {}, web-api-go: {}}
"""


def headers_message(path: str = "/api/x", **headers: str) -> ep.ProcessingRequest:
    """Request headers as Envoy sends them to ext_proc (``x_user_id`` -> ``x-user-id``);
    the gRPC and service tests use it too."""
    return ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode())
                    for k, v in {
                        ":authority": "example.com",
                        ":path": path,
                        ":method": "GET",
                        **{k.replace("_", "-"): v for k, v in headers.items()},
                    }.items()
                ]
            ),
            end_of_stream=True,
        )
    )


def envoy_json(path: str = "/api/x", **headers: str) -> bytes:
    """A ProcessingRequest as Envoy 1.40's http_service sends it (proto field names,
    base64 raw_value, default values printed)."""
    msg = headers_message(path, **headers)
    return json_format.MessageToJson(
        msg,
        preserving_proto_field_name=True,
        indent=None,
        always_print_fields_with_no_presence=True,
    ).encode()


def post(body: bytes, *, chunked: bool = False, extra: bytes = b"") -> bytes:
    head = b"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n" + extra
    if chunked:
        middle = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:middle], body[middle:]))
        return head + b"transfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), BOUND)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await asyncio.wait_for(
            self.reader.readexactly(int(headers["content-length"])), BOUND
        )
        return status, headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), BOUND) == b""


#: Generous, so a stalled event loop on a loaded machine neither closes an idle connection
#: nor answers 408 in a test about something else; only the timeout test uses TIGHT.
GENEROUS = HttpLimits(max_body=65536, idle_timeout=30.0, request_timeout=30.0)
TIGHT = HttpLimits(max_body=65536, idle_timeout=0.3, request_timeout=0.3)
#: A bound on every read, far above both timeouts.
BOUND = 60.0


@contextlib.asynccontextmanager
async def serving(limits: HttpLimits) -> AsyncIterator[tuple[HttpProcessor, int]]:
    processor = HttpProcessor(Counters(), DecisionTable(load_config(CONFIG, "t")))
    srv, port = await serve_http(processor, "127.0.0.1", 0, limits=limits)
    try:
        yield processor, port
    finally:
        await srv.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpProcessor, int]]:
    async with serving(GENEROUS) as running:
        yield running


async def connect(port: int) -> Client:
    return Client(*await asyncio.open_connection("127.0.0.1", port))


def parse(body: bytes) -> ep.ProcessingResponse:
    """What Envoy does with our answer: proto3 JSON into ProcessingResponse (strict)."""
    return json_format.Parse(body, ep.ProcessingResponse())


def set_headers(resp: ep.ProcessingResponse) -> dict[str, str]:
    mutation = resp.request_headers.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


async def test_a_pin_is_answered_with_header_mutations_envoy_parses(
    server: tuple[HttpProcessor, int],
) -> None:
    processor, port = server
    c = await connect(port)
    c.writer.write(post(envoy_json(x_junction_version="go")))
    status, headers, body = await c.response()
    assert status == 200 and headers["content-type"] == "application/json"
    resp = parse(body)
    assert set_headers(resp) == {
        "x-junction-cluster": "web-api-go",
        "x-junction-decision": "pin=go",
        "x-junction-version": "go",
    }
    assert resp.request_headers.response.clear_route_cache
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert all(
        h.append_action == overwrite
        for h in resp.request_headers.response.header_mutation.set_headers
    )
    assert processor.counters.decided_pin == 1


async def test_keep_alive_chunked_and_pipelined_requests_answer_in_order(
    server: tuple[HttpProcessor, int],
) -> None:
    _, port = server
    c = await connect(port)
    c.writer.write(post(envoy_json(x_junction_version="go"), chunked=True))
    assert set_headers(parse((await c.response())[2]))["x-junction-version"] == "go"
    # Three requests in one write, mixed framing: three answers, in order.
    c.writer.write(
        post(envoy_json(x_junction_version="perl"))
        + post(envoy_json(x_junction_version="go"), chunked=True)
        + post(envoy_json("/elsewhere"))
    )
    answers = [parse((await c.response())[2]) for _ in range(3)]
    assert [set_headers(a).get("x-junction-version") for a in answers] == ["perl", "go", None]
    assert answers[2] == ep.ProcessingResponse(request_headers=ep.HeadersResponse())


async def test_sticky_cookie_travels_as_dynamic_metadata(server: tuple[HttpProcessor, int]) -> None:
    _, port = server
    c = await connect(port)
    c.writer.write(post(envoy_json("/api/feed")))
    resp = parse((await c.response())[2])
    cookie = (
        resp.dynamic_metadata.fields["junction.extproc"]
        .struct_value.fields["set-cookie"]
        .string_value
    )
    assert cookie.startswith("jx-feed=") and "Max-Age=" in cookie


async def test_connection_close_is_honoured(server: tuple[HttpProcessor, int]) -> None:
    _, port = server
    c = await connect(port)
    c.writer.write(post(envoy_json(), extra=b"connection: close\r\n"))
    status, headers, _ = await c.response()
    assert status == 200 and headers["connection"] == "close"
    assert await c.closed()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="malformed json"),
        pytest.param(b"[]", id="not an object"),
        pytest.param(b'{"request_headers": {}, "surprise": 1}', id="unknown top-level field"),
        pytest.param(
            b'{"request_headers": {"headers": {"headers": [{"key": "a", "raw_value": "YQ==", "x": 1}]}}}',
            id="unknown nested field",
        ),
        pytest.param(b'{"request_headers": {"headers": {"headers": 5}}}', id="wrong type"),
        pytest.param(
            b'{"request_headers": {"headers": {"headers": [{"key": ":path", "raw_value": "%%%"}]}}}',
            id="bad base64",
        ),
        pytest.param(b'{"request_body": {}, "response_body": {}}', id="two message kinds"),
    ],
)
async def test_bad_messages_get_400_and_are_counted(
    server: tuple[HttpProcessor, int], body: bytes
) -> None:
    processor, port = server
    c = await connect(port)
    c.writer.write(post(body))
    status, _, _ = await c.response()
    assert status == 400
    assert processor.counters.http_bad_request == 1
    # The connection stays usable: a bad message is not a broken stream.
    c.writer.write(post(envoy_json(x_junction_version="go")))
    assert (await c.response())[0] == 200


async def test_other_message_kinds_pass_through_unchanged(
    server: tuple[HttpProcessor, int],
) -> None:
    processor, port = server
    c = await connect(port)
    c.writer.write(post(b'{"response_headers": {"headers": {"headers": []}}}'))
    status, _, body = await c.response()
    assert status == 200 and orjson.loads(body) == {"response_headers": {}}
    assert processor.counters.message_unexpected == 1


async def test_oversized_body_gets_413_and_the_connection_closes(
    server: tuple[HttpProcessor, int],
) -> None:
    processor, port = server
    c = await connect(port)
    big = envoy_json(x_junction_version="go" * 40000)
    c.writer.write(post(big, chunked=True))
    status, _, _ = await c.response()
    assert status == 413
    assert await c.closed()
    assert processor.counters.http_too_large == 1


async def test_malformed_http_gets_400_and_the_connection_closes(
    server: tuple[HttpProcessor, int],
) -> None:
    processor, port = server
    c = await connect(port)
    c.writer.write(b"POST / HTTP/1.1\r\ncontent-length: nope\r\n\r\n")
    assert (await c.response())[0] == 400
    assert await c.closed()
    assert processor.counters.http_bad_request == 1


async def test_slow_request_gets_408_and_idle_connections_close() -> None:
    async with serving(TIGHT) as (processor, port):
        slow = await connect(port)
        slow.writer.write(b"POST / HTTP/1.1\r\ncontent-length: 100\r\n\r\n{")  # nothing more
        assert (await slow.response())[0] == 408
        assert await slow.closed()
        assert processor.counters.http_timeout == 1
        idle = await connect(port)
        assert await idle.closed()  # closed by idle_timeout (0.3 s), well before BOUND
    # The generous limits of the other tests are the ones a loaded machine cannot trip.
    async with serving(GENEROUS) as (processor, port):
        kept = await connect(port)
        kept.writer.write(b"POST / HTTP/1.1\r\ncontent-length: 100\r\n\r\n{")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(kept.reader.read(1), 1.0)
        assert processor.counters.http_timeout == 0


async def test_healthz_and_no_table(server: tuple[HttpProcessor, int]) -> None:
    processor, port = server
    c = await connect(port)
    c.writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await c.response())[0] == 200
    c.writer.write(b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await c.response())[0] == 404
    processor.table = None
    c.writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await c.response())[0] == 503
    c.writer.write(post(envoy_json()))
    assert (await c.response())[0] == 503  # Envoy then applies its failure mode


async def test_hostile_headers_in_the_json_are_harmless(server: tuple[HttpProcessor, int]) -> None:
    processor, port = server
    c = await connect(port)
    entries = [
        {"key": f"x-h{i}", "raw_value": base64.b64encode(b"v" * 100).decode()} for i in range(300)
    ]
    entries += [
        {"key": ":authority", "raw_value": base64.b64encode(b"example.com").decode()},
        {"key": ":path", "raw_value": base64.b64encode(b"/api/x").decode()},
        {"key": "x-junction-version", "raw_value": base64.b64encode(b"\xff\xfe").decode()},
        {"key": "x-junction-version", "raw_value": base64.b64encode(b"go").decode()},
    ]
    c.writer.write(post(orjson.dumps({"request_headers": {"headers": {"headers": entries}}})))
    status, _, body = await c.response()
    assert status == 200
    assert "pin" not in set_headers(parse(body)).get("x-junction-decision", "")
    assert processor.counters.pin_ambiguous == 1
