"""The Envoy side: the HTTP connection manager's gRPC access logger, pointed at Junction.

Envoy's ``envoy.access_loggers.http_grpc`` extension (``HttpGrpcAccessLogConfig``,
https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/grpc/v3/als.proto)
buffers entries per worker thread and sends them on one long-lived
``StreamAccessLogs`` stream to the static cluster ``junction_als`` (in every bootstrap
Junction writes). Its knobs:

- ``buffer_flush_interval`` (Envoy's default 1 s) and ``buffer_size_bytes`` (default
  16 KiB): a buffer is sent when either is reached. A shorter interval makes the canary
  controller see outcomes sooner; a larger buffer means fewer, bigger messages (cheaper to
  receive). Set with ``junction up|serve --als-flush-interval --als-buffer-bytes``.
- the request headers recorded with every entry: the decision tag (``x-junction-decision``)
  and the propagated version (``x-junction-version``); the upstream cluster, i.e. the
  version that served the request, is always in the entry (``upstream_cluster``).

Envoy never waits for the receiver: when the stream is down or backed up it drops entries
and counts them in ``access_logs.grpc_access_log.logs_dropped``
(:mod:`junction.als.envoy_drops` reads that counter).

:func:`with_access_log` adds the logger to :class:`~junction.xds.translate.TranslateOptions`,
the slot translation keeps for HCM access loggers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from google.protobuf import wrappers_pb2

from junction.als.errors import AlsError
from junction.als.record import DECISION_HEADER, VERSION_HEADER
from junction.xds.names import ALS_CLUSTER
from junction.xds.translate import TranslateOptions, pack
from junction.xds.translate_cluster import duration

__all__ = ["HTTP_GRPC_LOGGER", "LOG_NAME", "AccessLogOptions", "access_logger", "with_access_log"]

HTTP_GRPC_LOGGER = "envoy.access_loggers.http_grpc"
#: The ``log_name`` in each stream's identifier (so one receiver can tell loggers apart).
LOG_NAME = "junction"
#: A message holds one flushed buffer; stay well under the receiver's message limit.
MAX_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class AccessLogOptions:
    """How Envoy batches and what it records. Seconds for ``flush_interval``."""

    flush_interval: float = 1.0
    buffer_size_bytes: int = 16384
    request_headers: tuple[str, ...] = (DECISION_HEADER, VERSION_HEADER)
    response_headers: tuple[str, ...] = ()
    log_name: str = LOG_NAME

    def __post_init__(self) -> None:
        if not 0.001 <= self.flush_interval <= 60:
            raise AlsError(
                f"als flush interval: must be 0.001..60 seconds, got {self.flush_interval!r}"
            )
        if not 0 <= self.buffer_size_bytes <= MAX_BUFFER_BYTES:
            raise AlsError(
                f"als buffer size: must be 0..{MAX_BUFFER_BYTES} bytes, "
                f"got {self.buffer_size_bytes!r}"
            )


def access_logger(options: AccessLogOptions | None = None) -> accesslog_pb2.AccessLog:
    """The HCM ``access_log`` entry sending every request's log to ``junction_als``."""
    o = options or AccessLogOptions()
    config = als_pb2.HttpGrpcAccessLogConfig(
        common_config=als_pb2.CommonGrpcAccessLogConfig(
            log_name=o.log_name,
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=ALS_CLUSTER)
            ),
            transport_api_version=config_source_pb2.V3,
            buffer_flush_interval=duration(o.flush_interval),
            buffer_size_bytes=wrappers_pb2.UInt32Value(value=o.buffer_size_bytes),
        ),
        additional_request_headers_to_log=list(o.request_headers),
        additional_response_headers_to_log=list(o.response_headers),
    )
    return accesslog_pb2.AccessLog(name=HTTP_GRPC_LOGGER, typed_config=pack(config))


def with_access_log(
    translate_options: TranslateOptions, options: AccessLogOptions | None = None
) -> TranslateOptions:
    """``translate_options`` plus the gRPC access logger (after any loggers already there)."""
    return dataclasses.replace(
        translate_options,
        access_log=(*translate_options.access_log, access_logger(options)),
    )
