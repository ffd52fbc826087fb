"""Sliding windows of outcomes, per (route, cluster, experiment arm, decision source).

Time is cut into slots (``slot_seconds``, 1 s by default); each slot keeps, per key, the
request count, 5xx, resets, failures (5xx, no response, or reset) and a DDSketch of
latencies. A window is any run of slots: :meth:`Windows.figures` merges the slots that
overlap ``[start, end]``, so the controller can ask for "everything since this step
began" and the status page for "the last 60 s" from the same data. Slots older than the
horizon are dropped, so memory is bounded by horizon / slot x active keys (a sketch of a
slot's latencies is about 5 KB).

Latency quantiles come from DDSketch (DataDog's ``ddsketch`` package; Masson, Rim and Lee,
"DDSketch: a fast and fully-mergeable quantile sketch with relative-error guarantees",
VLDB 2019): every quantile is within ``relative_accuracy`` (1 %) of the true value, sketches
of two slots merge exactly, and adding a value is O(1), none of which a sorted list gives.

Each slot and key also keeps an exact latency histogram in 2 % buckets (a dict, about as
large as the sketch): the canary counts "slower than a threshold" from it per slot, against
thresholds known only when a step starts (:meth:`Windows.step_evidence`,
:mod:`junction.canary.evidence`); counts of histograms add up exactly across replicas,
which a sketch's interpolated quantiles would not.

A request is placed by the time it *ended* (start + duration, Envoy's clock): that is when
its outcome became known, and it keeps a 10-minute download from landing in a slot that is
long gone. Ends in the future (clock skew between hosts) are clamped to now; ends older
than the horizon are counted in :attr:`Windows.late` and skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ddsketch import DDSketch

from junction.als.record import SOURCE_SPLIT, LogRecord, classify
from junction.canary.evidence import (
    SideCounts,
    StepEvidence,
    TickCounts,
    bucket_edge,
    edge_bucket,
    latency_bucket,
)

__all__ = ["Figures", "WindowKey", "Windows"]


class WindowKey(NamedTuple):
    route: str
    cluster: str
    #: ``experiment:arm``, or "" outside experiments.
    arm: str
    #: ``split`` (canary/weights chose the cluster), ``pin`` or ``exp`` (see record.py).
    source: str


class _Counts:
    __slots__ = (
        "buckets",
        "failures",
        "pending",
        "requests",
        "resets",
        "server_errors",
        "sketch",
        "slow_cache",
    )

    def __init__(self, relative_accuracy: float) -> None:
        self.requests = 0
        self.failures = 0
        self.server_errors = 0
        self.resets = 0
        self.sketch = DDSketch(relative_accuracy)
        #: Exact latency histogram (bucket -> count, :func:`latency_bucket`): the canary's
        #: slow counts against thresholds only known when a step starts.
        self.buckets: dict[int, int] = {}
        #: Latency buckets counted by :meth:`Windows.add_counts` but not yet in the sketch:
        #: folded in once, when the sketch is read (:meth:`quantile_sketch`).
        self.pending: dict[int, int] | None = None
        #: (edges, slow counts) of the last :meth:`slow_counts` (a slot is read at every
        #: tick until judged, with the same edges; any count added clears it).
        self.slow_cache: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def quantile_sketch(self) -> DDSketch:
        """The latency sketch, every request counted (readers use this, not ``sketch``)."""
        if self.pending:
            for b, n in self.pending.items():
                self.sketch.add(bucket_edge(b), n)
            self.pending = None
        return self.sketch

    def slow(self, edges: tuple[int, ...]) -> tuple[int, ...]:
        """Per bucket of ``edges``: the requests in buckets above it (slower than its upper
        edge). One pass over the histogram, whatever the number of edges."""
        order = sorted(range(len(edges)), key=edges.__getitem__)
        ascending = [edges[i] for i in order]
        counts = [0] * len(edges)
        for k, n in self.buckets.items():
            for j, edge in enumerate(ascending):
                if k <= edge:
                    break  # not above this edge, so not above any higher one
                counts[j] += n
        out = [0] * len(edges)
        for j, i in enumerate(order):
            out[i] = counts[j]
        return tuple(out)

    def slow_counts(self, edges: tuple[int, ...]) -> tuple[int, ...]:
        """:meth:`slow`, remembered until a count is added."""
        cached = self.slow_cache
        if cached is not None and cached[0] == edges:
            return cached[1]
        out = self.slow(edges)
        self.slow_cache = (edges, out)
        return out


@dataclass(frozen=True, slots=True)
class Figures:
    """Outcomes of one window. Quantiles in milliseconds, None without requests."""

    requests: int = 0
    failures: int = 0
    server_errors: int = 0
    resets: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    @property
    def error_rate(self) -> float | None:
        """Failures / requests (5xx, no response or reset); None without requests."""
        return self.failures / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "server_errors": self.server_errors,
            "resets": self.resets,
            "error_rate": self.error_rate,
            "p50_ms": self.p50,
            "p95_ms": self.p95,
            "p99_ms": self.p99,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figures:
        return cls(
            requests=int(data.get("requests", 0)),
            failures=int(data.get("failures", 0)),
            server_errors=int(data.get("server_errors", 0)),
            resets=int(data.get("resets", 0)),
            p50=data.get("p50_ms"),
            p95=data.get("p95_ms"),
            p99=data.get("p99_ms"),
        )


def _figures(parts: Iterable[_Counts], relative_accuracy: float) -> Figures:
    merged = DDSketch(relative_accuracy)
    requests = failures = server_errors = resets = 0
    for c in parts:
        requests += c.requests
        failures += c.failures
        server_errors += c.server_errors
        resets += c.resets
        merged.merge(c.quantile_sketch())
    if not requests:
        return Figures()
    return Figures(
        requests,
        failures,
        server_errors,
        resets,
        _q(merged, 0.50),
        _q(merged, 0.95),
        _q(merged, 0.99),
    )


def _q(sketch: DDSketch, q: float) -> float | None:
    value = sketch.get_quantile_value(q)
    return None if value is None else round(float(value), 3)


class Windows:
    """The slots; single-threaded (the receiver's worker adds, the controller reads)."""

    def __init__(
        self,
        *,
        slot_seconds: float = 1.0,
        horizon: float = 300.0,
        relative_accuracy: float = 0.01,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if slot_seconds <= 0 or horizon < slot_seconds:
            raise ValueError("need slot_seconds > 0 and horizon >= slot_seconds")
        self.slot_seconds = slot_seconds
        self.horizon = horizon
        self.relative_accuracy = relative_accuracy
        self._clock = clock
        self._slots: dict[int, dict[tuple[str, str, str, str], _Counts]] = {}
        self._missing: dict[int, int] = {}
        self._oldest = 0
        #: Records whose end was older than the horizon (not counted anywhere else).
        self.late = 0

    # ---- writing ----------------------------------------------------------------------

    def add(self, records: Iterable[LogRecord]) -> None:
        """Count ``records`` in the slots of their end times."""
        now = self._clock()
        oldest = now - self.horizon
        width = self.slot_seconds
        accuracy = self.relative_accuracy
        slots = self._slots
        for r in records:
            end = r.t + r.ms * 0.001
            if end > now:
                end = now
            elif end < oldest:
                self.late += 1
                continue
            index = int(end // width)
            bucket = slots.get(index)
            if bucket is None:
                bucket = self._open(index)
            source, arm = classify(r.decision)
            key = (r.route, r.cluster, arm, source)
            counts = bucket.get(key)
            if counts is None:
                counts = bucket[key] = _Counts(accuracy)
            counts.requests += 1
            if r.status >= 500 or r.status == 0 or r.reset:
                counts.failures += 1
                if r.status >= 500:
                    counts.server_errors += 1
                if r.reset:
                    counts.resets += 1
            counts.sketch.add(r.ms)
            b = latency_bucket(r.ms)
            counts.buckets[b] = counts.buckets.get(b, 0) + 1
            counts.slow_cache = None

    def add_counts(
        self,
        key: WindowKey,
        end: float,
        failures: int,
        latency_buckets: Mapping[int, int],
    ) -> None:
        """Count requests of one key that ended at ``end``, given as counts: ``failures`` of
        them failed (as 5xx), ``latency_buckets`` maps :func:`latency_bucket` to requests.

        For simulations that draw a tick's counts instead of its requests
        (:mod:`junction.canary.simulate`): the slot, the key, the requests, failures and
        slow counts are those :meth:`add` keeps for the same requests; the quantile sketch
        gets each bucket's upper edge (buckets are 2 % wide), once it is read (most
        simulated sketches never are: adding to them was most of a simulated tick's cost)."""
        now = self._clock()
        end = min(end, now)
        if end < now - self.horizon:
            self.late += sum(latency_buckets.values())
            return
        index = int(end // self.slot_seconds)
        slot = self._slots.get(index)
        if slot is None:
            slot = self._open(index)
        counts = slot.get(key)
        if counts is None:
            counts = slot[key] = _Counts(self.relative_accuracy)
        counts.slow_cache = None
        pending = counts.pending
        if pending is None:
            pending = counts.pending = {}
        buckets = counts.buckets
        for b, n in latency_buckets.items():
            if n:
                counts.requests += n
                buckets[b] = buckets.get(b, 0) + n
                pending[b] = pending.get(b, 0) + n
        counts.failures += failures
        counts.server_errors += failures

    def note_missing(self, entries: int, at: float | None = None) -> None:
        """Record ``entries`` log entries known lost (dropped by Envoy or the receiver)."""
        if entries <= 0:
            return
        index = int((self._clock() if at is None else at) // self.slot_seconds)
        self._missing[index] = self._missing.get(index, 0) + entries

    def _open(self, index: int) -> dict[tuple[str, str, str, str], _Counts]:
        bucket: dict[tuple[str, str, str, str], _Counts] = {}
        self._slots[index] = bucket
        floor = int((self._clock() - self.horizon) // self.slot_seconds)
        if floor > self._oldest:
            self._oldest = floor
            for old in [i for i in self._slots if i < floor]:
                del self._slots[old]
            for old in [i for i in self._missing if i < floor]:
                del self._missing[old]
        return bucket

    # ---- reading ----------------------------------------------------------------------

    def _indexes(self, start: float, end: float) -> range:
        return range(int(start // self.slot_seconds), int(end // self.slot_seconds) + 1)

    def figures(
        self,
        start: float,
        end: float,
        *,
        cluster: str | None = None,
        source: str | None = None,
        arm: str | None = None,
        route: str | None = None,
    ) -> Figures:
        """Merged outcomes of the slots overlapping ``[start, end]`` and matching the filters
        (None: any)."""
        parts = []
        for index in self._indexes(start, end):
            bucket = self._slots.get(index)
            if not bucket:
                continue
            for (k_route, k_cluster, k_arm, k_source), counts in bucket.items():
                if (
                    (cluster is None or k_cluster == cluster)
                    and (source is None or k_source == source)
                    and (arm is None or k_arm == arm)
                    and (route is None or k_route == route)
                ):
                    parts.append(counts)
        return _figures(parts, self.relative_accuracy)

    def canary_figures(self, cluster: str, start: float, end: float) -> Figures:
        """A canary side's figures: requests whose cluster the weights chose (no pins, no
        experiment arm with its own version)."""
        return self.figures(start, end, cluster=cluster, source=SOURCE_SPLIT)

    def canary_quantiles(
        self, cluster: str, start: float, end: float, quantiles: tuple[float, ...]
    ) -> tuple[float, ...] | None:
        """A canary side's latency quantiles (ms) over ``[start, end]``; None without
        requests. (The canary's latency thresholds: the baseline's before a step.)"""
        merged = DDSketch(self.relative_accuracy)
        for index in self._indexes(start, end):
            for (_, k_cluster, _, k_source), counts in (self._slots.get(index) or {}).items():
                if k_cluster == cluster and k_source == SOURCE_SPLIT:
                    merged.merge(counts.quantile_sketch())
        if not merged.count:
            return None
        return tuple(float(merged.get_quantile_value(q) or 0.0) for q in quantiles)

    def step_evidence(
        self,
        baseline: str,
        candidate: str,
        thresholds_ms: tuple[float, ...],
        since: float,
        now: float,
    ) -> StepEvidence:
        """A canary step's counts per tick (one tick per slot, by the requests' end times)
        over the slots overlapping ``[since, now]``: per side, the requests the weights
        routed (no pins, no experiment arms with their own version), their failures (5xx,
        no response, reset), and those slower than each threshold (snapped to a bucket edge,
        :func:`snap_threshold`). ``missing``: log entries known lost in the same slots."""
        edges = tuple(edge_bucket(t) for t in thresholds_ms)
        ticks: list[TickCounts] = []
        for index in self._indexes(since, now):
            bucket = self._slots.get(index)
            if not bucket:
                continue
            sides = {baseline: SideCounts(0, 0, (0,) * len(edges))}
            sides[candidate] = sides[baseline]
            for (_, k_cluster, _, k_source), c in bucket.items():
                if k_source != SOURCE_SPLIT or k_cluster not in sides:
                    continue
                sides[k_cluster] += SideCounts(c.requests, c.failures, c.slow_counts(edges))
            if sides[baseline].requests or sides[candidate].requests:
                ticks.append(TickCounts(index, sides[baseline], sides[candidate]))
        return StepEvidence(
            self.slot_seconds, tuple(thresholds_ms), tuple(ticks), self.missing(since, now)
        )

    def missing(self, start: float, end: float) -> int:
        """Log entries known lost in the slots overlapping ``[start, end]``."""
        return sum(self._missing.get(i, 0) for i in self._indexes(start, end))

    def keys(self, start: float, end: float) -> list[WindowKey]:
        """Every key with requests in ``[start, end]``, sorted."""
        found: set[tuple[str, str, str, str]] = set()
        for index in self._indexes(start, end):
            found.update(self._slots.get(index, ()))
        return [WindowKey(*k) for k in sorted(found)]

    def summary(self, window: float) -> list[dict[str, Any]]:
        """Per key, the figures of the last ``window`` seconds (for /als)."""
        end = self._clock()
        start = end - window
        return [
            {
                **key._asdict(),
                **self.figures(
                    start, end, route=key.route, cluster=key.cluster, arm=key.arm, source=key.source
                ).to_json(),
            }
            for key in self.keys(start, end)
        ]
