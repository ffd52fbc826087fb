"""Raw bytes to an ALS receiver: what a misbehaving or hostile client would send."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from envoy.service.accesslog.v3 import als_pb2

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"


async def send(port: int, payloads: list[bytes]) -> grpc.StatusCode:
    """One StreamAccessLogs stream carrying ``payloads`` (raw bytes); the status it ended with."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_unary(
            METHOD,
            request_serializer=None,
            response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
        )

        async def stream() -> AsyncIterator[bytes]:
            for p in payloads:
                yield p

        try:
            await call(stream())
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK
