"""Between the gRPC read loop and the work: a byte-bounded queue with a counted drop policy.

The read loop (:mod:`junction.als.receiver`) only sizes, parses and offers each message;
:meth:`Pipeline.offer` never waits. When the queued messages already hold
``max_queue_bytes``, the new message is dropped and its entries counted
(``dropped_entries``) and recorded as missing data in the windows, so the canary controller
knows its figures are incomplete (it then holds instead of promoting). Memory is bounded
by ``max_queue_bytes`` (serialized size; parsed messages take a small multiple of that)
however many Envoys send.

The worker (:meth:`Pipeline.run`) flattens entries to records, counts them in the windows
and hands them to the sinks' thread. It yields to the event loop after every message, so
the readers keep draining their streams while it works.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from envoy.service.accesslog.v3 import als_pb2

from junction.als.decision_counts import DecisionCounts
from junction.als.record import records_from_entries
from junction.als.sinks import SinkRunner
from junction.als.windows import Windows

__all__ = ["Counters", "Pipeline"]

log = logging.getLogger("junction.als")


@dataclass
class Counters:
    """What the receiver saw; served on /als and read by the canary controller."""

    streams_opened: int = 0
    streams_active: int = 0
    messages: int = 0
    bytes: int = 0
    entries: int = 0
    #: TCP access-log entries (Junction only uses HTTP logs; they are ignored, counted).
    tcp_entries: int = 0
    #: Messages over the size limit, and messages that are not StreamAccessLogsMessage.
    rejected_oversized: int = 0
    rejected_malformed: int = 0
    #: Streams whose first message had no identifier (node unknown).
    no_identifier: int = 0
    #: Dropped because the queue was full (never processed).
    dropped_messages: int = 0
    dropped_entries: int = 0
    processed_entries: int = 0
    #: Messages whose processing raised (a bug; logged with its traceback).
    failed_messages: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Pipeline:
    """Offer parsed messages; run :meth:`run` as a task to process them."""

    def __init__(
        self,
        windows: Windows,
        sinks: SinkRunner | None = None,
        *,
        max_queue_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.windows = windows
        self.sinks = sinks or SinkRunner(())
        self.max_queue_bytes = max_queue_bytes
        self.counters = Counters()
        #: Decision tags and requests per cluster from the log: native decisions
        #: included (decision_counts).
        self.decisions = DecisionCounts()
        self._clock = clock
        self._queue: collections.deque[tuple[str, als_pb2.StreamAccessLogsMessage, int]] = (
            collections.deque()
        )
        self._queued_bytes = 0
        self._ready = asyncio.Event()
        #: Set whenever the queue runs empty (benchmarks and tests wait on it).
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def offer(self, node: str, message: als_pb2.StreamAccessLogsMessage, size: int) -> bool:
        """Queue one parsed message of ``size`` serialized bytes; False if it was dropped."""
        c = self.counters
        c.messages += 1
        c.bytes += size
        n = len(message.http_logs.log_entry)
        c.entries += n
        if message.HasField("tcp_logs"):
            c.tcp_entries += len(message.tcp_logs.log_entry)
        if not n:
            return True
        if self._queued_bytes + size > self.max_queue_bytes:
            c.dropped_messages += 1
            c.dropped_entries += n
            self.windows.note_missing(n)
            return False
        self._queue.append((node, message, size))
        self._queued_bytes += size
        self.idle.clear()
        self._ready.set()
        return True

    def process_one(self) -> bool:
        """Process the oldest queued message; False when the queue is empty."""
        if not self._queue:
            return False
        node, message, size = self._queue.popleft()
        self._queued_bytes -= size
        records = records_from_entries(message.http_logs.log_entry, node, self._clock())
        self.windows.add(records)
        self.decisions.add(records)
        self.sinks.submit(records)
        self.counters.processed_entries += len(records)
        return True

    async def run(self) -> None:
        """Process queued messages until cancelled. A message that breaks processing (a bug:
        parsed messages always flatten) is logged, counted and skipped, never fatal."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while True:
                try:
                    if not self.process_one():
                        break
                except Exception:
                    self.counters.failed_messages += 1
                    log.exception("access-log message could not be processed; skipped")
                await asyncio.sleep(0)  # let the read loops run between messages
            self.idle.set()

    def status(self) -> dict[str, Any]:
        return {
            **self.counters.to_json(),
            "queued_messages": len(self._queue),
            "queued_bytes": self._queued_bytes,
            "max_queue_bytes": self.max_queue_bytes,
            "late_entries": self.windows.late,
            "sinks": self.sinks.status(),
            "decisions": self.decisions.to_json(),
        }
