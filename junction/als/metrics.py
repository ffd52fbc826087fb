"""Access-log receiver metrics, read at scrape time from the receiver's own counters.

The receiver counts everything it does for ``/als`` already (:mod:`junction.als.pipeline`);
this turns those counts into metric families, so the ingest path pays nothing for metrics.
Envoy's own reported drops (its ``access_logs.grpc_access_log.logs_dropped`` stat, read from
its admin API by :mod:`junction.als.envoy_drops`) are exported beside them: entries Envoy
could not even send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from junction.metrics import counter, gauge

__all__ = ["AlsMetrics"]

#: (metric name without _total, help, receiver counter)
_COUNTERS = (
    ("junction_als_streams_opened", "Access-log streams opened by Envoys", "streams_opened"),
    ("junction_als_messages", "Access-log messages received", "messages"),
    ("junction_als_received_bytes", "Bytes of access-log messages received", "bytes"),
    ("junction_als_entries_received", "HTTP access-log entries received", "entries"),
    ("junction_als_entries_processed", "Entries that reached the windows", "processed_entries"),
    ("junction_als_late_entries", "Entries older than the windows' horizon", "late_entries"),
    ("junction_als_tcp_entries", "TCP entries received and ignored", "tcp_entries"),
)


class AlsMetrics(Collector):
    """``status`` gives :meth:`junction.loop.service.AlsService.status`'s plain data."""

    def __init__(
        self,
        registry: CollectorRegistry,
        status: Callable[[], dict[str, Any]],
        requests: Callable[[], Mapping[tuple[str, str, bool], int]] = dict,
    ) -> None:
        self._status = status
        self._requests = requests
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        receiver: dict[str, Any] = status.get("receiver") or {}
        for name, help_, key in _COUNTERS:
            yield counter(name, help_, [], {(): receiver.get(key, 0)})
        sinks = receiver.get("sinks") or {}
        yield counter(
            "junction_als_entries_dropped",
            "Entries dropped: the queue was full (never processed), or a sink failed",
            ["reason"],
            {("queue",): receiver.get("dropped_entries", 0), ("sink",): sinks.get("dropped", 0)},
        )
        yield counter(
            "junction_als_messages_rejected",
            "Messages refused: over the size limit, or not an access-log message",
            ["reason"],
            {
                ("oversized",): receiver.get("rejected_oversized", 0),
                ("malformed",): receiver.get("rejected_malformed", 0),
                ("failed",): receiver.get("failed_messages", 0),
            },
        )
        yield gauge("junction_als_streams_active", "Open access-log streams", [],
                    {(): receiver.get("streams_active", 0)})  # fmt: skip
        yield gauge("junction_als_queue_bytes", "Bytes waiting in the receiver's queue", [],
                    {(): receiver.get("queued_bytes", 0)})  # fmt: skip
        yield gauge("junction_als_queue_limit_bytes", "The queue's bound, bytes", [],
                    {(): receiver.get("max_queue_bytes", 0)})  # fmt: skip
        yield counter("junction_als_sink_lines", "Lines written by the sinks", [],
                      {(): sinks.get("written", 0)})  # fmt: skip
        yield counter(
            "junction_als_requests",
            "Requests Envoy logged, by cluster (version), how it was chosen (split: the"
            " weights or canary buckets; pin; exp: an experiment arm) and outcome",
            ["cluster", "decision", "outcome"],
            {
                (cluster, source, "failed" if failed else "ok"): n
                for (cluster, source, failed), n in self._requests().items()
            },
        )
        envoy: dict[str, Any] = status.get("envoy") or {}
        yield counter(
            "junction_envoy_access_logs_dropped",
            "Entries Envoy reported it could not send (its logs_dropped stat)",
            [],
            {(): envoy.get("logs_dropped_seen") or 0},
        )
        yield counter(
            "junction_envoy_access_logs_written",
            "Entries Envoy reported sent (its logs_written stat)",
            [],
            {(): envoy.get("logs_written") or 0},
        )
