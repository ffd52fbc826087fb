"""The evidence of a canary step: counts per tick per side, and nothing else (pure, no I/O).

This is the contract between whoever counts (the windows of one receiver, the access-log
replay, every replica of a fleet) and whoever decides (:func:`junction.canary.step.step`):

- :class:`SideCounts`: one side's requests, errors (5xx, no response, or reset) and, per
  latency threshold ``i`` of the step, ``slow[i]``: requests slower than that threshold;
- :class:`TickCounts`: both sides' counts in one tick. A tick is
  ``floor(end / tick_seconds)`` where ``end = t + ms`` is the request's end on Envoy's own
  clock (the log record's ``start_time`` plus its duration): that is when its outcome became
  known, so a tick is complete as soon as every Envoy has flushed its logs (about a second),
  and a slow or timed-out request is never left out of a tick that was already judged. Being
  the records' own timestamps, ticks of different replicas align;
- :class:`StepEvidence`: the ticks of the current step (sorted), the latency thresholds they
  were counted against, and the log entries known lost meanwhile.

Merging is exact: the e-processes of :mod:`junction.canary.sequential` only read per-tick
sums, so ``a.merge(b)`` of two replicas' evidence decides the same as one receiver that saw
both replicas' logs. The JSON form holds counts only: its size is bounded by the number of
ticks, never by the traffic.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LATENCY_BUCKET_GROWTH",
    "EvidenceFormatError",
    "SideCounts",
    "StepEvidence",
    "TickCounts",
    "bucket_edge",
    "edge_bucket",
    "latency_bucket",
    "snap_threshold",
]


#: Latency histogram buckets grow by 2 %: bucket ``k`` holds durations in
#: ``(g^(k-1), g^k]`` ms. Canary thresholds are snapped to bucket edges, so "slower than the
#: threshold" is an exact count that sums across replicas.
LATENCY_BUCKET_GROWTH = 1.02
_LOG_GROWTH = math.log(LATENCY_BUCKET_GROWTH)
_MIN_MS = 0.001


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a duration in ms (durations under 1 us share one)."""
    return math.ceil(math.log(max(ms, _MIN_MS)) / _LOG_GROWTH - 1e-9)


def bucket_edge(bucket: int) -> float:
    """The upper edge (ms) of ``bucket``."""
    return float(LATENCY_BUCKET_GROWTH**bucket)


def snap_threshold(ms: float) -> float:
    """``ms`` rounded up to a bucket edge: the form thresholds are stored and shared in."""
    return bucket_edge(latency_bucket(ms))


def edge_bucket(edge_ms: float) -> int:
    """The bucket whose upper edge is ``edge_ms`` (a snapped threshold, e.g. read from JSON)."""
    return round(math.log(max(edge_ms, _MIN_MS)) / _LOG_GROWTH)


class EvidenceFormatError(ValueError):
    """Evidence that cannot be read or merged; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class SideCounts:
    """One side's outcomes in one tick. ``slow[i]``: requests slower than threshold ``i``."""

    requests: int = 0
    errors: int = 0
    slow: tuple[int, ...] = ()

    def __add__(self, other: SideCounts) -> SideCounts:
        if len(self.slow) == len(other.slow):  # the usual case, kept cheap (per tick)
            return SideCounts(
                self.requests + other.requests,
                self.errors + other.errors,
                tuple(map(operator.add, self.slow, other.slow)),
            )
        # Empty counts (no thresholds yet) add to anything.
        if not self.requests and not self.slow:
            return other
        if not other.requests and not other.slow:
            return self
        raise EvidenceFormatError(
            f"cannot add counts of {len(self.slow)} and {len(other.slow)} latency thresholds"
        )

    def to_json(self) -> list[Any]:
        """``[requests, errors, [slow...]]`` (compact: a step holds one per tick and side)."""
        return [self.requests, self.errors, list(self.slow)]

    @classmethod
    def from_json(cls, data: Any) -> SideCounts:
        try:
            requests, errors, slow = data
            out = cls(int(requests), int(errors), tuple(int(s) for s in slow))
        except (TypeError, ValueError) as exc:
            raise EvidenceFormatError(f"side counts {data!r}: {exc}") from None
        if out.requests < 0 or not 0 <= out.errors <= out.requests:
            raise EvidenceFormatError(f"side counts {data!r}: need 0 <= errors <= requests")
        if any(not 0 <= s <= out.requests for s in out.slow):
            raise EvidenceFormatError(f"side counts {data!r}: need 0 <= slow <= requests")
        return out


