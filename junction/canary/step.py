"""The canary's decisions, pure: ``step(state, evidence, policy, now) -> CanaryDecision``.

No I/O, no clock, no randomness: the same inputs give the same decision, so tests drive it
with scripts of evidence. The controller (:mod:`junction.canary.controller`), the replay and
the simulation gather :class:`~junction.als.evidence.StepEvidence` (counts per tick per
side) and write the resulting state; this module only decides.

Each call first folds the ticks that are *closed* (ended at least ``policy.settle`` seconds
ago, so every Envoy has flushed its logs) and not judged yet into the running tests
(:func:`junction.canary.monitor.judge`). Then, the first rule that applies wins:

1. not ramping (paused, promoted, rolled back, aborted): **hold**, no event;
2. the rollback e-process (errors, slow requests, guardrail; over the whole ramp) has reached
   1/alpha: **rollback** at once, weight 0, the reason names the metric and its counts.
   Lost log entries do not delay this: failures that were seen are real;
3. the step is younger than ``interval`` and the candidate is not yet *proven* no worse than
   the margin on every metric: **hold**, no event;
4. either side has fewer than ``min_requests`` in this step: **inconclusive** (hold).
   Never promote on too little data (Flagger's and Argo Rollouts' most reported failure);
5. the observed split disagrees with the weights (sample-ratio test), or more log entries
   were lost than ``max_missing`` allows: **inconclusive**, and the step starts over, since
   its figures are not like for like or incomplete;
6. otherwise **promote** to the next step; at 100 the phase becomes ``promoted``.

Inconclusive events are recorded at most once per interval, so a quiet service does not
flood the history. Every decision carries its evidence (:func:`decision_evidence`): the
e-values, shares and counts the controller decided on.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from junction.als.evidence import StepEvidence, TickCounts, snap_threshold
from junction.canary.errors import CommandError
from junction.canary.explain import SAMPLE_RATIO_ALPHA, decision_evidence, regression_reason
from junction.canary.monitor import (
    Job,
    RampStats,
    Reading,
    judge_many,
    read,
    sample_ratio,
)
from junction.canary.policy import CanaryPolicy
from junction.canary.state import CanaryEvent, CanaryState, Phase

__all__ = [
    "CHECKPOINT_SECONDS",
    "COMMANDS",
    "SAMPLE_RATIO_ALPHA",
    "Action",
    "CanaryDecision",
    "apply_command",
    "closed_tick",
    "decision_evidence",
    "initial_state",
    "judge_states",
    "needs_write",
    "pending_window",
    "step",
    "step_thresholds",
]

#: The controller stores the running tests at least this often (seconds of ticks) even
#: without a decision; in between it re-judges from the last stored state (the windows
#: still hold the ticks), so a new leader or a restart loses nothing.
CHECKPOINT_SECONDS = 10.0


class Action(enum.StrEnum):
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class CanaryDecision:
    """The outcome of one step: the next state (``state`` itself when nothing was judged
    and nothing changed) and the event to record (None: nothing to record).

    :attr:`evidence` is what the decision was made on (for holds too: replay and simulate
    print it); for holds it is built only when read, since the controller decides for
    every ramp twice a second.
    """

    action: Action
    reason: str
    state: CanaryState
    event: CanaryEvent | None = None
    policy: CanaryPolicy | None = None
    at: float = 0.0
    tick_seconds: float = 1.0

    @property
    def evidence(self) -> dict[str, Any] | None:
        if self.event is not None:
            return self.event.evidence
        if self.policy is None or self.state.stats is None:
            return None
        return decision_evidence(self.state, self.policy, self.at, self.tick_seconds)


def closed_tick(now: float, settle: float, tick_seconds: float) -> int:
    """The last tick whose end is at least ``settle`` seconds before ``now``."""
    return math.floor((now - settle) / tick_seconds) - 1


def pending_window(
    state: CanaryState, policy: CanaryPolicy, now: float, tick_seconds: float
) -> tuple[float, float] | None:
    """``(since, until)``: the times whose ticks the next :func:`step` will judge (after the
    last judged tick, or from the step's start, up to the last closed tick); None if no tick
    is due. Callers pass evidence of exactly this window, so lost entries count once."""
    last = state.stats.last_tick if state.stats is not None else None
    first = math.floor(state.step_started / tick_seconds) if last is None else last + 1
    closed = closed_tick(now, policy.settle, tick_seconds)
    if closed < first:
        return None
    return first * tick_seconds, closed * tick_seconds


def step_thresholds(
    policy: CanaryPolicy, baseline_quantiles: tuple[float, ...] | None
) -> tuple[float, ...] | None:
    """The latency thresholds of a new step, snapped to the windows' bucket edges: the
    policy's ``latency-thresholds``, else the baseline's quantiles (``baseline_quantiles``:
    its values at ``policy.latency_quantiles`` over the minutes before the step; None when it
    had no traffic, then the thresholds cannot be fixed yet)."""
    if policy.latency_thresholds is not None:
        return tuple(snap_threshold(ms) for ms in policy.latency_thresholds)
    if not policy.latency_quantiles:
        return ()
    if baseline_quantiles is None:
        return None
    return tuple(snap_threshold(ms) for ms in baseline_quantiles)


def needs_write(before: CanaryState, after: CanaryState, tick_seconds: float) -> bool:
    """Whether the controller must store ``after`` without an event: its thresholds were
    fixed, or its tests are :data:`CHECKPOINT_SECONDS` ahead of the stored ones."""
    if after is before:
        return False
    if after.thresholds_ms != before.thresholds_ms or (after.stats is None) != (
        before.stats is None
    ):
        return True
    if after.stats is None or before.stats is None:
        return False
    new, old = after.stats.last_tick, before.stats.last_tick
    if new is None:
        return False
    return old is None or (new - old) * tick_seconds >= CHECKPOINT_SECONDS


def _due(
    state: CanaryState, evidence: StepEvidence, policy: CanaryPolicy, now: float
) -> list[TickCounts]:
    """The evidence's ticks that are closed and not judged yet, with slow counts only if
    they were counted against the state's thresholds (else a stale replica's: errors only)."""
    last = state.stats.last_tick if state.stats is not None else None
    closed = closed_tick(now, policy.settle, evidence.tick_seconds)
    first = math.floor(state.step_started / evidence.tick_seconds) if last is None else last + 1
    ticks = [t for t in evidence.ticks if first <= t.tick <= closed]
    if ticks and tuple(evidence.thresholds_ms) != state.thresholds_ms:
        ticks = [
            TickCounts(t.tick, replace(t.baseline, slow=()), replace(t.candidate, slow=()))
            for t in ticks
        ]
    return ticks


def _job(
    state: CanaryState, evidence: StepEvidence, policy: CanaryPolicy, now: float
) -> Job | None:
    """What :func:`judge_many` must fold for this ramp; None: nothing (tests up to date)."""
    if state.phase is not Phase.RAMPING:
        return None
    ticks = _due(state, evidence, policy, now)
    if not ticks and state.stats is not None:
        return None
    ts = evidence.tick_seconds
    return Job(
        state.stats or RampStats.fresh(policy.latency_metrics),
        ticks,
        policy.test_settings(),
        step_from_tick=math.ceil(state.step_started / ts),
        ratio_from_tick=math.ceil((state.step_started + policy.grace) / ts),
        missing=evidence.missing if ticks else 0,
    )


def judge_states(
    items: Sequence[tuple[CanaryState, StepEvidence, CanaryPolicy]], now: float
) -> list[CanaryState]:
    """Each ramp's state with its due ticks folded into its tests, all ramps at once (one
    stacked update: the controller's way, for its CPU); :func:`step` on a result with the
    same evidence then only decides. ``step`` alone gives the same decisions."""
    jobs: list[Job] = []
    where: list[int] = []
    for i, (state, evidence, policy) in enumerate(items):
        job = _job(state, evidence, policy, now)
        if job is not None:
            jobs.append(job)
            where.append(i)
    out = [state for state, _, _ in items]
    for i, stats in zip(where, judge_many(jobs), strict=True):
        out[i] = out[i].with_stats(stats)
    return out


def step(
    state: CanaryState, evidence: StepEvidence, policy: CanaryPolicy, now: float
) -> CanaryDecision:
    """Decide one step (the rules are in the module docstring)."""
    if state.phase is not Phase.RAMPING:
        return CanaryDecision(Action.HOLD, f"canary is {state.phase.value}", state)
    ts = evidence.tick_seconds
    job = _job(state, evidence, policy, now)
    if job is not None:
        state = state.with_stats(judge_many([job])[0])
    stats = state.stats
    assert stats is not None  # judged above when there were none
    reject = math.log(1.0 / policy.alpha)
    if stats.peak >= reject:
        facts = decision_evidence(state, policy, now, ts)
        reason = regression_reason(stats, policy)
        return _decide(state, Action.ROLLBACK, 0, reason, now, facts, phase=Phase.ROLLED_BACK)

    tally = stats.step
    enough = min(tally.baseline.requests, tally.candidate.requests) >= policy.min_requests
    proven = (
        enough
        and len(state.thresholds_ms) == policy.latency_metrics
        and all(v >= reject for v in stats.values[stats.latency + 2 :])
    )
    age = now - state.step_started
    if age < policy.interval and not proven:
        reason = f"{policy.interval - age:.1f}s left at {state.weight}%"
        return CanaryDecision(Action.HOLD, reason, state, None, policy, now, ts)
    ratio = sample_ratio(stats, state.weight / 100.0, policy.sample_ratio_tolerance)
    mismatch = ratio >= math.log(1.0 / SAMPLE_RATIO_ALPHA)
    seen = tally.baseline.requests + tally.candidate.requests
    lost = tally.missing / (seen + tally.missing) if tally.missing else 0.0
    if age < policy.interval and (mismatch or lost > policy.max_missing):
        reason = f"{policy.interval - age:.1f}s left at {state.weight}%"
        return CanaryDecision(Action.HOLD, reason, state, None, policy, now, ts)
    facts = decision_evidence(state, policy, now, ts, ratio)
    blocked = _blocked(state, stats, policy, ratio if mismatch else None, lost)
    if blocked is None:
        early = age < policy.interval
        return _promote(state, stats, read(stats), policy, now, facts, early=early)
    reason, restart = blocked
    return _inconclusive(state, stats, reason, policy, now, facts, restart)


def _blocked(
    state: CanaryState,
    stats: RampStats,
    policy: CanaryPolicy,
    mismatch: float | None,
    lost: float,
) -> tuple[str, bool] | None:
    """Why the step cannot be promoted (and whether it starts over), or None: promote.
    ``mismatch``: the sample-ratio log e-value when it rejected."""
    tally = stats.step
    if min(tally.baseline.requests, tally.candidate.requests) < policy.min_requests:
        return (
            f"too few requests to judge: candidate {tally.candidate.requests}, baseline"
            f" {tally.baseline.requests} (min-requests {policy.min_requests}); holding at"
            f" {state.weight}%"
        ), False
    if mismatch is not None:
        counted = tally.ratio_candidate + tally.ratio_baseline
        return (
            f"sample ratio mismatch: the candidate got {tally.ratio_candidate / counted:.2%}"
            f" of {counted} requests at a weight of {state.weight}% (e-value"
            f" {math.exp(min(mismatch, 700.0)):.3g} >= {1 / SAMPLE_RATIO_ALPHA:.0f}: broken"
            f" routing, or one side's logs lost); not comparing unlike traffic, collecting"
            f" again at {state.weight}%"
        ), True
    if lost > policy.max_missing:
        return (
            f"{tally.missing} log entries were lost in the step"
            f" ({lost:.2%} > max-missing {policy.max_missing:.2%});"
            f" not promoting on missing data, collecting again at {state.weight}%"
        ), True
    return None


def _decide(
    state: CanaryState,
    action: Action,
    to_weight: int,
    reason: str,
    now: float,
    facts: dict[str, Any],
    **changes: Any,
) -> CanaryDecision:
    event = CanaryEvent(
        at=now,
        service=state.service,
        action=action.value,
        from_weight=state.weight,
        to_weight=to_weight,
        reason=reason,
        evidence=facts,
    )
    new = state.evolve(event, weight=to_weight, reason=reason, **changes)
    return CanaryDecision(action, reason, new, event, at=now)


def _inconclusive(
    state: CanaryState,
    stats: RampStats,
    reason: str,
    policy: CanaryPolicy,
    now: float,
    facts: dict[str, Any],
    restart: bool,
) -> CanaryDecision:
    if not (restart or now - state.checked >= policy.interval):
        return CanaryDecision(Action.INCONCLUSIVE, reason, state, None, policy, now)
    changes: dict[str, Any] = {"checked": now}
    if restart:
        changes.update(step_started=now, stats=stats.new_step())
    return _decide(state, Action.INCONCLUSIVE, state.weight, reason, now, facts, **changes)


def _promote(
    state: CanaryState,
    stats: RampStats,
    reading: Reading,
    policy: CanaryPolicy,
    now: float,
    facts: dict[str, Any],
    *,
    early: bool,
) -> CanaryDecision:
    target = policy.next_weight(state.weight) or 100
    done = target >= 100
    tally = stats.step
    why = (
        f"proven no worse than {policy.margin:g}x the baseline (non-inferiority e-values"
        f" >= {1 / policy.alpha:g})"
        if early
        else f"interval over with no regression evidence (rollback e-value"
        f" {math.exp(min(reading.rollback, 700.0)):.2f} < {1 / policy.alpha:g})"
    )
    reason = (
        f"{tally.candidate.requests} candidate and {tally.baseline.requests} baseline"
        f" requests at {state.weight}%, {why}; "
        + ("promoted to 100%" if done else f"next step {target}%")
    )
    return _decide(
        state,
        Action.PROMOTE,
        target,
        reason,
        now,
        facts,
        phase=Phase.PROMOTED if done else Phase.RAMPING,
        step_started=now,
        stats=stats.new_step(),
        thresholds_ms=step_thresholds(policy, None) or (),
    )


def initial_state(
    policy: CanaryPolicy, now: float, *, previous: CanaryState | None = None
) -> CanaryState:
    """A fresh ramp at the first step (``previous``: a stored state of another candidate,
    whose history is kept)."""
    if previous is None:
        reason = f"ramp started at {policy.steps[0]}%"
        from_weight = 0
    else:
        reason = (
            f"candidate changed from {previous.candidate} to {policy.candidate}:"
            f" ramp restarted at {policy.steps[0]}%"
        )
        from_weight = previous.weight
    event = CanaryEvent(
        at=now,
        service=policy.service,
        action="start",
        from_weight=from_weight,
        to_weight=policy.steps[0],
        reason=reason,
    )
    return CanaryState(
        service=policy.service,
        version=policy.version,
        baseline=policy.baseline,
        candidate=policy.candidate,
        weight=policy.steps[0],
        phase=Phase.RAMPING,
        step_started=now,
        updated=now,
        reason=reason,
        events=((*previous.events, event) if previous else (event,)),
        thresholds_ms=step_thresholds(policy, None) or (),
    )


#: Operator commands (``junction canary ACTION SERVICE``, ``POST /canary/SERVICE/ACTION``).
COMMANDS = ("pause", "resume", "promote", "abort")


def apply_command(
    state: CanaryState, command: str, policy: CanaryPolicy, now: float, *, by: str = "operator"
) -> CanaryState:
    """The state after an operator command; :class:`CommandError` when it does not apply.

    ``pause`` freezes a ramp at its weight; ``resume`` continues a paused ramp (a new
    evidence window) or restarts a rolled-back or aborted one at the first step;
    ``promote`` sends the candidate to 100 now; ``abort`` sends it to 0 now. Pinned
    requests keep reaching the candidate in every phase (they never use the weights).
    """
    phase = state.phase
    if command == "pause":
        if phase is not Phase.RAMPING:
            raise CommandError(f"{state.service}: cannot pause a canary that is {phase.value}")
        weight, new_phase = state.weight, Phase.PAUSED
        reason = f"paused by {by} at {weight}%"
    elif command == "resume":
        if phase is Phase.PAUSED:
            weight = state.weight
            reason = f"resumed by {by} at {weight}%"
        elif phase in (Phase.ROLLED_BACK, Phase.ABORTED):
            weight = policy.steps[0]
            reason = f"restarted by {by} at {weight}%"
        else:
            raise CommandError(f"{state.service}: cannot resume a canary that is {phase.value}")
        new_phase = Phase.RAMPING
    elif command == "promote":
        if phase is Phase.PROMOTED:
            raise CommandError(f"{state.service}: already promoted")
        weight, new_phase = 100, Phase.PROMOTED
        reason = f"promoted to 100% by {by}"
    elif command == "abort":
        if phase is Phase.ABORTED:
            raise CommandError(f"{state.service}: already aborted")
        weight, new_phase = 0, Phase.ABORTED
        reason = f"aborted by {by}: weight 0"
    else:
        raise CommandError(f"unknown command {command!r} (one of {', '.join(COMMANDS)})")
    event = CanaryEvent(
        at=now,
        service=state.service,
        action=command,
        from_weight=state.weight,
        to_weight=weight,
        reason=reason,
        by=by,
    )
    # A resumed ramp judges a new step; a restarted one is a new ramp (new tests).
    resumed = command == "resume" and phase is Phase.PAUSED and state.stats is not None
    return state.evolve(
        event,
        weight=weight,
        phase=new_phase,
        step_started=now,
        checked=0.0,
        reason=reason,
        stats=state.stats.new_step() if resumed and state.stats is not None else None,
        thresholds_ms=step_thresholds(policy, None) or (),
    )
