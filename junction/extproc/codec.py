"""The ext_proc codec: ``ProcessingRequest`` -> headers, ``Decision`` -> ``ProcessingResponse``.

Pure functions, no sockets: the transports (:mod:`junction.extproc.http_adapter`, Envoy's
``http_service`` with proto3 JSON bodies, and :mod:`junction.extproc.grpc_adapter`,
protobuf on gRPC) only move bytes and call these. Both wire forms carry the same message
(``envoy/service/ext_proc/v3/external_processor.proto``):

- decoding keeps only the headers the decision table wants (values as bytes, repeated
  headers in order) and the ``source.address`` attribute when the table needs it;
- encoding sets/removes request headers (``OVERWRITE_IF_EXISTS_OR_ADD``), asks Envoy to
  clear its route cache when the cluster header changed, answers locally for a status,
  and puts a freshly issued sticky cookie in the filter's dynamic metadata
  (:data:`~junction.extproc.plan.METADATA_NAMESPACE`, for the Lua filter to set).

JSON follows Envoy 1.40's ``http_service`` (``http_client_impl.cc``): proto field names,
``raw_value`` base64; unknown fields or wrong types are refused (:class:`BadMessage`).
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from junction.extproc.errors import BadMessage
from junction.extproc.plan import METADATA_NAMESPACE, SET_COOKIE_KEY
from junction.extproc.table import Decision

__all__ = [
    "NOOP_PROTO",
    "BadMessage",
    "details",
    "encode_json",
    "encode_proto",
    "json_headers",
    "json_message",
    "json_noop",
    "json_source",
    "proto_headers",
    "proto_source",
]

# Fields of ProcessingRequest; any other top-level key is an unknown field.
_REQUEST_FIELDS = frozenset(
    {
        "request_headers",
        "response_headers",
        "request_body",
        "response_body",
        "request_trailers",
        "response_trailers",
        "metadata_context",
        "attributes",
        "observability_mode",
        "protocol_config",
    }
)
_HTTP_HEADERS_FIELDS = frozenset({"headers", "attributes", "end_of_stream"})
_HEADER_MAP_FIELDS = frozenset({"headers"})
_HEADER_VALUE_FIELDS = frozenset({"key", "value", "raw_value"})
_ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
_SOURCE_ATTRIBUTE = "source.address"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

#: One empty answer per message kind, serialized: "continue unchanged".
NOOP_PROTO: dict[str, bytes] = {
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


def details(decision: Decision) -> str:
    """The ``ImmediateResponse.details`` of a local answer (shows in Envoy's access log)."""
    return "junction_" + decision.tag.replace(",", "_").replace("=", "_")


# ---- proto3 JSON (http_service) --------------------------------------------------------


def json_message(body: bytes) -> dict[str, Any]:
    """A ``ProcessingRequest`` body as a dict; :class:`BadMessage` (or orjson's error) if
    it is not one."""
    msg = orjson.loads(body)
    if type(msg) is not dict or not _REQUEST_FIELDS.issuperset(msg):
        raise BadMessage("unknown fields")
    return msg


def json_noop(msg: dict[str, Any]) -> dict[str, Any]:
    """The "continue unchanged" answer to another message kind than request headers."""
    kinds = [k for k in msg if k.startswith(("request_", "response_"))]
    if len(kinds) != 1:
        raise BadMessage("expected exactly one message kind")
    return {kinds[0]: {}}


def json_headers(http_headers: Any, wanted: frozenset[str]) -> dict[str, list[bytes]]:
    """The wanted headers of an ``HttpHeaders`` message, values decoded to bytes. Raises on
    unknown fields and wrong types."""
    if not _HTTP_HEADERS_FIELDS.issuperset(http_headers):
        raise BadMessage("unknown fields")
    header_map = http_headers.get("headers") or {}
    if not _HEADER_MAP_FIELDS.issuperset(header_map):
        raise BadMessage("unknown fields")
    headers: dict[str, list[bytes]] = {}
    for entry in header_map.get("headers") or ():
        if not _HEADER_VALUE_FIELDS.issuperset(entry):
            raise BadMessage("unknown fields")
        key = entry["key"]
        if key in wanted:
            raw = entry.get("raw_value")
            value = (
                binascii.a2b_base64(raw, strict_mode=True)
                if raw is not None
                else entry["value"].encode()
            )
            found = headers.get(key)
            if found is None:
                headers[key] = [value]
            else:
                found.append(value)
    return headers


def json_source(msg: dict[str, Any]) -> str | None:
    """The downstream address Envoy put in the ``source.address`` attribute."""
    attributes = msg.get("attributes")
    if not attributes:
        return None
    source = attributes.get(_ATTRIBUTES_KEY, {}).get(_SOURCE_ATTRIBUTE)
    if source is not None and type(source) is not str:
        raise BadMessage("source.address is not a string")
    return source


def _b64(text: str) -> str:
    return binascii.b2a_base64(text.encode(), newline=False).decode()


def encode_json(decision: Decision) -> bytes:
    """``decision`` as a ``ProcessingResponse`` in proto3 JSON (what Envoy parses)."""
    mutation: dict[str, Any] = {}
    if decision.set_headers:
        mutation["set_headers"] = [
            {
                "header": {"key": k, "raw_value": _b64(v)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
            for k, v in decision.set_headers
        ]
    if decision.remove_headers:
        mutation["remove_headers"] = list(decision.remove_headers)
    msg: dict[str, Any]
    if decision.status:
        immediate: dict[str, Any] = {
            "status": {"code": decision.status},
            "body": _b64(decision.body),
            "details": details(decision),
        }
        if mutation:
            immediate["headers"] = mutation
        msg = {"immediate_response": immediate}
    else:
        common: dict[str, Any] = {}
        if mutation:
            common["header_mutation"] = mutation
        if decision.clear_route:
            common["clear_route_cache"] = True
        msg = {"request_headers": {"response": common} if common else {}}
    if decision.set_cookie is not None:
        msg["dynamic_metadata"] = {METADATA_NAMESPACE: {SET_COOKIE_KEY: decision.set_cookie}}
    return orjson.dumps(msg)


# ---- protobuf (gRPC) -------------------------------------------------------------------


def proto_headers(http_headers: ep.HttpHeaders, wanted: frozenset[str]) -> dict[str, list[bytes]]:
    """The wanted headers of an ``HttpHeaders`` message, values as bytes."""
    headers: dict[str, list[bytes]] = {}
    for entry in http_headers.headers.headers:
        key = entry.key
        if key in wanted:
            value = entry.raw_value or entry.value.encode()
            found = headers.get(key)
            if found is None:
                headers[key] = [value]
            else:
                found.append(value)
    return headers


def proto_source(request: ep.ProcessingRequest) -> str | None:
    """The downstream address Envoy put in the ``source.address`` attribute."""
    attributes = request.attributes.get(_ATTRIBUTES_KEY)
    if attributes is None:
        return None
    field = attributes.fields.get(_SOURCE_ATTRIBUTE)
    return field.string_value if field is not None else None


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
                details=details(decision),
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
