"""Small helpers shared by the collectors: bounded label values, families from plain data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["OTHER", "BoundedLabel", "counter", "gauge"]

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
