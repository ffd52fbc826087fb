"""The canary controller: evidence from the windows, a pure step, the result stored with CAS.

Every ``tick`` (0.5 s) and for every service with a ramp policy in the current config:

1. read the stored state (a missing one, a corrupt one, or one of another candidate starts
   a fresh ramp at the first step);
2. at a step's start, fix its latency thresholds (the policy's, or the baseline's quantiles
   over ``latency-lookback``) in the state, so every replica counts against the same ones;
3. gather the :class:`~junction.als.evidence.StepEvidence` of the ticks not judged yet
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
from junction.als.evidence import StepEvidence
from junction.als.sinks import RotatingFile, dump_lines
from junction.als.windows import Windows
from junction.canary.errors import StoreError
from junction.canary.policy import CanaryPolicy, policies
from junction.canary.state import CanaryEvent, CanaryState, Phase
from junction.canary.step import (
    CanaryDecision,
    closed_tick,
    initial_state,
    judge_states,
    needs_write,
    pending_window,
    step,
    step_thresholds,
)
from junction.canary.store import StateStore, Stored
from junction.config.model import Config

if TYPE_CHECKING:
    from junction.canary.coordinator import FleetCoordinator

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
        #: Every event this controller recorded, by (service, action), for /metrics.
        self.decisions: collections.Counter[tuple[str, str]] = collections.Counter()
        self.error: str | None = None
        self.lost_races = 0
        self.ticks = 0
        self._policies: tuple[Config, dict[str, CanaryPolicy]] | None = None
        #: The latest decision per service, holds included (its evidence: the e-values).
        self.latest: dict[str, CanaryDecision] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug must not stop the ramp's safety checks for good
                log.exception("canary controller tick failed")
            await asyncio.sleep(self._tick)

    async def tick(self) -> list[CanaryDecision]:
        """One pass over every ramp; returns the decisions recorded (with an event).

        Reads every state first, then folds all ramps' new ticks into their tests in one
        stacked update (:func:`~junction.canary.step.judge_states`), then decides and
        writes ramp by ramp."""
        self.ticks += 1
        if self._drops is not None:
            await self._drops.poll()
        config = self._config()
        if config is None:
            return []
        errors: list[str] = []
        ramps: list[tuple[CanaryPolicy, Stored, CanaryState, StepEvidence]] = []
        fleet = self._coordinator
        deciding = await fleet.begin() if fleet is not None else True
        if fleet is not None and fleet.idle():
            return []  # a follower between publications: nothing to count or decide
        now = self._clock()
        if self._policies is None or self._policies[0] is not config:
            self._policies = (config, policies(config))  # once per config, not per tick
        for policy in self._policies[1].values():
            try:
                read = await self._read(policy, now, deciding)
                if read is None:
                    continue
                stored, state = read
                # A follower counts against the stored thresholds; the decider fixes them.
                working = fix_thresholds(self.windows, policy, state, now) if deciding else state
                evidence = gather_evidence(self.windows, policy, working, now)
                if fleet is not None:
                    merged = await self._fleet_evidence(policy, stored, working, evidence, now)
                    if merged is None:
                        continue
                    evidence = merged
                ramps.append((policy, stored, working, evidence))
            except StoreError as exc:
                errors.append(str(exc))
        made = await self._decide(ramps, now, errors)
        if fleet is not None:
            await fleet.end()
        error = "; ".join(errors) or None
        if error and error != self.error:
            log.warning("canary controller: %s (ramps hold until the store answers)", error)
        self.error = error
        return made

    async def _decide(
        self,
        ramps: list[tuple[CanaryPolicy, Stored, CanaryState, StepEvidence]],
        now: float,
        errors: list[str],
    ) -> list[CanaryDecision]:
        """Fold every ramp's new ticks in one stacked update, then decide and write ramp by
        ramp; store errors are appended to ``errors``. Returns the decisions recorded."""
        judged = judge_states([(w, ev, p) for p, _, w, ev in ramps], now)
        made: list[CanaryDecision] = []
        for (policy, stored, _, evidence), working in zip(ramps, judged, strict=True):
            decision = step(working, evidence, policy, now)
            self.latest[policy.service] = decision
            stored_state = stored.state
            assert stored_state is not None
            if decision.event is None and not needs_write(
                stored_state, decision.state, evidence.tick_seconds
            ):
                continue
            try:
                if await self._write(decision, stored.index):
                    made.append(decision)
            except StoreError as exc:
                errors.append(str(exc))
        return made

    async def _read(
        self, policy: CanaryPolicy, now: float, deciding: bool = True
    ) -> tuple[Stored, CanaryState] | None:
        """The stored state of a ramp that is ramping; a missing, corrupt or other
        candidate's state starts a new ramp (written here, only when ``deciding``; judged
        from the next tick)."""
        stored = await self.store.get(policy.service)
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
        if state.phase is not Phase.RAMPING or stored is None:
            return None
        return stored, state

    async def _fleet_evidence(
        self,
        policy: CanaryPolicy,
        stored: Stored,
        working: CanaryState,
        local: StepEvidence,
        now: float,
    ) -> StepEvidence | None:
        """Offer this replica's counts; the leader gets the fleet's merged evidence (None:
        nothing to judge this tick: a follower, a hold, or new thresholds stored first)."""
        assert self._coordinator is not None
        through = closed_tick(now, policy.settle, local.tick_seconds)
        own = self._coordinator.offer(policy.service, through, local)
        if self._coordinator.why_not is not None:
            return None  # not deciding
        if stored.state is not None and working.thresholds_ms != stored.state.thresholds_ms:
            # Just fixed: store them so every replica counts against them, then judge.
            if not await self.store.put(working, index=stored.index):
                self.lost_races += 1
            return None
        merged, _ = self._coordinator.evidence(policy.service, own)
        return merged

    async def _write(self, decision: CanaryDecision, index: int) -> bool:
        """Store the decision's state at ``index``; True if it recorded an event."""
        if not await self.store.put(decision.state, index=index):
            # Another replica decided first; its state is read on the next tick.
            self.lost_races += 1
            return False
        if decision.event is None:
            return False  # a checkpoint of the tests, not a decision
        self._record(decision.event)
        return True

    def _record(self, event: CanaryEvent) -> None:
        self.events.append(event)
        self.decisions[(event.service, event.action)] += 1
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
            "latest": {
                name: {
                    "at": d.at,
                    "action": d.action.value,
                    "reason": d.reason,
                    "evidence": d.evidence,
                }
                for name, d in sorted(self.latest.items())
            },
            "fleet": self._coordinator.status() if self._coordinator is not None else None,
        }
