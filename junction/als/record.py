"""One access-log entry, flattened: what the sinks write and the windows count.

Envoy's HTTP gRPC access logger sends ``envoy.data.accesslog.v3.HTTPAccessLogEntry``
messages (https://www.envoyproxy.io/docs/envoy/latest/api-v3/data/accesslog/v3/accesslog.proto).
:func:`records_from_entries` keeps the few fields Junction uses, as a slotted dataclass, so
a record costs one small object and serializes with orjson's native dataclass support.

The decision header the decision service sets upstream (``x-junction-decision``,
:mod:`junction.extproc.table`) is logged as a request header; :func:`classify` reads it:

============================== ========== ======================================
tag                            ``source``  ``arm``
============================== ========== ======================================
(absent), ``route``            ``split``   ``""``
``canary=go``                  ``split``   ``""``
``exp=feed:control,canary=go`` ``split``   ``feed:control``
``exp=feed:control,route``     ``split``   ``feed:control``
``exp=feed:treatment``         ``exp``     ``feed:treatment``
``pin=go`` (and ``,fallback``) ``pin``     ``""``
============================== ========== ======================================

``split`` means the cluster was chosen by the canary weights (the decision service's
buckets or Envoy's weighted clusters): only those requests count in a canary's figures, so
pinned requests (QA, staff) and experiment arms with their own version never move a ramp.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from envoy.data.accesslog.v3 import accesslog_pb2

__all__ = [
    "DECISION_HEADER",
    "SOURCE_EXPERIMENT",
    "SOURCE_PIN",
    "SOURCE_SPLIT",
    "VERSION_HEADER",
    "LogRecord",
    "classify",
    "records_from_entries",
]

#: Request headers the access logger records (see :mod:`junction.xds.translate_als`).
DECISION_HEADER = "x-junction-decision"
VERSION_HEADER = "x-junction-version"

SOURCE_SPLIT = "split"
SOURCE_PIN = "pin"
SOURCE_EXPERIMENT = "exp"

# envoy.config.core.v3.RequestMethod enum, by number (METHOD_UNSPECIFIED = 0).
_METHODS = ("", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


@dataclass(slots=True)
class LogRecord:
    """One HTTP request as Junction keeps it. ``status`` 0: no response was sent (reset).

    ``reset``: the upstream connection failed or was reset, or Envoy reset the stream
    (response flags UF, UC, UR, LR, UT); counted as a failure of the cluster like a 5xx.
    Times: ``t`` is the request's start (Unix seconds, from Envoy), ``ms`` its duration
    until the last byte was sent downstream.
    """

    t: float
    node: str
    route: str
    cluster: str
    status: int
    ms: float
    reset: bool
    method: str
    authority: str
    path: str
    decision: str
    version: str

    @property
    def failed(self) -> bool:
        return self.status >= 500 or self.status == 0 or self.reset


_CLASSES: dict[str, tuple[str, str]] = {}


def classify(tag: str) -> tuple[str, str]:
    """(source, experiment arm) of a decision tag (table in the module docstring).

    Memoized: tags are a handful of distinct strings per config, so the hot path does one
    dict lookup. Unknown shapes classify as ``split`` with no arm (Envoy's own choice)."""
    found = _CLASSES.get(tag)
    if found is not None:
        return found
    source, arm = SOURCE_SPLIT, ""
    for part in tag.split(","):
        name, _, value = part.partition("=")
        if name == "pin":
            source = SOURCE_PIN
        elif name == "exp" and ":" in value:
            arm = value
            if source != SOURCE_PIN:
                source = SOURCE_EXPERIMENT
        elif name in ("canary", "route") and source == SOURCE_EXPERIMENT:
            # An arm that only tags: the canary (or Envoy's weights) chose the cluster.
            source = SOURCE_SPLIT
    found = (source, arm)
    if len(_CLASSES) < 10_000:  # tags come from our decision service, but bound it anyway
        _CLASSES[tag] = found
    return found


def records_from_entries(
    entries: Iterable[accesslog_pb2.HTTPAccessLogEntry], node: str, now: float
) -> list[LogRecord]:
    """Flatten Envoy's entries. ``now`` replaces a missing start time.

    Never raises on a parsed message: absent fields read as protobuf defaults.
    """
    out: list[LogRecord] = []
    append = out.append
    for entry in entries:
        common = entry.common_properties
        request = entry.request
        start = common.start_time
        t = start.seconds + start.nanos * 1e-9 if start.seconds else now
        d = common.duration
        if d.seconds or d.nanos:
            ms = d.seconds * 1000.0 + d.nanos * 1e-6
        else:
            d = common.time_to_last_downstream_tx_byte
            ms = d.seconds * 1000.0 + d.nanos * 1e-6
        flags = common.response_flags
        # ByteSize() is 0 when no flag is set: one C call instead of five field reads.
        reset = bool(flags.ByteSize()) and (
            flags.upstream_remote_reset
            or flags.upstream_connection_failure
            or flags.upstream_connection_termination
            or flags.local_reset
            or flags.upstream_request_timeout
        )
        headers = request.request_headers
        method = request.request_method
        append(
            LogRecord(
                t,
                node,
                common.route_name,
                common.upstream_cluster,
                entry.response.response_code.value,
                ms,
                reset,
                _METHODS[method] if 0 <= method < len(_METHODS) else str(method),
                request.authority,
                request.path,
                headers.get(DECISION_HEADER, "") if headers else "",
                headers.get(VERSION_HEADER, "") if headers else "",
            )
        )
    return out
