"""What one xDS client may cost the server, and how each excess is named.

Hostile or broken clients (unknown type URLs, undecodable requests, 100,000 resource
names, megabytes of error detail, thousands of streams, streams that never read their
responses) must neither grow the server's memory without bound nor slow other nodes'
pushes. Each bound here is enforced by the gRPC adapter (:mod:`junction.xds.server`): the
offender's stream ends with a gRPC status naming the limit, and the case is counted for
``/status`` (``xds_refused``). Pure data and checks: no grpc, no asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from junction.xds.errors import XdsError
from junction.xds.protocol import StreamCore
from junction.xds.resources import short_type

__all__ = ["LimitExceeded", "XdsLimits", "check_request", "check_subscriptions"]


class LimitExceeded(XdsError):
    """A request beyond a bound: the stream ends with RESOURCE_EXHAUSTED. ``reason`` is the
    /status counter's key."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class XdsLimits:
    #: One request's size: refused (RESOURCE_EXHAUSTED, counted) past it; gRPC itself drops
    #: requests past twice this before any handler runs (uncounted: nothing sees them).
    #: 100,000 resource names of 30 bytes fit: the names bound decides for those.
    max_request_bytes: int = 4 * 1024 * 1024
    #: Resource names one request may carry (subscribe + unsubscribe + initial versions).
    #: A config of 1000 clusters subscribes to 1000 endpoint names.
    max_resource_names: int = 10_000
    #: A NACK's error detail beyond this is truncated before it is kept, logged or shown.
    max_error_detail: int = 4096
    #: xDS streams open at once, over all clients (each holds a stream's state and up to a
    #: flow-control window of unsent bytes).
    max_streams: int = 1024
    #: HTTP/2 streams one connection may open (the SETTINGS_MAX_CONCURRENT_STREAMS we send).
    max_streams_per_connection: int = 128
    #: Requests read ahead of the stream's handling; the reader then waits (flow control
    #: pushes back on the client).
    max_pending_requests: int = 16
    #: A response that cannot be handed to gRPC within this many seconds (the client does
    #: not read, its flow-control window is full) ends the stream.
    send_timeout: float = 30.0

    def grpc_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", 2 * self.max_request_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
        ]


def check_request(request: Any, limits: XdsLimits) -> bool:
    """Raise :class:`LimitExceeded` for a request naming too many resources; truncate an
    oversized error detail in place (returns True when it did)."""
    if request.DESCRIPTOR.name == "DeltaDiscoveryRequest":
        names = (
            len(request.resource_names_subscribe)
            + len(request.resource_names_unsubscribe)
            + len(request.initial_resource_versions)
        )
    else:
        names = len(request.resource_names)
    if names > limits.max_resource_names:
        raise LimitExceeded(
            "too_many_resource_names",
            f"request names {names:,} resources; the limit is {limits.max_resource_names:,}",
        )
    if request.HasField("error_detail"):
        message = request.error_detail.message
        if len(message) > limits.max_error_detail:
            request.error_detail.message = (
                message[: limits.max_error_detail] + f"... ({len(message):,} characters, truncated)"
            )
            return True
    return False


def check_subscriptions(core: StreamCore[Any, Any], limits: XdsLimits) -> None:
    """Delta subscriptions add up over requests: bound what one stream holds too."""
    node = core.node
    if node is None:
        return
    for ts in node.types.values():
        st = ts.stream
        if st is not None and st.owner == core.id and len(st.sub.names) > limits.max_resource_names:
            raise LimitExceeded(
                "too_many_resource_names",
                f"stream subscribes to {len(st.sub.names):,} {short_type(ts.type_url)} "
                f"resources; the limit is {limits.max_resource_names:,}",
            )
