"""Decision-service metrics, summed over the workers, read at scrape time.

Workers count in plain attributes on the hot path (:mod:`junction.extproc.counters`) and
copy them to shared memory a few times a second; the supervisor already sums the rows for
``GET /stats`` (restarted workers' counts included). This collector turns that sum into
labelled families, so a decision costs nothing extra for metrics and ``/stats`` and
``/metrics`` agree. Labels come from a fixed list of counter names, never from requests: a
hostile header or path cannot add a series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from junction.metrics import counter, gauge

__all__ = ["ExtprocMetrics"]

#: counter -> (family, label value). Every counter of junction.extproc.counters.Counters
#: but ``requests`` and ``grpc_streams`` belongs to exactly one family.
FAMILIES: dict[str, tuple[str, str]] = {
    "decided_pin": ("decisions", "pin"),
    "decided_experiment": ("decisions", "experiment"),
    "decided_canary": ("decisions", "canary"),
    "decided_route": ("decisions", "route"),
    "not_routed": ("decisions", "not_routed"),
    "pin_fallback_default": ("decisions", "pin_fallback_default"),
    "pin_rejected": ("decisions", "pin_rejected"),
    "pin_untrusted": ("pins_refused", "untrusted"),
    "pin_unknown_version": ("pins_refused", "unknown_version"),
    "pin_ambiguous": ("pins_refused", "ambiguous"),
    "pin_bad_signature": ("pins_refused", "bad_signature"),
    "pin_expired": ("pins_refused", "expired"),
    "cookie_malformed": ("malformed", "cookie"),
    "key_ambiguous": ("malformed", "key_ambiguous"),
    "key_too_long": ("malformed", "key_too_long"),
    "sticky_cookie_invalid": ("malformed", "sticky_cookie"),
    "http_bad_request": ("malformed", "http_bad_request"),
    "http_too_large": ("malformed", "http_too_large"),
    "http_timeout": ("malformed", "http_timeout"),
    "http_not_found": ("malformed", "http_not_found"),
    "message_unexpected": ("malformed", "message_unexpected"),
    "internal_error": ("malformed", "internal_error"),
    "key_random": ("keys", "random"),
    "sticky_cookie_issued": ("keys", "sticky_cookie_issued"),
}

_HELP = {
    "decisions": ("kind", "Decisions by kind (pin, experiment, canary, route, ...)"),
    "pins_refused": ("reason", "Pins ignored, by reason"),
    "malformed": ("what", "Malformed or refused inputs, by what was wrong"),
    "keys": ("kind", "Experiment/canary keys: drawn at random (no key), sticky cookies issued"),
}


class ExtprocMetrics(Collector):
    """``status`` gives :meth:`junction.extproc.service.ExtProcService.status`'s data."""

    def __init__(self, registry: CollectorRegistry, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        counts: dict[str, int] = status.get("counters", {})
        families: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _HELP}
        for name, value in counts.items():
            family = FAMILIES.get(name)
            if family is not None:
                families[family[0]][(family[1],)] = value
        for name, samples in families.items():
            label, help_ = _HELP[name]
            yield counter(f"junction_extproc_{name}", help_, [label], samples)
        yield counter("junction_extproc_requests", "Requests decided (every transport)", [],
                      {(): counts.get("requests", 0)})  # fmt: skip
        yield counter("junction_extproc_grpc_streams", "ext_proc gRPC streams opened", [],
                      {(): counts.get("grpc_streams", 0)})  # fmt: skip
        workers = status.get("workers", [])
        yield gauge("junction_extproc_workers", "Worker processes alive", [],
                    {(): sum(1 for w in workers if w.get("alive"))})  # fmt: skip
        yield counter(
            "junction_extproc_worker_restarts",
            "Workers restarted after dying",
            [],
            {(): sum(w.get("restarts", 0) for w in workers)},
        )
        answer = status.get("answer_seconds")
        if answer is not None:
            histogram = HistogramMetricFamily(
                "junction_extproc_answer_seconds",
                "Time to answer one request message (parse, decide, encode), summed over"
                " workers; one answer in 16 is timed",
            )
            histogram.add_metric([], list(answer["buckets"].items()), answer["sum"])
            yield histogram
        yield gauge("junction_extproc_ready", "1 when every worker runs the latest table", [],
                    {(): float(bool(status.get("ready")))})  # fmt: skip
