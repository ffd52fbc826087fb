"""The gRPC adapter: ``envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs``.

Envoy opens one client stream per worker thread and log name, and streams
``StreamAccessLogsMessage``s forever; it expects no answer and treats the API as lossy
(als.proto: "designed for high throughput with the expectation that it might be lossy").
The servicer is a thin adapter: it takes the raw bytes (no deserializer is registered, so
it sees the size before parsing), rejects and counts what it cannot use, and offers the
rest to the :class:`~junction.als.pipeline.Pipeline` without waiting.

Rejections end the stream with a status (Envoy reconnects on its next flush):

- a message over ``max_message_bytes``: ``RESOURCE_EXHAUSTED``, ``rejected_oversized``.
  gRPC's own receive limit is set to four times that, so everything up to there is seen and
  counted here; gRPC refuses larger ones itself (also ``RESOURCE_EXHAUSTED``) and the
  handler only sees the stream end, so those are not counted;
- bytes that are not a ``StreamAccessLogsMessage`` (wire-format errors, invalid UTF-8 in a
  string, or neither an identifier nor log entries, e.g. another message's fields):
  ``INVALID_ARGUMENT``, ``rejected_malformed``.

Envoy sends the identifier (its node) only in a stream's first message; the node is kept
for the stream's lifetime and stamped on every record.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError

from junction.als.pipeline import Pipeline

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "SERVICE", "AccessLogServicer", "create_server"]

log = logging.getLogger("junction.als")

SERVICE = "envoy.service.accesslog.v3.AccessLogService"
#: Envoy's buffer_size_bytes defaults to 16 KiB; one message holds one flushed buffer, so
#: 4 MiB leaves room for very large entries while bounding what one message can cost.
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
_EMPTY = als_pb2.StreamAccessLogsResponse()


class AccessLogServicer:
    """Reads streams as fast as they arrive; all processing happens in the pipeline."""

    def __init__(
        self, pipeline: Pipeline, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.pipeline = pipeline
        self.max_message_bytes = max_message_bytes

    async def stream_access_logs(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, Any]
    ) -> als_pb2.StreamAccessLogsResponse:
        counters = self.pipeline.counters
        offer = self.pipeline.offer
        parse = als_pb2.StreamAccessLogsMessage.FromString
        limit = self.max_message_bytes
        counters.streams_opened += 1
        counters.streams_active += 1
        node: str | None = None
        try:
            async for raw in requests:
                size = len(raw)
                if size > limit:
                    counters.rejected_oversized += 1
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"access-log message of {size} bytes is over the limit of {limit}",
                    )
                try:
                    message = parse(raw)
                except DecodeError as exc:
                    counters.rejected_malformed += 1
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"not a StreamAccessLogsMessage: {exc}",
                    )
                if message.WhichOneof("log_entries") is None and not message.HasField("identifier"):
                    # Parsed, but nothing we know: empty, or some other message's fields.
                    counters.rejected_malformed += 1
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "not a StreamAccessLogsMessage: no identifier and no log entries",
                    )
                if node is None:
                    if message.HasField("identifier"):
                        node = message.identifier.node.id
                    else:
                        counters.no_identifier += 1
                        node = ""
                offer(node, message, size)
        finally:
            counters.streams_active -= 1
        return _EMPTY


def add_to_server(servicer: AccessLogServicer, server: grpc.aio.Server) -> None:
    """Register the servicer; the request is left as bytes (no deserializer)."""
    handler = grpc.stream_unary_rpc_method_handler(
        servicer.stream_access_logs,
        request_deserializer=None,
        response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"StreamAccessLogs": handler}),)
    )


async def create_server(
    pipeline: Pipeline,
    address: str = "127.0.0.1:0",
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server with the ALS servicer on ``address``; returns the bound port
    (``address`` may end in ``:0``). ``credentials``: TLS (None: plaintext)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 4 * max_message_bytes),
            # Many Envoys may connect; keep idle ones cheap and notice dead ones.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    add_to_server(AccessLogServicer(pipeline, max_message_bytes=max_message_bytes), server)
    port = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    if port == 0:
        raise OSError(f"cannot bind the ALS receiver to {address}")
    await server.start()
    log.info("ALS receiver on %s", address.rsplit(":", 1)[0] + f":{port}")
    return server, port
