"""The gRPC transport: ``envoy.service.ext_proc.v3.ExternalProcessor/Process`` on grpc.aio.

Envoy opens one bidirectional stream per HTTP request and sends a ``ProcessingRequest``
for each processing step it is configured for; Junction's filter config asks only for
request headers, so a stream carries one message each way. The servicer is a thin
adapter: it hands the wanted headers to the decision table and answers with the
serialized ``ProcessingResponse`` cached per decision (the method is registered with a
bytes serializer, so nothing is re-encoded per request).

Other message kinds (if Envoy is configured to send them) are let through unchanged and
counted. Before a table is loaded, streams are refused with UNAVAILABLE, so Envoy applies
its failure mode.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from junction.extproc.plan import METADATA_NAMESPACE, SET_COOKIE_KEY
from junction.extproc.processor import Processor
from junction.extproc.table import Decision

__all__ = ["GrpcProcessor", "encode_proto", "serve_grpc"]

log = logging.getLogger("junction.extproc")

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
_ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
_SOURCE_ATTRIBUTE = "source.address"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# One empty answer per message kind: "continue unchanged".
_NOOP: dict[str, bytes] = {
    kind: ep.ProcessingResponse(**{kind: message}).SerializeToString()
    for kind, message in (
        ("request_headers", ep.HeadersResponse()),
        ("response_headers", ep.HeadersResponse()),
        ("request_body", ep.BodyResponse()),
        ("response_body", ep.BodyResponse()),
        ("request_trailers", ep.TrailersResponse()),
        ("response_trailers", ep.TrailersResponse()),
    )
}


def encode_proto(decision: Decision) -> ep.ProcessingResponse:
    """``decision`` as a ``ProcessingResponse`` message."""
    mutation = ep.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE
            )
            for k, v in decision.set_headers
        ],
        remove_headers=list(decision.remove_headers),
    )
    response = ep.ProcessingResponse()
    if decision.status:
        response.immediate_response.CopyFrom(
            ep.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=decision.status),
                headers=mutation,
                body=decision.body.encode(),
                details="junction_" + decision.tag.replace(",", "_").replace("=", "_"),
            )
        )
    else:
        common = response.request_headers.response
        common.SetInParent()
        if decision.set_headers or decision.remove_headers:
            common.header_mutation.CopyFrom(mutation)
        common.clear_route_cache = decision.clear_route
    if decision.set_cookie is not None:
        response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.CopyFrom(
            struct_pb2.Struct(
                fields={SET_COOKIE_KEY: struct_pb2.Value(string_value=decision.set_cookie)}
            )
        )
    return response


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
            return _NOOP.get(kind or "", _NOOP["request_headers"])
        wanted = table.wanted
        headers: dict[str, list[bytes]] = {}
        for entry in request.request_headers.headers.headers:
            key = entry.key
            if key in wanted:
                value = entry.raw_value or entry.value.encode()
                found = headers.get(key)
                if found is None:
                    headers[key] = [value]
                else:
                    found.append(value)
        source = None
        if table.needs_source:
            attributes = request.attributes.get(_ATTRIBUTES_KEY)
            if attributes is not None:
                field = attributes.fields.get(_SOURCE_ATTRIBUTE)
                source = field.string_value if field is not None else None
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
    a free one). ``reuse_port``: several worker processes share the port."""
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
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port}")
    await server.start()
    return server, bound
