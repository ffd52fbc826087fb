"""Who decides a canary, and on what evidence, when replicas share a Consul: the leader,
on the whole fleet's counts (:class:`FleetCoordinator`).

The controller (:mod:`junction.canary.controller`) calls it around each tick:

1. :meth:`FleetCoordinator.begin`: may this replica decide now? Only the elected leader
   (:mod:`junction.canary.leader`) whose read of every replica's evidence
   (:mod:`junction.canary.fleet`) succeeded. Otherwise :attr:`~FleetCoordinator.why_not`
   says why (another replica leads; Consul is unreachable: then no replica decides and
   every ramp holds where it is);
2. for every ramping service, :meth:`~FleetCoordinator.offer` this replica's counts of the
   ticks not judged yet; the leader then asks :meth:`~FleetCoordinator.evidence` for the
   merge, which may be None with a reason (nobody's evidence counts, or a replica has not
   read the step's state yet): the leader holds for that tick rather than judge on part of
   the evidence;
3. :meth:`~FleetCoordinator.end`: publish the offers (at most once a second).

In file mode there is no coordinator: one process decides from its own evidence, as before.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from junction.als.evidence import StepEvidence
from junction.canary.errors import CanaryError, StoreError
from junction.canary.fleet import (
    EVIDENCE_PREFIX,
    PUBLISH_INTERVAL,
    STALE_AFTER,
    EvidenceBoard,
    FleetEvidence,
    ServiceEvidence,
)
from junction.canary.leader import DEFAULT_LEADER_KEY, LeaderElection
from junction.canary.store import ConsulStateStore

__all__ = ["FleetCoordinator", "FleetSettingError", "FleetSettings", "make_coordinator"]

log = logging.getLogger("junction.canary")

#: Consul's own cap on a session's lock-delay (longer values are cut to it).
MAX_LOCK_DELAY = 60.0


class FleetSettingError(CanaryError, ValueError):
    """A fleet setting is unusable; the message names the flag."""


@dataclass(frozen=True, kw_only=True)
class FleetSettings:
    """How replicas sharing a Consul decide as one (flags ``--canary-*``).

    ``replica``: this replica's id ("" : the Envoy node id, else ``HOST-PID``);
    ``leader_ttl``: the session TTL (Consul accepts 10 s and up unless its servers'
    ``session_ttl_min`` is lower); ``lock_delay``: None means the TTL; ``stale_after``: a
    replica's evidence unchanged this long leaves the merge.
    """

    replica: str = ""
    leader_ttl: float = 10.0
    lock_delay: float | None = None
    publish_interval: float = PUBLISH_INTERVAL
    stale_after: float = STALE_AFTER
    leader_key: str = DEFAULT_LEADER_KEY
    evidence_prefix: str = EVIDENCE_PREFIX

    def __post_init__(self) -> None:
        if "/" in self.replica:
            raise FleetSettingError(f"--canary-replica {self.replica!r}: no '/' allowed")
        if not self.leader_ttl > 0:
            raise FleetSettingError(f"--canary-leader-ttl must be > 0, got {self.leader_ttl}")
        if self.lock_delay is not None and not 0 <= self.lock_delay <= MAX_LOCK_DELAY:
            raise FleetSettingError(
                f"--canary-lock-delay must be 0..{MAX_LOCK_DELAY:g} s, got {self.lock_delay}"
            )
        if not 0 < self.publish_interval < self.stale_after:
            raise FleetSettingError(
                f"--canary-stale-after ({self.stale_after:g} s) must exceed the publishing"
                f" interval ({self.publish_interval:g} s)"
            )

    def replica_id(self, node_id: str = "") -> str:
        return self.replica or node_id or f"{socket.gethostname()}-{os.getpid()}"


def make_coordinator(
    store: ConsulStateStore, settings: FleetSettings, *, node_id: str = ""
) -> FleetCoordinator:
    """The election and evidence board of this replica, on ``store``'s Consul."""
    replica = settings.replica_id(node_id).replace("/", "_")
    election = LeaderElection(
        store,
        replica,
        key=settings.leader_key,
        ttl=settings.leader_ttl,
        lock_delay=settings.lock_delay,
    )
    board = EvidenceBoard(
        store,
        replica,
        prefix=settings.evidence_prefix,
        interval=settings.publish_interval,
        stale_after=settings.stale_after,
    )
    return FleetCoordinator(election, board)


