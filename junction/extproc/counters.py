"""Counters of the decision service: what happened, counted instead of logged.

The hot path never logs (a log line per request would cost more than the decision);
it increments plain attributes of a :class:`Counters`. Each worker process owns one and
copies it into its row of a shared-memory array now and then (:class:`SharedCounters`),
where the supervisor sums the rows for ``GET /stats``.
"""

from __future__ import annotations

import bisect
import ctypes
import math
import multiprocessing.sharedctypes
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "ANSWER_BUCKETS",
    "COUNTER_NAMES",
    "ROW_NAMES",
    "AnswerTimes",
    "Counters",
    "SharedCounters",
    "answer_json",
]


@dataclass(slots=True)
class Counters:
    """One process's counters, incremented in place (``c.requests += 1``)."""

    # decisions
    requests: int = 0
    decided_pin: int = 0
    decided_experiment: int = 0
    decided_canary: int = 0
    decided_route: int = 0
    not_routed: int = 0
    # pins refused or degraded
    pin_untrusted: int = 0
    pin_unknown_version: int = 0
    pin_ambiguous: int = 0
    pin_bad_signature: int = 0
    pin_expired: int = 0
    pin_fallback_default: int = 0
    pin_rejected: int = 0
    # keys and cookies
    cookie_malformed: int = 0
    key_ambiguous: int = 0
    key_too_long: int = 0
    key_random: int = 0
    sticky_cookie_issued: int = 0
    sticky_cookie_invalid: int = 0
    # transports: HTTP answers other than 200, messages we did not expect, gRPC streams
    http_bad_request: int = 0
    http_too_large: int = 0
    http_timeout: int = 0
    http_not_found: int = 0
    message_unexpected: int = 0
    grpc_streams: int = 0
    internal_error: int = 0


#: Every counter, in a fixed order.
COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Counters))

#: Upper bounds (seconds) of the time-to-answer histogram. A decision takes a few to tens
#: of microseconds of CPU; the top buckets catch a stalled event loop.
ANSWER_BUCKETS: tuple[float, ...] = (
    5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1,
)  # fmt: skip
_ANSWER_COLUMNS = (*(f"answer_bucket_{i}" for i in range(len(ANSWER_BUCKETS) + 1)), "answer_ns")

#: The layout of a shared-memory row: the counters, then the histogram's buckets (the last
#: one is +Inf) and its sum in nanoseconds.
ROW_NAMES: tuple[str, ...] = COUNTER_NAMES + _ANSWER_COLUMNS


class AnswerTimes:
    """One worker's time-to-answer histogram: per-bucket counts and the sum.

    Sampled: one answer in :attr:`every` is timed (the first, then every ``every``-th).
    Reading the clock twice and filing the result costs about 0.4 us, some 5 % of a
    decision's CPU; a uniform sample of the answers estimates the same quantiles for a
    sixteenth of that. The histogram's ``_count`` is therefore the number of *timed*
    answers; rates of decisions come from ``junction_extproc_requests_total``.
    """

    __slots__ = ("countdown", "counts", "every", "total")

    def __init__(self, every: int = 16) -> None:
        self.counts = [0] * (len(ANSWER_BUCKETS) + 1)
        self.total = 0.0
        self.every = every
        self.countdown = 1

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, Prometheus' "le" (less or equal).
        self.counts[bisect.bisect_left(ANSWER_BUCKETS, seconds)] += 1
        self.total += seconds

    def columns(self) -> tuple[int, ...]:
        return (*self.counts, int(self.total * 1e9))


def answer_json(row: dict[str, int]) -> dict[str, Any]:
    """The histogram in a summed row, as plain data: cumulative counts per ``le`` bound."""
    cumulative, out = 0, {}
    for i, bound in enumerate((*ANSWER_BUCKETS, math.inf)):
        cumulative += row[f"answer_bucket_{i}"]
        out["+Inf" if bound == math.inf else repr(bound)] = cumulative
    return {"buckets": out, "count": cumulative, "sum": row["answer_ns"] / 1e9}


class SharedCounters:
    """Rows of counters in shared memory: row ``i`` is written only by worker ``i``."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._width = len(ROW_NAMES)
        # lock=False: each row has one writer; a reader may see a row mid-copy, which for
        # monotonically increasing counters only means a slightly older value.
        self._array: Any = multiprocessing.sharedctypes.RawArray(
            ctypes.c_uint64, workers * self._width
        )

    def publish(self, worker: int, counters: Counters, times: AnswerTimes | None = None) -> None:
        base = worker * self._width
        array = self._array
        for i, name in enumerate(COUNTER_NAMES):
            array[base + i] = getattr(counters, name)
        if times is not None:
            base += len(COUNTER_NAMES)
            for i, value in enumerate(times.columns()):
                array[base + i] = value

    def clear(self, worker: int) -> None:
        base = worker * self._width
        for i in range(self._width):
            self._array[base + i] = 0

    def row(self, worker: int) -> dict[str, int]:
        base = worker * self._width
        return {name: int(self._array[base + i]) for i, name in enumerate(ROW_NAMES)}

    def total(self) -> dict[str, int]:
        out = dict.fromkeys(ROW_NAMES, 0)
        for w in range(self.workers):
            for name, value in self.row(w).items():
                out[name] += value
        return out
