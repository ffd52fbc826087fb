"""The ``http_service`` transport: Envoy's ext_proc over plain HTTP/1.1 with JSON bodies.

Envoy 1.40 (``ExternalProcessor.http_service``) POSTs each ``ProcessingRequest`` as proto3
JSON with the proto field names (``request_headers.headers.headers[].raw_value``, base64),
chunked, and expects a ``ProcessingResponse`` as JSON with status 200; any other status,
or a body it cannot parse, is an error and the filter's failure mode applies
(``http_client_impl.cc``; checked against the real binary). It sends one message per
request: only request headers, which is all Junction decides on.

This module is the transport only; the message codec is :mod:`junction.extproc.codec`.
The server is an :class:`asyncio.Protocol` over httptools (llhttp), meant for uvloop:

* HTTP/1.1 keep-alive; ``Connection: close`` honoured; pipelined requests answered in
  order (each answer is computed synchronously, and answers produced by one read are
  written together);
* chunked and fixed-length bodies, bounded by ``max_body`` (413, counted, connection
  closed); header bytes bounded too;
* malformed HTTP, malformed JSON, unknown JSON fields or wrong types: 400, counted;
* idle connections closed after ``idle_timeout``; a request that does not complete within
  ``request_timeout`` gets 408 and the connection is closed (slow clients hold nothing);
* ``GET /healthz``: 200 once a decision table is loaded (503 before), for probes.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
from dataclasses import dataclass

import httptools
import orjson

from junction.extproc.codec import (
    BadMessage,
    encode_json,
    json_headers,
    json_message,
    json_noop,
    json_source,
)
from junction.extproc.counters import Counters
from junction.extproc.processor import Processor
from junction.extproc.table import Decision

__all__ = ["HttpLimits", "HttpProcessor", "encode_json", "serve_http"]

log = logging.getLogger("junction.extproc")

@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what one client may make the server hold."""

    max_body: int = 1 << 20
    max_header_bytes: int = 64 << 10
    idle_timeout: float = 60.0
    request_timeout: float = 10.0


