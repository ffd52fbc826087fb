"""Prometheus metrics for every Junction process (``GET /metrics``).

Each process builds one :class:`prometheus_client.CollectorRegistry` (never the global
default, so tests can run several processes' worth in one interpreter) and serves it with
:func:`junction.metrics.http.add_metrics_route`.

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

from junction.metrics.families import BoundedLabel

__all__ = ["BoundedLabel"]
