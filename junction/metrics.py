"""Prometheus metrics for every Junction process (``GET /metrics``).

Each package owns the metrics of its state (``junction.xds.metrics``, ``junction.als.metrics``,
``junction.canary.metrics``, ``junction.extproc.metrics``); this bottom-layer module holds
what they share. Each process builds one :class:`prometheus_client.CollectorRegistry`
(never the global default, so tests can run several processes' worth in one interpreter)
and serves it with :func:`add_metrics_route`.

Two kinds of metrics, chosen so that nothing is counted twice and the hot paths pay nothing:

- **Read at scrape time** (custom collectors): counters and gauges the services already keep
  for ``/status``, ``/als`` and ``/stats`` are turned into metric families when Prometheus
  scrapes. ``/status`` and ``/metrics`` therefore always agree, and the request paths (the
  decision service, the access-log receiver) do no extra work for metrics.
- **Observed on events** (histograms and labelled counters): push-to-ACK latency, ACKs and
  NACKs per node, publish durations. These come from control-plane events that happen a few
  times per config change, never per proxied request.

Naming follows Prometheus conventions (https://prometheus.io/docs/practices/naming/): a
``junction_`` prefix, ``_total`` on counters, base units (seconds, bytes). Labels have
bounded cardinality: type, service, version, kind, origin come from the config; node ids
come from clients, so :class:`BoundedLabel` caps how many distinct values a label may take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = [
    "OTHER",
    "BoundedLabel",
    "add_metrics_route",
    "counter",
    "gauge",
    "metrics_route",
]


#: The label value that stands for every value past a label's bound.
OTHER = "_other"


class BoundedLabel:
    """Keeps at most ``limit`` distinct values of one label; later ones become ``_other``.

    For labels whose values come from outside (xDS node ids): a client that connects with a
    new random node id a thousand times must not create a thousand time series. The first
    ``limit`` values seen keep their own series for the life of the process (a series
    must not vanish and come back, or rates over it break).
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return OTHER


def counter(
    name: str, documentation: str, labels: Iterable[str], samples: Mapping[tuple[str, ...], float]
) -> CounterMetricFamily:
    """A counter family (``name`` without ``_total``) with one sample per label tuple."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for values, value in sorted(samples.items()):
        family.add_metric(list(values), value)
    return family


def gauge(
    name: str, documentation: str, labels: Iterable[str], samples: Mapping[tuple[str, ...], float]
) -> GaugeMetricFamily:
    """A gauge family with one sample per label tuple."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for values, value in sorted(samples.items()):
        family.add_metric(list(values), value)
    return family


def metrics_route(registry: CollectorRegistry) -> Callable[[web.Application], None]:
    """A route adder (as :class:`junction.status.StatusServer` takes them) for ``/metrics``."""

    def add(app: web.Application) -> None:
        add_metrics_route(app, registry)

    return add


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    async def metrics(request: web.Request) -> web.Response:
        # Collectors read in-memory state only (no I/O), so rendering on the loop is cheap.
        body = generate_latest(registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics)
