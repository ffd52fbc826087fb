"""Control-plane metrics: xDS streams and pushes, configs, sources, the snapshot.

:class:`XdsMetrics` is both an event observer (the xDS server hands it every protocol event
of every stream, :meth:`XdsMetrics.observe`; the publisher times each publish,
:meth:`XdsMetrics.observe_publish`) and a collector that reads the publisher's and the
cache's state when Prometheus scrapes.

Push-to-ACK latency is the time from a response leaving the protocol core to the ACK or
NACK that names its nonce (xDS protocol: "ACK/NACK and resource type instance version",
https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol). One response per
(stream, type) is in flight at a time, so the pending table is bounded by the streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from junction.metrics import BoundedLabel, counter, gauge
from junction.xds.protocol import (
    Ack,
    Connected,
    Disconnected,
    Event,
    Nack,
    Sent,
    StaleNonce,
    StreamKind,
)
from junction.xds.publisher import PublishTiming
from junction.xds.resources import short_type

__all__ = ["PUSH_BUCKETS", "XdsMetrics"]

#: Push-to-ACK buckets, seconds: Envoy ACKs a small push in milliseconds; seconds mean a
#: slow or stuck Envoy (or a make-before-break hold).
PUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Publish (translate + check + hand to the cache) buckets, seconds.
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _transport(kind: StreamKind) -> str:
    return "delta" if kind.delta else "sotw"


class XdsMetrics(Collector):
    """Registers its families in ``registry``; ``status`` gives the publisher's plain data
    (:meth:`junction.xds.publisher.Publisher.status`), ``nodes`` the cache's node status."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        status: Callable[[], dict[str, Any]],
        nodes: Callable[[], Sequence[Any]],
        clock: Callable[[], float] = time.monotonic,
        node_limit: int = 64,
    ) -> None:
        self._status = status
        self._nodes = nodes
        self._clock = clock
        self._node = BoundedLabel(node_limit)
        self._pending: dict[tuple[int, str], tuple[str, float]] = {}
        self.streams = Counter(
            "junction_xds_streams", "xDS streams opened", ["transport"], registry=registry
        )
        self.responses = Counter(
            "junction_xds_responses",
            "xDS responses sent",
            ["type", "transport"],
            registry=registry,
        )
        self.acks = Counter(
            "junction_xds_acks", "ACKs received", ["type", "node"], registry=registry
        )
        self.nacks = Counter(
            "junction_xds_nacks", "NACKs received", ["type", "node"], registry=registry
        )
        self.stale = Counter(
            "junction_xds_stale_nonces",
            "Requests answering an older response (neither ACK nor NACK)",
            ["type"],
            registry=registry,
        )
        self.push_ack = Histogram(
            "junction_xds_push_ack_seconds",
            "Time from sending a response to its ACK or NACK",
            ["type"],
            buckets=PUSH_BUCKETS,
            registry=registry,
        )
        self.publish = Histogram(
            "junction_xds_publish_seconds",
            "Time to build, check and hand one snapshot to the xDS streams",
            buckets=PUBLISH_BUCKETS,
            registry=registry,
        )
        registry.register(self)

    # ---- events ---------------------------------------------------------------------

    def observe(self, node_id: str, kind: StreamKind, stream: int, events: Iterable[Event]) -> None:
        """Count one stream's events (called by the xDS server for every output)."""
        for event in events:
            match event:
                case Sent(type_url=t, nonce=nonce):
                    self.responses.labels(short_type(t), _transport(kind)).inc()
                    self._pending[(stream, t)] = (nonce, self._clock())
                case Ack(type_url=t, nonce=nonce):
                    self.acks.labels(short_type(t), self._node(node_id)).inc()
                    self._answered(stream, t, nonce)
                case Nack(type_url=t, nonce=nonce):
                    self.nacks.labels(short_type(t), self._node(node_id)).inc()
                    self._answered(stream, t, nonce)
                case StaleNonce(type_url=t):
                    self.stale.labels(short_type(t)).inc()
                case Connected():
                    self.streams.labels(_transport(kind)).inc()
                case Disconnected():
                    self._forget(stream)

    def _forget(self, stream: int) -> None:
        # A closed stream's unanswered pushes will never be answered.
        for key in [k for k in self._pending if k[0] == stream]:
            del self._pending[key]

    def observe_publish(self, timing: PublishTiming) -> None:
        self.publish.observe(timing.wall)

    def _answered(self, stream: int, type_url: str, nonce: str) -> None:
        pending = self._pending.get((stream, type_url))
        if pending is not None and pending[0] == nonce:
            del self._pending[(stream, type_url)]
            self.push_ack.labels(short_type(type_url)).observe(self._clock() - pending[1])

    # ---- scrape-time families -------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read at scrape time; nothing to check against other collectors

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        nodes = list(self._nodes())
        connected = [n for n in nodes if n.connected]
        yield gauge("junction_xds_connected_nodes", "Nodes with an open xDS stream", [],
                    {(): len(connected)})  # fmt: skip
        yield gauge(
            "junction_xds_node_synced",
            "1 when the node has ACKed the newest snapshot for every type",
            ["node"],
            {(self._node(n.node_id),): float(n.synced) for n in connected},
        )
        snapshot = status.get("snapshot", {})
        yield gauge(
            "junction_xds_snapshot_resources",
            "Resources in the newest snapshot, by type",
            ["type"],
            {(t,): n for t, n in snapshot.get("resources", {}).items()},
        )
        yield counter("junction_xds_publishes", "Snapshots handed to the xDS streams", [],
                      {(): snapshot.get("publishes", 0)})  # fmt: skip
        yield from _config_families(status)


def _config_families(status: dict[str, Any]) -> Iterator[Metric]:
    config = status.get("config", {})
    yield counter(
        "junction_config_accepted",
        "Config documents accepted, by origin (file path or consul:KEY)",
        ["origin"],
        {(o,): n for o, n in config.get("accepted", {}).items()},
    )
    yield counter(
        "junction_config_rejected",
        "Config documents rejected (the last good one kept serving), by origin",
        ["origin"],
        {(o,): n for o, n in config.get("rejected", {}).items()},
    )
    sources = status.get("sources", {})
    yield gauge(
        "junction_source_up",
        "1 while a source (config file, instances file, Consul) answers",
        ["origin"],
        {(o,): float(s.get("ok", False)) for o, s in sources.items()},
    )
    yield counter(
        "junction_source_errors",
        "Errors reading a source (each retried with backoff)",
        ["origin"],
        {(o,): s.get("errors", 0) for o, s in sources.items()},
    )
    instances = status.get("instances", {})
    yield gauge(
        "junction_catalog_instances",
        "Instances in the catalog, by service and Envoy health status",
        ["service", "health"],
        {
            (service, health): n
            for service, info in instances.items()
            for health, n in info.get("by_health", {}).items()
        },
    )
