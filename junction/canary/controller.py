"""The canary controller: evidence from the windows, a pure step, the result stored with CAS.

Every ``tick`` (0.5 s) and for every service with a ramp policy in the current config:

1. read the stored state (a missing one, a corrupt one, or one of another candidate starts
   a fresh ramp at the first step);
2. at a step's start, fix its latency thresholds (the policy's, or the baseline's quantiles
   over ``latency-lookback``) in the state, so every replica counts against the same ones;
3. gather the :class:`~junction.canary.evidence.StepEvidence` of the ticks not judged yet
   (:func:`~junction.canary.step.pending_window`): both sides' counts per tick (requests
   the weights routed: no pins, no experiment arms with their own version) and the log
   entries lost meanwhile (the receiver's drops and Envoy's, via
   :class:`~junction.als.envoy_drops.EnvoyDrops`);
4. :func:`~junction.canary.step.step`;
5. if it recorded an event, or the running tests are due a checkpoint
   (:func:`~junction.canary.step.needs_write`), write the state at the index it was read
   at. When another replica's controller wrote first, the write fails and nothing else
   happens: the next tick reads the new state. So replicas never step twice for one
   interval, and a restarted controller resumes where the store says the ramp is (ticks
   after the last checkpoint are judged again from the windows: the same counts give the
   same tests).

**Fleet mode** (with a :class:`~junction.canary.coordinator.FleetCoordinator`: states in
Consul): every replica offers its counts of the pending ticks, which the coordinator
publishes; only the elected leader decides, on the merge of every replica's counts, and
starts ramps. A leader that has just fixed a step's latency thresholds stores them before
judging, so every replica counts against them. In file mode there is no coordinator.

Every recorded decision is an event with its evidence: kept in the state (last 50), in
:attr:`CanaryController.events`, logged, and appended to the events file when one is set
(``junction report`` draws the ramp from it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from junction.als.envoy_drops import EnvoyDrops
from junction.als.sinks import RotatingFile, dump_lines
from junction.als.windows import Windows
from junction.canary.errors import StoreError
from junction.canary.evidence import StepEvidence
from junction.canary.policy import CanaryPolicy, policies
from junction.canary.state import CanaryEvent, CanaryState, Phase
from junction.canary.step import (
    CanaryDecision,
    closed_tick,
    initial_state,
    needs_write,
    pending_window,
    step,
    step_thresholds,
)
from junction.canary.store import StateStore

if TYPE_CHECKING:
    from junction.canary.coordinator import FleetCoordinator
from junction.config.model import Config

__all__ = ["CanaryController", "fix_thresholds", "gather_evidence"]

log = logging.getLogger("junction.canary")


def gather_evidence(
    windows: Windows, policy: CanaryPolicy, state: CanaryState, now: float
) -> StepEvidence:
    """The counts of the ticks :func:`~junction.canary.step.step` will judge now (clipped to
    the windows' horizon), against the state's latency thresholds."""
    window = pending_window(state, policy, now, windows.slot_seconds)
    if window is None:
        return StepEvidence(windows.slot_seconds, state.thresholds_ms)
    since, until = window
    return windows.step_evidence(
        policy.baseline,
        policy.candidate,
        state.thresholds_ms,
        max(since, now - windows.horizon),
        until,
    )


def fix_thresholds(
    windows: Windows, policy: CanaryPolicy, state: CanaryState, now: float
) -> CanaryState:
    """``state`` with its step's latency thresholds fixed, if they are not yet and can be."""
    if state.thresholds_ms or not policy.latency_metrics:
        return state
    quantiles = None
    if policy.latency_thresholds is None:
        quantiles = windows.canary_quantiles(
            policy.baseline, now - policy.latency_lookback, now, policy.latency_quantiles
        )
    fixed = step_thresholds(policy, quantiles)
    return replace(state, thresholds_ms=fixed) if fixed else state


class CanaryController:
    """Run :meth:`run` as a task; :meth:`tick` is one pass (tests call it directly)."""

    def __init__(
        self,
        store: StateStore,
        windows: Windows,
        config: Callable[[], Config | None],
        *,
        tick: float = 0.5,
        drops: EnvoyDrops | None = None,
        events_file: RotatingFile | None = None,
        clock: Callable[[], float] = time.time,
        coordinator: FleetCoordinator | None = None,
    ) -> None:
        self.store = store
        self._coordinator = coordinator
        self.windows = windows
        self._config = config
        self._tick = tick
        self._drops = drops
        self._events_file = events_file
        self._clock = clock
        self.events: collections.deque[CanaryEvent] = collections.deque(maxlen=500)
        self.error: str | None = None
        self.lost_races = 0
        self.ticks = 0
        #: The latest decision per service, holds included, with the e-values it read.
        self.latest: dict[str, dict[str, Any]] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug must not stop the ramp's safety checks for good
                log.exception("canary controller tick failed")
            await asyncio.sleep(self._tick)

    async def tick(self) -> list[CanaryDecision]:
        """One pass over every ramp; returns the decisions recorded (with an event)."""
        self.ticks += 1
        if self._drops is not None:
            await self._drops.poll()
        config = self._config()
        if config is None:
            return []
        made: list[CanaryDecision] = []
        errors: list[str] = []
        fleet = self._coordinator
        deciding = await fleet.begin() if fleet is not None else True
        for policy in policies(config).values():
            try:
                decision = await self._service(policy, deciding)
            except StoreError as exc:
                errors.append(str(exc))
                continue
            if decision is not None:
                made.append(decision)
        if fleet is not None:
            await fleet.end()
        error = "; ".join(errors) or None
        if error and error != self.error:
            log.warning("canary controller: %s (ramps hold until the store answers)", error)
        self.error = error
        return made

    async def _service(self, policy: CanaryPolicy, deciding: bool = True) -> CanaryDecision | None:
        stored = await self.store.get(policy.service)
        now = self._clock()
        state = stored.state if stored is not None else None
        if state is None or (state.baseline, state.candidate) != (
            policy.baseline,
            policy.candidate,
        ):
            if not deciding:
                return None  # in a fleet only the leader starts a ramp
            if stored is not None and stored.problem:
                log.warning("%s; starting a new ramp over it", stored.problem)
            fresh = initial_state(policy, now, previous=state)
            if await self.store.put(fresh, index=stored.index if stored else 0):
                self._record(fresh.events[-1])
            else:
                self.lost_races += 1
            return None
        if state.phase is not Phase.RAMPING:
            return None
        # A follower counts against the stored thresholds; only the decider fixes them.
        working = fix_thresholds(self.windows, policy, state, now) if deciding else state
        evidence = gather_evidence(self.windows, policy, working, now)
        if self._coordinator is not None:
            merged = await self._fleet_evidence(policy, state, working, evidence, now, deciding)
            if merged is None:
                return None
            assert stored is not None
            if isinstance(merged, CanaryState):  # thresholds just fixed: store them first
                if not await self.store.put(merged, index=stored.index):
                    self.lost_races += 1
                return None
            evidence = merged
        decision = step(working, evidence, policy, now)
        self.latest[policy.service] = {
            "at": now,
            "action": decision.action.value,
            "reason": decision.reason,
            "evidence": decision.evidence,
        }
        if decision.event is None and not needs_write(state, decision.state, evidence.tick_seconds):
            return None
        assert stored is not None
        if not await self.store.put(decision.state, index=stored.index):
            # Another replica decided first; its state is read on the next tick.
            self.lost_races += 1
            return None
        if decision.event is None:
            return None  # a checkpoint of the tests, not a decision
        self._record(decision.event)
        return decision

    async def _fleet_evidence(
        self,
        policy: CanaryPolicy,
        state: CanaryState,
        working: CanaryState,
        local: StepEvidence,
        now: float,
        deciding: bool,
    ) -> StepEvidence | CanaryState | None:
        """Offer this replica's counts; for the leader, the fleet's merged evidence (None:
        hold this tick; ``working`` itself: its new thresholds must be stored first)."""
        assert self._coordinator is not None
        through = closed_tick(now, policy.settle, local.tick_seconds)
        own = self._coordinator.offer(policy.service, through, local)
        if not deciding:
            return None
        if working.thresholds_ms != state.thresholds_ms:
            return working
        merged, why = self._coordinator.evidence(policy.service, own)
        if merged is None:
            self.latest[policy.service] = {"at": now, "action": "hold", "reason": why}
        return merged

    def _record(self, event: CanaryEvent) -> None:
        self.events.append(event)
        log.info(
            "canary %s: %s %d%% -> %d%%: %s",
            event.service, event.action, event.from_weight, event.to_weight, event.reason,
        )  # fmt: skip
        if self._events_file is not None:
            try:
                self._events_file.write(dump_lines([event.to_json()]))
                self._events_file.flush()
            except OSError as exc:
                log.error("canary events file: %s", exc)

    def status(self) -> dict[str, Any]:
        return {
            "ticks": self.ticks,
            "error": self.error,
            "lost_races": self.lost_races,
            "envoy_drops": self._drops.status() if self._drops is not None else None,
            "recent_events": [e.to_json() for e in list(self.events)[-20:]],
            "latest": dict(sorted(self.latest.items())),
            "fleet": self._coordinator.status() if self._coordinator is not None else None,
        }
