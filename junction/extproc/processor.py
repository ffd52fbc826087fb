"""What both transports share: the current decision table, the counters, and a cache of
encoded answers per :class:`~junction.extproc.table.Decision`.

A table compiles each distinct decision once, so its encoded form (JSON for Envoy's
``http_service``, protobuf for gRPC) is built on first use and reused until the table is
swapped. Decisions carrying a fresh sticky cookie are one-offs and are not cached.
"""

from __future__ import annotations

import abc
from bisect import bisect_left
from time import perf_counter
from typing import Generic, TypeVar

from junction.extproc.counters import ANSWER_BUCKETS, AnswerTimes, Counters
from junction.extproc.table import Decision, DecisionTable

__all__ = ["Processor"]

W = TypeVar("W")
R = TypeVar("R")


class Processor(abc.ABC, Generic[R, W]):
    """One worker's decision state for one transport; ``R`` is the request type the
    transport hands over, ``W`` the encoded answer type."""

    def __init__(
        self,
        counters: Counters,
        table: DecisionTable | None = None,
        *,
        times: AnswerTimes | None = None,
    ) -> None:
        self.counters = counters
        self.table: DecisionTable | None = table
        self.times = times
        self._encoded: dict[Decision, W] = {}

    def respond(self, request: R) -> W:
        """:meth:`handle`, and one answer in ``times.every`` timed into :attr:`times` (the
        time-to-answer histogram: parse, decide and encode, the part of a decision this
        service controls). :meth:`AnswerTimes.observe` is inlined: this runs per request."""
        times = self.times
        if times is None:
            return self.handle(request)
        times.countdown -= 1
        if times.countdown:
            return self.handle(request)
        times.countdown = times.every
        started = perf_counter()
        answer = self.handle(request)
        elapsed = perf_counter() - started
        times.counts[bisect_left(ANSWER_BUCKETS, elapsed)] += 1
        times.total += elapsed
        return answer

    @abc.abstractmethod
    def handle(self, request: R) -> W:
        """The encoded answer to one request message."""

    def set_table(self, table: DecisionTable) -> None:
        """Swap in a new table (atomically: one attribute store per field, on the loop)."""
        self._encoded = {}
        self.table = table

    def answer(self, decision: Decision) -> W:
        """The encoded answer for ``decision``, from the cache when it is a compiled one."""
        found = self._encoded.get(decision)
        if found is not None:
            return found
        encoded = self.encode(decision)
        if decision.set_cookie is None:
            self._encoded[decision] = encoded
        return encoded

    @abc.abstractmethod
    def encode(self, decision: Decision) -> W:
        """``decision`` as this transport's ``ProcessingResponse``."""
