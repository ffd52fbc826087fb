"""One canary decision from the whole fleet's evidence: every replica publishes its counts to
Consul KV, the leader merges them (pure parts first, then the thin Consul adapter).

Each replica of the control plane sees only its own Envoy's access logs. Every
:data:`PUBLISH_INTERVAL` (1 s) it writes one KV value, ``<prefix><replica>``
(:data:`EVIDENCE_PREFIX`), holding, per ramping service, the counts per tick per side of
the current step (:class:`~junction.als.evidence.StepEvidence`) and ``through``: the last
tick it had closed when it published (later ticks may still grow). The leader
(:mod:`junction.canary.leader`) reads every replica's value each tick and merges them:

- exactly: per tick, the sum (:meth:`StepEvidence.merge`), and only up to the smallest
  ``through`` of the replicas counted, so no tick is judged before every replica's counts
  for it are in. The merged evidence is what one receiver of all the logs would have had;
- fresh only: a value unchanged for :data:`STALE_AFTER` (10 s) is dropped from the merge
  (a dead replica, or one cut off from Consul); ages are measured on the leader's clock from
  the moment it saw the value change (the first sighting is aged by the publisher's
  timestamp), so replicas' clocks need not agree;
- on the same thresholds: evidence counted against other latency thresholds (a replica that
  has not read the new step's state yet) waits until it has.

Bounded: at most :data:`MAX_TICKS` ticks per service (the oldest are dropped first and their
requests counted as missing, which the decision treats as lost log entries) and
:data:`MAX_BYTES` per value (Consul's limit is 512 KiB). Evidence lives in Consul, not in the
leader, so a new leader continues from the same counts.

Why beside the states' prefix and not under it: the state watch (a blocking query on
``junction-state/canary/``) would wake every replica at every publication.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from junction.als.evidence import EvidenceFormatError, StepEvidence
from junction.canary.errors import StoreError
from junction.canary.store import ConsulStateStore

__all__ = [
    "EVIDENCE_PREFIX",
    "MAX_BYTES",
    "MAX_TICKS",
    "PUBLISH_INTERVAL",
    "STALE_AFTER",
    "EvidenceBoard",
    "FleetEvidence",
    "ReplicaView",
    "ServiceEvidence",
    "Summary",
    "bound_ticks",
    "encode_bounded",
    "merge_fleet",
]

log = logging.getLogger("junction.canary")

EVIDENCE_PREFIX = "junction-state/canary-evidence/"
PUBLISH_INTERVAL = 1.0
STALE_AFTER = 10.0
MAX_TICKS = 300  # the windows' horizon (300 s) in 1 s ticks
MAX_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ServiceEvidence:
    """One service's evidence from one replica. ``through``: ticks up to this one were
    closed when it was published. ``dropped``: ticks left out to respect the bound."""

    through: int
    evidence: StepEvidence
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"through": self.through, "dropped": self.dropped, **self.evidence.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> ServiceEvidence:
        if not isinstance(data, Mapping):
            raise EvidenceFormatError(f"expected a JSON object, got {type(data).__name__}")
        try:
            through, dropped = int(data["through"]), int(data.get("dropped", 0))
        except KeyError as exc:
            raise EvidenceFormatError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise EvidenceFormatError(f"through/dropped: {exc}") from None
        return cls(through, StepEvidence.from_json(data), dropped)


@dataclass(frozen=True, slots=True)
class Summary:
    """One replica's published value: its evidence for every ramping service."""

    replica: str
    published: float  # the publisher's wall clock (seconds since the epoch)
    services: Mapping[str, ServiceEvidence] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "published": self.published,
            "services": {name: s.to_json() for name, s in sorted(self.services.items())},
        }

    @classmethod
    def loads(cls, raw: bytes | str | None) -> Summary:
        """Parse a published value; :class:`EvidenceFormatError` names what is wrong."""
        try:
            data = orjson.loads(raw or b"")
        except orjson.JSONDecodeError as exc:
            raise EvidenceFormatError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise EvidenceFormatError(f"expected a JSON object, got {type(data).__name__}")
        services = data.get("services") or {}
        if not isinstance(services, dict):
            raise EvidenceFormatError("services: expected a JSON object")
        try:
            published = float(data["published"])
            replica = str(data["replica"])
        except KeyError as exc:
            raise EvidenceFormatError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise EvidenceFormatError(f"published: {exc}") from None
        parsed = {}
        for name, one in services.items():
            try:
                parsed[str(name)] = ServiceEvidence.from_json(one)
            except EvidenceFormatError as exc:
                raise EvidenceFormatError(f"services.{name}: {exc}") from None
        return cls(replica, published, parsed)