def _http(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


def _error(status: bytes, message: str) -> bytes:
    return _http(status, orjson.dumps({"error": message}))


_BAD_REQUEST = _error(b"400 Bad Request", "not an ext_proc ProcessingRequest")
_BAD_HTTP = _error(b"400 Bad Request", "malformed HTTP")
_TOO_LARGE = _error(b"413 Content Too Large", "request too large")
_HEADERS_TOO_LARGE = _error(b"431 Request Header Fields Too Large", "headers too large")
_TIMEOUT = _error(b"408 Request Timeout", "request not completed in time")
_NOT_FOUND = _error(b"404 Not Found", "POST ext_proc messages; GET /healthz")
_NO_TABLE = _error(b"503 Service Unavailable", "no decision table loaded yet")
_INTERNAL = _error(b"500 Internal Server Error", "decision failed")
_HEALTHY = _http(b"200 OK", b"OK\n", b"text/plain")


class HttpProcessor(Processor[bytes, bytes]):
    """Turns one POSTed JSON ``ProcessingRequest`` into a whole HTTP response."""

    def encode(self, decision: Decision) -> bytes:
        return _http(b"200 OK", encode_json(decision))

    def handle(self, body: bytes) -> bytes:
        table = self.table
        if table is None:
            return _NO_TABLE
        try:
            msg = json_message(body)
            http_headers = msg.get("request_headers")
            if http_headers is None:
                # Another message kind (Envoy was configured to send more than headers):
                # let it through unchanged, and count it.
                noop = json_noop(msg)
                self.counters.message_unexpected += 1
                return _http(b"200 OK", orjson.dumps(noop))
            headers = json_headers(http_headers, table.wanted)
            source = json_source(msg) if table.needs_source else None
        except (orjson.JSONDecodeError, BadMessage, KeyError, TypeError, AttributeError,
                ValueError, binascii.Error):  # fmt: skip
            # Every way a body can fail to be a ProcessingRequest: the client's fault, 400.
            self.counters.http_bad_request += 1
            return _BAD_REQUEST
        return self.answer(table.decide(headers, source, self.counters))


class _Connection(asyncio.Protocol):
    """One client connection (Envoy opens one per concurrent ext_proc call per worker)."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.processor = server.processor
        self.counters: Counters = server.processor.counters
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0
        self.header_bytes = 0
        self.started: float | None = None
        self.last_active = 0.0
        self.out: list[bytes] = []
        self.closing = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.last_active = self.server.loop.time()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self.server.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.counters.http_bad_request += 1
            self._fail(_BAD_HTTP)
        if self.out:
            self._flush()

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.size = 0
        self.header_bytes = 0
        self.started = self.last_active

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes(len(name) + len(value))

    def _header_bytes(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.limits.max_header_bytes and not self.closing:
            self.counters.http_too_large += 1
            self._fail(_HEADERS_TOO_LARGE)

    def on_body(self, chunk: bytes) -> None:
        if self.closing:
            return
        self.size += len(chunk)
        if self.size > self.limits.max_body:
            # Answer now: waiting for the end of an oversized body lets a client stream on.
            self.counters.http_too_large += 1
            self._fail(_TOO_LARGE)
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        self.started = None
        if self.parser.get_method() == b"POST":
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            try:
                answer = self.processor.respond(body)
            except Exception:
                # A bug, not the client's fault: say so once per worker, answer 500 (Envoy
                # applies its failure mode), and keep serving.
                self.counters.internal_error += 1
                if self.counters.internal_error == 1:
                    log.exception("decision failed (further failures are only counted)")
                answer = _INTERNAL
        elif self.url == b"/healthz":
            answer = _HEALTHY if self.processor.table is not None else _NO_TABLE
        else:
            self.counters.http_not_found += 1
            answer = _NOT_FOUND
        if not self.parser.should_keep_alive():
            self.closing = True
            answer = answer.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
        self.out.append(answer)

    # -- helpers

    def _fail(self, answer: bytes) -> None:
        """Answer ``answer`` after what is already queued, then close."""
        if self.closing:
            return
        self.closing = True
        self.out.append(answer.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        out, self.out = self.out, []
        if transport is None:
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.closing:
            transport.close()

    def sweep(self, now: float) -> None:
        """Close the connection if it is idle too long or its request is too slow."""
        if self.closing or self.transport is None:
            return
        if self.started is not None:
            if now - self.started > self.limits.request_timeout:
                self.counters.http_timeout += 1
                self._fail(_TIMEOUT)
        elif now - self.last_active > self.limits.idle_timeout:
            self.closing = True
            self.transport.close()


class _Server:
    """The listening side: the shared processor, the open connections, the timeout sweep."""

    def __init__(self, processor: HttpProcessor, limits: HttpLimits) -> None:
        self.processor = processor
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.server: asyncio.Server | None = None

    async def _sweep(self) -> None:
        interval = max(
            0.05, min(1.0, self.limits.request_timeout / 4, self.limits.idle_timeout / 4)
        )
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.sweep(now)

    async def start(self, host: str, port: int, reuse_port: bool) -> int:
        self.server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_port=reuse_port, backlog=4096
        )
        self._sweeper = asyncio.create_task(self._sweep())
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self.server.wait_closed()


async def serve_http(
    processor: HttpProcessor,
    host: str,
    port: int,
    *,
    limits: HttpLimits | None = None,
    reuse_port: bool = False,
) -> tuple[_Server, int]:
    """Start serving on ``host:port`` (0: a free port); returns the server and its port.
    ``reuse_port``: SO_REUSEPORT, so several worker processes share the port and the
    kernel spreads Envoy's connections across them."""
    server = _Server(processor, limits or HttpLimits())
    bound = await server.start(host, port, reuse_port)
    return server, bound