@dataclass(frozen=True, slots=True)
class TickCounts:
    """Both sides' counts in tick ``tick`` (``floor(end / tick_seconds)``)."""

    tick: int
    baseline: SideCounts
    candidate: SideCounts

    def __add__(self, other: TickCounts) -> TickCounts:
        if self.tick != other.tick:
            raise EvidenceFormatError(f"cannot add tick {self.tick} and tick {other.tick}")
        return TickCounts(
            self.tick, self.baseline + other.baseline, self.candidate + other.candidate
        )

    def to_json(self) -> list[Any]:
        return [self.tick, self.baseline.to_json(), self.candidate.to_json()]

    @classmethod
    def from_json(cls, data: Any) -> TickCounts:
        try:
            tick, baseline, candidate = data
            return cls(int(tick), SideCounts.from_json(baseline), SideCounts.from_json(candidate))
        except (TypeError, ValueError) as exc:
            raise EvidenceFormatError(f"tick {data!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class StepEvidence:
    """The evidence of the current step (or of its ticks not yet judged).

    ``thresholds_ms``: the latency thresholds fixed at the step's start (every replica
    counts against the same ones; :attr:`junction.canary.state.CanaryState.thresholds_ms`).
    ``ticks``: sorted by tick, at most one per tick. ``missing``: log entries known lost
    (Envoy's or a receiver's drops) in the same time, of all services (drops are not
    attributable to a cluster).
    """

    tick_seconds: float
    thresholds_ms: tuple[float, ...] = ()
    ticks: tuple[TickCounts, ...] = field(default=())
    missing: int = 0

    def __post_init__(self) -> None:
        if self.tick_seconds <= 0:
            raise EvidenceFormatError(f"tick_seconds must be > 0, got {self.tick_seconds}")
        n = len(self.thresholds_ms)
        previous: int | None = None
        for t in self.ticks:
            if previous is not None and t.tick <= previous:
                raise EvidenceFormatError("ticks must be sorted, one per tick")
            previous = t.tick
            for side in (t.baseline, t.candidate):
                if len(side.slow) != n and (side.requests or side.slow):
                    raise EvidenceFormatError(
                        f"tick {t.tick}: {len(side.slow)} slow counts for {n} thresholds"
                    )

    @classmethod
    def of(
        cls,
        tick_seconds: float,
        thresholds_ms: Iterable[float],
        ticks: Iterable[TickCounts],
        missing: int = 0,
    ) -> StepEvidence:
        """Evidence from ticks in any order, summing ticks that repeat."""
        by_tick: dict[int, TickCounts] = {}
        for t in ticks:
            seen = by_tick.get(t.tick)
            by_tick[t.tick] = t if seen is None else seen + t
        return cls(
            tick_seconds,
            tuple(float(x) for x in thresholds_ms),
            tuple(by_tick[k] for k in sorted(by_tick)),
            missing,
        )

    def merge(self, other: StepEvidence) -> StepEvidence:
        """The sum of two replicas' evidence, per tick (exact)."""
        if self.tick_seconds != other.tick_seconds:
            raise EvidenceFormatError(
                f"cannot merge ticks of {self.tick_seconds}s and {other.tick_seconds}s"
            )
        if self.thresholds_ms != other.thresholds_ms:
            raise EvidenceFormatError(
                f"cannot merge evidence counted against latency thresholds"
                f" {list(self.thresholds_ms)} and {list(other.thresholds_ms)} ms"
            )
        return StepEvidence.of(
            self.tick_seconds,
            self.thresholds_ms,
            (*self.ticks, *other.ticks),
            self.missing + other.missing,
        )

    def after(self, tick: int) -> StepEvidence:
        """Only the ticks after ``tick`` (the ones not yet judged)."""
        return StepEvidence(
            self.tick_seconds,
            self.thresholds_ms,
            tuple(t for t in self.ticks if t.tick > tick),
            self.missing,
        )

    def totals(self) -> tuple[SideCounts, SideCounts]:
        """(baseline, candidate) summed over every tick."""
        zero = SideCounts(0, 0, (0,) * len(self.thresholds_ms))
        base, cand = zero, zero
        for t in self.ticks:
            base, cand = base + t.baseline, cand + t.candidate
        return base, cand

    def to_json(self) -> dict[str, Any]:
        return {
            "tick_seconds": self.tick_seconds,
            "thresholds_ms": list(self.thresholds_ms),
            "missing": self.missing,
            "ticks": [t.to_json() for t in self.ticks],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepEvidence:
        """Parse :meth:`to_json`'s form; :class:`EvidenceFormatError` names what is wrong."""
        if not isinstance(data, Mapping):
            raise EvidenceFormatError(f"expected a JSON object, got {type(data).__name__}")
        try:
            tick_seconds = float(data["tick_seconds"])
            thresholds = tuple(float(x) for x in data.get("thresholds_ms") or ())
            missing = int(data.get("missing", 0))
            ticks = [TickCounts.from_json(t) for t in data.get("ticks") or ()]
        except KeyError as exc:
            raise EvidenceFormatError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise EvidenceFormatError(str(exc)) from None
        if missing < 0:
            raise EvidenceFormatError(f"missing must be >= 0, got {missing}")
        return cls.of(tick_seconds, thresholds, ticks, missing)
