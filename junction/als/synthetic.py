"""Envoy-shaped access-log messages built in Python, for tests and the ingest benchmark.

The entries carry what Envoy 1.40's HTTP gRPC access logger fills in for a proxied request
(start time, duration and timings, addresses, route and cluster, request and response
properties, the logged headers), so their size and parse cost are those of the real thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from junction.als.record import DECISION_HEADER, VERSION_HEADER

__all__ = ["Outcome", "entry", "message"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request as the benchmark and tests describe it."""

    cluster: str = "web-api-go"
    status: int = 200
    ms: float = 2.0
    route: str = "/api"
    decision: str = ""
    version: str = ""
    reset: bool = False
    start: float = 1_767_225_600.0
    path: str = "/api/items/42?view=full"


def entry(o: Outcome) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    c = e.common_properties
    c.start_time.FromNanoseconds(int(o.start * 1e9))
    nanos = int(o.ms * 1e6)
    c.duration.FromNanoseconds(nanos)
    c.time_to_last_rx_byte.FromNanoseconds(20_000)
    c.time_to_first_upstream_tx_byte.FromNanoseconds(60_000)
    c.time_to_last_upstream_tx_byte.FromNanoseconds(61_000)
    c.time_to_first_upstream_rx_byte.FromNanoseconds(max(nanos - 100_000, 0))
    c.time_to_last_upstream_rx_byte.FromNanoseconds(max(nanos - 50_000, 0))
    c.time_to_first_downstream_tx_byte.FromNanoseconds(max(nanos - 90_000, 0))
    c.time_to_last_downstream_tx_byte.FromNanoseconds(nanos)
    c.downstream_remote_address.socket_address.address = "127.0.0.1"
    c.downstream_remote_address.socket_address.port_value = 52814
    c.downstream_local_address.socket_address.address = "127.0.0.1"
    c.downstream_local_address.socket_address.port_value = 8000
    c.upstream_remote_address.socket_address.address = "127.0.0.1"
    c.upstream_remote_address.socket_address.port_value = 18082
    c.upstream_local_address.socket_address.address = "127.0.0.1"
    c.upstream_local_address.socket_address.port_value = 40122
    c.upstream_cluster = o.cluster
    c.route_name = o.route
    c.upstream_request_attempt_count = 1
    c.downstream_wire_bytes_sent = 220
    c.downstream_wire_bytes_received = 180
    if o.reset:
        c.response_flags.upstream_remote_reset = True
    e.protocol_version = accesslog_pb2.HTTPAccessLogEntry.HTTP11
    r = e.request
    r.request_method = 1  # GET
    r.scheme = "http"
    r.authority = "example.com"
    r.path = o.path
    r.user_agent = "wrk/4.2"
    r.request_id = "5f0c6a6e-93c2-4bb5-a0b6-6c3a4cf0b2d9"
    r.request_headers_bytes = 160
    if o.decision:
        r.request_headers[DECISION_HEADER] = o.decision
    if o.version:
        r.request_headers[VERSION_HEADER] = o.version
    resp = e.response
    if o.status:
        resp.response_code.value = o.status
    resp.response_headers_bytes = 120
    resp.response_body_bytes = 11
    resp.response_code_details = "via_upstream"
    return e


def message(
    outcomes: Iterable[Outcome], *, node: str | None = "node-1", log_name: str = "junction"
) -> als_pb2.StreamAccessLogsMessage:
    """A StreamAccessLogsMessage of HTTP entries; ``node`` None leaves out the identifier
    (Envoy sends it only on a stream's first message)."""
    m = als_pb2.StreamAccessLogsMessage()
    if node is not None:
        m.identifier.node.id = node
        m.identifier.log_name = log_name
    m.http_logs.log_entry.extend(entry(o) for o in outcomes)
    return m
