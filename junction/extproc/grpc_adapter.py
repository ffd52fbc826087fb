"""The gRPC transport: ``envoy.service.ext_proc.v3.ExternalProcessor/Process`` on grpc.aio.

Envoy opens one bidirectional stream per HTTP request and sends a ``ProcessingRequest``
for each processing step it is configured for; Junction's filter config asks only for
request headers, so a stream carries one message each way. The servicer is a thin
adapter around :mod:`junction.extproc.codec`: it hands the wanted headers to the
decision table and answers with the serialized ``ProcessingResponse`` cached per
decision (the method is registered with a bytes serializer, so nothing is re-encoded per
request).

Other message kinds (if Envoy is configured to send them) are let through unchanged and
counted. Before a table is loaded, streams are refused with UNAVAILABLE, so Envoy applies
its failure mode.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from junction.extproc.codec import NOOP_PROTO, encode_proto, proto_headers, proto_source
from junction.extproc.errors import ExtProcError
from junction.extproc.processor import Processor
from junction.extproc.table import Decision

__all__ = ["GrpcProcessor", "encode_proto", "serve_grpc"]

log = logging.getLogger("junction.extproc")

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


class GrpcProcessor(Processor[ep.ProcessingRequest, bytes]):
    """Decides one ``ProcessingRequest``; the answer is the serialized response."""

    def encode(self, decision: Decision) -> bytes:
        encoded: bytes = encode_proto(decision).SerializeToString()
        return encoded

    def handle(self, request: ep.ProcessingRequest) -> bytes:
        table = self.table
        assert table is not None
        kind = request.WhichOneof("request")
        if kind != "request_headers":
            self.counters.message_unexpected += 1
            return NOOP_PROTO.get(kind or "", NOOP_PROTO["request_headers"])
        headers = proto_headers(request.request_headers, table.wanted)
        source = proto_source(request) if table.needs_source else None
        return self.answer(table.decide(headers, source, self.counters))

    async def process(
        self, requests: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """The ``Process`` stream: one answer per message, in order."""
        self.counters.grpc_streams += 1
        if self.table is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no decision table loaded yet")
        async for request in requests:
            try:
                answer = self.respond(request)
            except Exception:
                # A bug: said once per worker, then only counted; Envoy gets an error and
                # applies its failure mode.
                self.counters.internal_error += 1
                if self.counters.internal_error == 1:
                    log.exception("decision failed (further failures are only counted)")
                await context.abort(grpc.StatusCode.INTERNAL, "decision failed")
            yield answer


async def serve_grpc(
    processor: GrpcProcessor,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    options: Sequence[tuple[str, int]] = (),
) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server with the ext_proc service; returns it and its port (0:
    a free one). ``reuse_port``: several worker processes share the port. Raises
    :class:`~junction.extproc.errors.ExtProcError` if the port cannot be bound."""
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Process": grpc.stream_stream_rpc_method_handler(
                processor.process,
                request_deserializer=ep.ProcessingRequest.FromString,
                response_serializer=None,  # answers are bytes already
            )
        },
    )
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1 if reuse_port else 0), *options],
    )
    server.add_generic_rpc_handlers((handler,))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # newer grpc raises where older returned 0
        raise ExtProcError(f"cannot bind the gRPC port {host}:{port}: {exc}") from exc
    if bound == 0:
        raise ExtProcError(f"cannot bind the gRPC port {host}:{port}")
    await server.start()
    return server, bound
