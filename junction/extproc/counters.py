"""Counters of the decision service: what happened, counted instead of logged.

The hot path never logs (a log line per request would cost more than the decision);
it increments plain attributes of a :class:`Counters`. Each worker process owns one and
copies it into its row of a shared-memory array now and then (:class:`SharedCounters`),
where the supervisor sums the rows for ``GET /stats``.
"""

from __future__ import annotations

import ctypes
import multiprocessing.sharedctypes
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["COUNTER_NAMES", "Counters", "SharedCounters"]


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


#: Every counter, in a fixed order (the layout of a shared-memory row).
COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Counters))


class SharedCounters:
    """Rows of counters in shared memory: row ``i`` is written only by worker ``i``."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._width = len(COUNTER_NAMES)
        # lock=False: each row has one writer; a reader may see a row mid-copy, which for
        # monotonically increasing counters only means a slightly older value.
        self._array: Any = multiprocessing.sharedctypes.RawArray(
            ctypes.c_uint64, workers * self._width
        )

    def publish(self, worker: int, counters: Counters) -> None:
        base = worker * self._width
        array = self._array
        for i, name in enumerate(COUNTER_NAMES):
            array[base + i] = getattr(counters, name)

    def clear(self, worker: int) -> None:
        base = worker * self._width
        for i in range(self._width):
            self._array[base + i] = 0

    def row(self, worker: int) -> dict[str, int]:
        base = worker * self._width
        return {name: int(self._array[base + i]) for i, name in enumerate(COUNTER_NAMES)}

    def total(self) -> dict[str, int]:
        out = dict.fromkeys(COUNTER_NAMES, 0)
        for w in range(self.workers):
            for name, value in self.row(w).items():
                out[name] += value
        return out