def bound_ticks(one: ServiceEvidence, max_ticks: int) -> ServiceEvidence:
    """At most ``max_ticks`` ticks: the newest are kept; the requests of those dropped are
    added to ``missing`` (the decision treats them as lost log entries, never as absent)."""
    ev = one.evidence
    if len(ev.ticks) <= max_ticks:
        return one
    cut = len(ev.ticks) - max_ticks
    lost = sum(t.baseline.requests + t.candidate.requests for t in ev.ticks[:cut])
    kept = StepEvidence(ev.tick_seconds, ev.thresholds_ms, ev.ticks[cut:], ev.missing + lost)
    return ServiceEvidence(one.through, kept, one.dropped + cut)


def encode_bounded(
    summary: Summary, *, max_ticks: int = MAX_TICKS, max_bytes: int = MAX_BYTES
) -> tuple[bytes, Summary]:
    """The value to publish, within ``max_ticks`` per service and ``max_bytes`` in all
    (halving the ticks kept until it fits); returns the bytes and what they hold."""
    limit = max_ticks
    while True:
        services = {n: bound_ticks(s, limit) for n, s in summary.services.items()}
        bounded = Summary(summary.replica, summary.published, services)
        raw = orjson.dumps(bounded.to_json())
        if len(raw) <= max_bytes:
            return raw, bounded
        if limit == 0:
            raise EvidenceFormatError(
                f"{len(summary.services)} services do not fit in {max_bytes} bytes even"
                " without ticks"
            )
        limit //= 2


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica's evidence as the leader sees it: counted or why not, and its age."""

    replica: str
    age: float
    counted: bool
    why: str | None = None
    through: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "age": round(self.age, 3),
            "counted": self.counted,
            "why": self.why,
            "through": self.through,
        }


@dataclass(frozen=True, slots=True)
class FleetEvidence:
    """The merge for one service. ``evidence`` None: no replica's evidence counts.
    ``waiting``: fresh replicas still counting against other ticks or thresholds (they have
    not read the step's state yet); judging without them would lose their counts."""

    evidence: StepEvidence | None
    through: int | None
    replicas: tuple[ReplicaView, ...]
    waiting: tuple[str, ...] = ()

    def counted(self) -> list[str]:
        return [r.replica for r in self.replicas if r.counted]


def merge_fleet(
    summaries: Iterable[tuple[Summary, float]],
    service: str,
    *,
    tick_seconds: float,
    thresholds_ms: tuple[float, ...],
    stale_after: float = STALE_AFTER,
) -> FleetEvidence:
    """Merge the replicas' evidence for ``service`` (each summary with its age, seconds).

    Counted: fresh (age <= ``stale_after``), with evidence for the service, on the same
    ticks and thresholds. The result holds the ticks up to the smallest ``through`` of the
    counted replicas, summed exactly per tick.
    """
    views: list[ReplicaView] = []
    counted: list[ServiceEvidence] = []
    waiting: list[str] = []
    for summary, age in sorted(summaries, key=lambda s: s[0].replica):
        one = summary.services.get(service)
        why = None
        if age > stale_after:
            why = f"stale: no update for {age:.1f}s (> {stale_after:g}s)"
        elif one is None:
            why = "no evidence for this service"
        elif one.evidence.tick_seconds != tick_seconds:
            why = f"ticks of {one.evidence.tick_seconds:g}s, not {tick_seconds:g}s"
            waiting.append(summary.replica)
        elif one.evidence.thresholds_ms != tuple(thresholds_ms):
            why = (
                f"counted against latency thresholds {list(one.evidence.thresholds_ms)} ms,"
                f" not this step's {list(thresholds_ms)}"
            )
            waiting.append(summary.replica)
        through = one.through if one is not None else None
        views.append(ReplicaView(summary.replica, age, why is None, why, through))
        if why is None and one is not None:
            counted.append(one)
    if not counted:
        return FleetEvidence(None, None, tuple(views), tuple(waiting))
    through = min(c.through for c in counted)
    merged = StepEvidence(tick_seconds, tuple(thresholds_ms))
    for c in counted:
        merged = merged.merge(c.evidence)
    kept = tuple(t for t in merged.ticks if t.tick <= through)
    return FleetEvidence(
        StepEvidence(tick_seconds, tuple(thresholds_ms), kept, merged.missing),
        through,
        tuple(views),
        tuple(waiting),
    )


class _Seen:
    __slots__ = ("changed", "index", "summary")

    def __init__(self, index: int, changed: float, summary: Summary) -> None:
        self.index = index
        self.changed = changed
        self.summary = summary  # parsed once per ModifyIndex


