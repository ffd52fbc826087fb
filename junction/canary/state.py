"""The stored state of one service's canary, and the events that explain it.

A :class:`CanaryState` is what the controller writes to the state store and what the xDS
publisher and the decision service apply: the candidate's weight and the ramp's phase. It
also carries the last :data:`MAX_EVENTS` decisions with their evidence, so every replica
can serve the history on ``/canary`` without sharing anything but the store.

JSON form (the value of ``junction-state/canary/<service>`` in Consul KV, or of
``<state-dir>/<service>.json``)::

    {"service": "web-api", "version": "go", "baseline": "web-api-perl",
     "candidate": "web-api-go", "weight": 10, "phase": "ramping",
     "step_started": 1767225600.0, "updated": 1767225600.0, "reason": "...",
     "checked": 0.0, "events": [{"at": ..., "action": "promote", ...}]}
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from junction.canary.errors import StateFormatError
from junction.canary.evidence import EvidenceFormatError
from junction.canary.monitor import RampStats

__all__ = ["MAX_EVENTS", "CanaryEvent", "CanaryState", "Phase"]

#: Events kept in the stored state (older ones are only in the events log).
MAX_EVENTS = 50


class Phase(enum.StrEnum):
    RAMPING = "ramping"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class CanaryEvent:
    """One decision or command. ``evidence`` (controller decisions): the window
    (``start``, ``end``), both sides' figures, the entries lost, and the thresholds."""

    at: float
    service: str
    action: str
    from_weight: int
    to_weight: int
    reason: str
    by: str = "controller"
    evidence: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "service": self.service,
            "action": self.action,
            "from_weight": self.from_weight,
            "to_weight": self.to_weight,
            "reason": self.reason,
            "by": self.by,
            "evidence": self.evidence,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CanaryEvent:
        return cls(
            at=float(data["at"]),
            service=str(data["service"]),
            action=str(data["action"]),
            from_weight=int(data["from_weight"]),
            to_weight=int(data["to_weight"]),
            reason=str(data.get("reason", "")),
            by=str(data.get("by", "controller")),
            evidence=data.get("evidence"),
        )


@dataclass(frozen=True, slots=True)
class CanaryState:
    """One service's canary. ``weight``: the candidate's percent of split traffic.

    ``step_started``: when the current step's evidence window began (a promotion, a
    resume, or evidence found incomplete). ``checked``: when the last inconclusive event
    was recorded (they are recorded at most once per step interval).
    """

    service: str
    version: str
    baseline: str
    candidate: str
    weight: int
    phase: Phase
    step_started: float
    updated: float
    reason: str = ""
    checked: float = 0.0
    events: tuple[CanaryEvent, ...] = field(default=())
    #: The latency thresholds (ms, snapped to the windows' bucket edges) fixed when the
    #: current step started; every replica counts "slow" requests against these. Empty
    #: until the controller has fixed them.
    thresholds_ms: tuple[float, ...] = ()
    #: The running anytime-valid tests (:class:`~junction.canary.monitor.RampStats`), None
    #: before the first tick is judged. Not part of equality: watchers of the store (the
    #: publisher) react to weights and phases, not to every judged tick.
    stats: RampStats | None = field(default=None, compare=False)

    def evolve(self, event: CanaryEvent | None = None, **changes: Any) -> CanaryState:
        """A copy with ``changes``, ``updated`` set, and ``event`` appended (bounded)."""
        events = self.events
        if event is not None:
            events = (*events, event)[-MAX_EVENTS:]
            changes.setdefault("updated", event.at)
        return replace(self, events=events, **changes)

    def with_stats(self, stats: RampStats | None) -> CanaryState:
        """A copy with other tests (the controller's per-tick path: cheaper than
        :func:`dataclasses.replace`)."""
        return CanaryState(
            self.service, self.version, self.baseline, self.candidate, self.weight,
            self.phase, self.step_started, self.updated, self.reason, self.checked,
            self.events, self.thresholds_ms, stats,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "version": self.version,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "weight": self.weight,
            "phase": self.phase.value,
            "step_started": self.step_started,
            "updated": self.updated,
            "reason": self.reason,
            "checked": self.checked,
            "thresholds_ms": list(self.thresholds_ms),
            "stats": None if self.stats is None else self.stats.to_json(),
            "events": [e.to_json() for e in self.events],
        }

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> CanaryState:
        """Parse the JSON form; :class:`StateFormatError` names what is wrong."""
        if not isinstance(data, dict):
            raise StateFormatError(f"expected a JSON object, got {type(data).__name__}")
        try:
            weight = int(data["weight"])
            if not 0 <= weight <= 100:
                raise ValueError(f"weight {weight} is not 0..100")
            return cls(
                service=str(data["service"]),
                version=str(data["version"]),
                baseline=str(data["baseline"]),
                candidate=str(data["candidate"]),
                weight=weight,
                phase=Phase(data["phase"]),
                step_started=float(data["step_started"]),
                updated=float(data["updated"]),
                reason=str(data.get("reason", "")),
                checked=float(data.get("checked", 0.0)),
                thresholds_ms=tuple(float(x) for x in data.get("thresholds_ms") or ()),
                stats=RampStats.from_json(data["stats"]) if data.get("stats") else None,
                events=tuple(CanaryEvent.from_json(e) for e in data.get("events") or ()),
            )
        except KeyError as exc:
            raise StateFormatError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, EvidenceFormatError) as exc:
            raise StateFormatError(str(exc)) from None

    @classmethod
    def loads(cls, raw: bytes | str) -> CanaryState:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StateFormatError(f"not JSON: {exc}") from None
        return cls.from_json(data)
