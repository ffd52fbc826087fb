"""The canary controller: evidence from the windows, a pure step, the result stored with CAS.

Every ``tick`` (0.5 s) and for every service with a ramp policy in the current config:

1. read the stored state (a missing one, a corrupt one, or one of another candidate starts
   a fresh ramp at the first step);
2. gather the :class:`~junction.canary.step.Evidence` of the current step: both sides'
   figures since the step began (requests the weights routed: no pins, no experiment arms
   with their own version) and the log entries lost meanwhile (the receiver's drops and
   Envoy's, via :class:`~junction.als.envoy_drops.EnvoyDrops`);
3. :func:`~junction.canary.step.step`;
4. if the state changed, write it at the index it was read at. When another replica's
   controller wrote first, the write fails and nothing else happens: the next tick reads
   the new state. So replicas never step twice for one interval, and a restarted controller
   resumes where the store says the ramp is.

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
from typing import Any

from junction.als.envoy_drops import EnvoyDrops
from junction.als.sinks import RotatingFile, dump_lines
from junction.als.windows import Windows
from junction.canary.errors import StoreError
from junction.canary.policy import CanaryPolicy, policies
from junction.canary.state import CanaryEvent, Phase
from junction.canary.step import Decision, Evidence, initial_state, step
from junction.canary.store import StateStore
from junction.config.model import Config

__all__ = ["CanaryController", "gather_evidence"]

log = logging.getLogger("junction.canary")


def gather_evidence(windows: Windows, policy: CanaryPolicy, since: float, now: float) -> Evidence:
    """Both sides' figures and the lost entries over ``[since, now]`` (clipped to the
    windows' horizon)."""
    start = max(since, now - windows.horizon)
    return Evidence(
        start=start,
        end=now,
        baseline=windows.canary_figures(policy.baseline, start, now),
        candidate=windows.canary_figures(policy.candidate, start, now),
        missing=windows.missing(start, now),
    )


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
    ) -> None:
        self.store = store
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

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug must not stop the ramp's safety checks for good
                log.exception("canary controller tick failed")
            await asyncio.sleep(self._tick)

    async def tick(self) -> list[Decision]:
        """One pass over every ramp; returns the decisions that changed a state."""
        self.ticks += 1
        if self._drops is not None:
            await self._drops.poll()
        config = self._config()
        if config is None:
            return []
        made: list[Decision] = []
        errors: list[str] = []
        for policy in policies(config).values():
            try:
                decision = await self._service(policy)
            except StoreError as exc:
                errors.append(str(exc))
                continue
            if decision is not None:
                made.append(decision)
        error = "; ".join(errors) or None
        if error and error != self.error:
            log.warning("canary controller: %s (ramps hold until the store answers)", error)
        self.error = error
        return made

    async def _service(self, policy: CanaryPolicy) -> Decision | None:
        stored = await self.store.get(policy.service)
        now = self._clock()
        state = stored.state if stored is not None else None
        if state is None or (state.baseline, state.candidate) != (
            policy.baseline,
            policy.candidate,
        ):
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
        decision = step(
            state, gather_evidence(self.windows, policy, state.step_started, now), policy, now
        )
        if decision.state is state:
            return None
        assert stored is not None
        if not await self.store.put(decision.state, index=stored.index):
            # Another replica decided first; its state is read on the next tick.
            self.lost_races += 1
            return None
        if decision.event is not None:
            self._record(decision.event)
        return decision

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
        }