class EvidenceBoard:
    """Publishes this replica's evidence and reads everyone's, through ``store``'s Consul
    client. ``clock``: monotonic seconds (ages); ``wall``: the timestamp published."""

    def __init__(
        self,
        store: ConsulStateStore,
        replica: str,
        *,
        prefix: str = EVIDENCE_PREFIX,
        interval: float = PUBLISH_INTERVAL,
        stale_after: float = STALE_AFTER,
        max_ticks: int = MAX_TICKS,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not replica or "/" in replica:
            raise StoreError(f"replica id {replica!r} must be non-empty and without '/'")
        if not prefix.endswith("/"):
            raise StoreError(f"evidence prefix {prefix!r} must end with '/'")
        self.store = store
        self.replica = replica
        self.key = prefix + replica
        self.prefix = prefix
        self.interval = interval
        self.stale_after = stale_after
        self.max_ticks = max_ticks
        self.max_bytes = max_bytes
        self._clock = clock
        self._wall = wall
        self._last_publish = -math.inf
        self._seen: dict[str, _Seen] = {}
        self.summaries: dict[str, tuple[Summary, float]] = {}  # replica -> (summary, seen at)
        self.problems: dict[str, str] = {}  # key -> why its value is unreadable
        self.published = 0
        self.last_bytes = 0
        self.error: str | None = None

    def due(self) -> bool:
        return self._clock() - self._last_publish >= self.interval

    def encode(self, services: Mapping[str, ServiceEvidence]) -> bytes | None:
        """The value to publish now (None: not :meth:`due`); counts it as published."""
        if not self.due():
            return None
        raw, _ = encode_bounded(
            Summary(self.replica, self._wall(), dict(services)),
            max_ticks=self.max_ticks,
            max_bytes=self.max_bytes,
        )
        self._last_publish = self._clock()
        self.published += 1
        self.last_bytes = len(raw)
        return raw

    async def publish(self, services: Mapping[str, ServiceEvidence]) -> bool:
        """Write this replica's evidence if :meth:`due` (else nothing); True if written."""
        raw = self.encode(services)
        if raw is None:
            return False
        await self.store.request(f"publishing {self.key}", lambda c: c.kv.put(self.key, raw))
        return True

    async def read(self) -> None:
        """Read every replica's value (one recursive GET)."""
        _, entries = await self.store.request(
            f"reading {self.prefix}", lambda c: c.kv.get(self.prefix, recurse=True)
        )
        self.ingest(entries or ())

    def ingest(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Take in the KV entries under the prefix (``Key``, ``Value``, ``ModifyIndex``)."""
        now, wall = self._clock(), self._wall()
        summaries: dict[str, tuple[Summary, float]] = {}
        problems: dict[str, str] = {}
        seen: dict[str, _Seen] = {}
        for entry in entries:
            key = str(entry.get("Key", ""))
            index = int(entry.get("ModifyIndex", 0))
            before = self._seen.get(key)
            if before is not None and before.index == index:
                seen[key] = before  # unchanged since the last read: not parsed again
                summaries[before.summary.replica] = (before.summary, before.changed)
                continue
            try:
                summary = Summary.loads(entry.get("Value"))
            except EvidenceFormatError as exc:
                problems[key] = f"{key}: not canary evidence ({exc})"
                continue
            if before is None:  # first sighting: trust the publisher's clock, never ahead
                seen[key] = _Seen(index, now - max(0.0, wall - summary.published), summary)
            else:
                seen[key] = _Seen(index, now, summary)
            summaries[summary.replica] = (summary, seen[key].changed)
        self._seen, self.summaries, self.problems = seen, summaries, problems

    def merged(
        self,
        service: str,
        *,
        tick_seconds: float,
        thresholds_ms: tuple[float, ...],
        own: ServiceEvidence | None = None,
    ) -> FleetEvidence:
        """The merge of what :meth:`read` found, for ``service``. ``own``: this replica's
        current evidence, used instead of what it last published (up to a second old)."""
        now = self._clock()
        found = [
            (s, now - seen)
            for s, seen in self.summaries.values()
            if own is None or s.replica != self.replica
        ]
        if own is not None:
            found.append((Summary(self.replica, self._wall(), {service: own}), 0.0))
        return merge_fleet(
            found,
            service,
            tick_seconds=tick_seconds,
            thresholds_ms=thresholds_ms,
            stale_after=self.stale_after,
        )

    async def withdraw(self) -> None:
        """Delete this replica's value (a clean shutdown)."""
        try:
            await self.store.request(f"deleting {self.key}", lambda c: c.kv.delete(self.key))
        except StoreError as exc:
            log.warning("canary evidence: %s (the leader drops it when stale)", exc)

    def status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "key": self.key,
            "publish_interval": self.interval,
            "stale_after": self.stale_after,
            "max_ticks": self.max_ticks,
            "max_bytes": self.max_bytes,
            "published": self.published,
            "last_bytes": self.last_bytes,
            "replicas": {
                name: {
                    "age": round(now - seen, 3),
                    "stale": now - seen > self.stale_after,
                    "services": sorted(s.services),
                }
                for name, (s, seen) in sorted(self.summaries.items())
            },
            "problems": sorted(self.problems.values()),
        }