class FleetCoordinator:
    """The election and the evidence board of one replica."""

    def __init__(self, election: LeaderElection, board: EvidenceBoard) -> None:
        if election.replica != board.replica:
            raise StoreError(
                f"one replica id for the election ({election.replica!r}) and the evidence"
                f" ({board.replica!r})"
            )
        self.election = election
        self.board = board
        self.replica = election.replica
        #: Why this replica did not decide in the last tick (None: it did, as the leader).
        self.why_not: str | None = "not started"
        self.publish_error: str | None = None
        self._offers: dict[str, ServiceEvidence] = {}
        self.merges: dict[str, FleetEvidence] = {}
        self.holds: dict[str, str] = {}

    async def run(self) -> None:
        """The election, until cancelled."""
        await self.election.run()

    async def close(self) -> None:
        """Hand leadership over at once and withdraw this replica's evidence."""
        await self.election.resign()
        await self.board.withdraw()

    def leader(self) -> bool:
        return self.election.leader()

    async def begin(self) -> bool:
        """Start a tick; True if this replica decides in it."""
        self._offers = {}
        self.holds = {}
        if not self.election.leader():
            self.why_not = self._follower_reason()
            return False
        try:
            await self.board.read()
        except StoreError as exc:
            self.why_not = f"cannot read the fleet's evidence ({exc}); holding every ramp"
            return False
        self.why_not = None
        return True

    def idle(self) -> bool:
        """A follower with nothing to publish this tick: the controller may skip it."""
        return self.why_not is not None and not self.board.due()

    def _follower_reason(self) -> str:
        state = self.election.state
        if state.problem and state.problem != "not started":
            return f"not the leader: {state.problem}; no decision from this replica"
        holder = state.holder
        return f"not the leader ({holder} leads)" if holder else "not the leader (no leader yet)"

    def offer(self, service: str, through: int, evidence: StepEvidence) -> ServiceEvidence:
        """This replica's counts for ``service`` (ticks up to ``through`` are closed)."""
        one = ServiceEvidence(through, evidence)
        self._offers[service] = one
        return one

    def evidence(
        self, service: str, own: ServiceEvidence
    ) -> tuple[StepEvidence | None, str | None]:
        """The leader's merged evidence for ``service`` (``own``: this replica's offer), or
        None and why it holds this tick."""
        fleet = self.board.merged(
            service,
            tick_seconds=own.evidence.tick_seconds,
            thresholds_ms=own.evidence.thresholds_ms,
            own=own,
        )
        self.merges[service] = fleet
        reason = None
        if fleet.waiting:
            reason = (
                f"waiting for {', '.join(fleet.waiting)} to count against this step's"
                " thresholds (it has not read the step's state yet)"
            )
        elif fleet.evidence is None:
            reason = "no replica's evidence counts"
        if reason is not None:
            self.holds[service] = reason
            return None, reason
        return fleet.evidence, None

    async def end(self) -> None:
        """Publish this tick's offers (if a second has passed since the last time)."""
        if not self._offers or not self.board.due():
            return
        try:
            await self.board.publish(self._offers)
        except StoreError as exc:
            if str(exc) != self.publish_error:
                log.warning("canary evidence: %s", exc)
            self.publish_error = str(exc)
        else:
            self.publish_error = None

    def status(self) -> dict[str, Any]:
        """For /status: who leads, whether this replica decides and why not, and whose
        evidence counts in each ramp, with its age."""
        return {
            "replica": self.replica,
            "deciding": self.why_not is None,
            "why_not": self.why_not,
            "election": self.election.status(),
            "evidence": self.board.status(),
            "publish_error": self.publish_error,
            "holds": dict(sorted(self.holds.items())),
            "merges": {
                service: {
                    "through": fleet.through,
                    "counted": fleet.counted(),
                    "waiting": list(fleet.waiting),
                    "replicas": [r.to_json() for r in fleet.replicas],
                }
                for service, fleet in sorted(self.merges.items())
            },
        }
