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
from typing import Any

from junction.canary.errors import StoreError
from junction.canary.evidence import StepEvidence
from junction.canary.fleet import EvidenceBoard, FleetEvidence, ServiceEvidence
from junction.canary.leader import LeaderElection

__all__ = ["FleetCoordinator"]

log = logging.getLogger("junction.canary")


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
