"""What both transports share: the current decision table, the counters, and a cache of
encoded answers per :class:`~junction.extproc.table.Decision`.

A table compiles each distinct decision once, so its encoded form (JSON for Envoy's
``http_service``, protobuf for gRPC) is built on first use and reused until the table is
swapped. Decisions carrying a fresh sticky cookie are one-offs and are not cached.
"""

from __future__ import annotations

import abc
from typing import Generic, TypeVar

from junction.extproc.counters import Counters
from junction.extproc.table import Decision, DecisionTable

__all__ = ["Processor"]

W = TypeVar("W")


class Processor(abc.ABC, Generic[W]):
    """One worker's decision state for one transport; ``W`` is the encoded answer type."""

    def __init__(self, counters: Counters, table: DecisionTable | None = None) -> None:
        self.counters = counters
        self.table: DecisionTable | None = table
        self._encoded: dict[Decision, W] = {}

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
