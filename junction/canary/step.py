"""The canary's decisions, pure: ``step(state, evidence, policy, now) -> Decision``.

No I/O, no clock, no randomness: the same inputs give the same decision, so tests drive it
with scripts of windows. The controller (:mod:`junction.canary.controller`) gathers the
evidence and writes the resulting state; this module only decides.

Order of the checks (the first that applies wins):

1. not ramping (paused, promoted, rolled back, aborted): **hold**, no event;
2. the candidate has served ``min_requests`` in this step and breaks a threshold
   (absolute error rate or p99; relative ones when the baseline also has
   ``min_requests``): **rollback** at once, weight 0, the reason names the threshold. Lost
   log entries do not delay this: failures that were seen are real;
3. the step is younger than ``interval``: **hold**, no event;
4. either side has fewer than ``min_requests``: **inconclusive** (hold). Never promote on
   too little data, the most reported failure of Flagger's and Argo Rollouts' analyses;
5. more log entries were lost than ``max_missing`` allows (Envoy's ``logs_dropped`` or the
   receiver's own drops): **inconclusive**, and the step's evidence window restarts, since
   the figures of this one are incomplete;
6. otherwise **promote** to the next step; at 100 the phase becomes ``promoted``.

Inconclusive events are recorded at most once per interval (the state stays as it is
otherwise), so a quiet service does not flood the history.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from junction.als.windows import Figures
from junction.canary.errors import CommandError
from junction.canary.policy import CanaryPolicy
from junction.canary.state import CanaryEvent, CanaryState, Phase

__all__ = [
    "COMMANDS",
    "Action",
    "Decision",
    "Evidence",
    "apply_command",
    "initial_state",
    "step",
    "violations",
]


class Action(enum.StrEnum):
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the windows say about one step: both sides' figures over ``[start, end]`` and
    the log entries known lost in that time (all services: drops are not attributable)."""

    start: float
    end: float
    baseline: Figures
    candidate: Figures
    missing: int = 0

    @property
    def missing_share(self) -> float:
        seen = self.baseline.requests + self.candidate.requests
        return self.missing / (seen + self.missing) if self.missing else 0.0

    def to_json(self, policy: CanaryPolicy) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "baseline": {"cluster": policy.baseline, **self.baseline.to_json()},
            "candidate": {"cluster": policy.candidate, **self.candidate.to_json()},
            "missing": self.missing,
            "thresholds": policy.thresholds(),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one step: the next state (``state`` itself when nothing changed)."""

    action: Action
    reason: str
    state: CanaryState
    event: CanaryEvent | None = None


def violations(evidence: Evidence, policy: CanaryPolicy) -> list[str]:
    """The thresholds the candidate breaks, as readable reasons ([] if none or too little
    data to judge)."""
    cand, base = evidence.candidate, evidence.baseline
    if cand.requests < policy.min_requests:
        return []
    out: list[str] = []
    rate = cand.error_rate or 0.0
    if rate > policy.max_error_rate:
        out.append(
            f"candidate error rate {rate:.2%} > max-error-rate {policy.max_error_rate:.2%}"
            f" ({cand.failures} of {cand.requests})"
        )
    if policy.max_p99 is not None and cand.p99 is not None and cand.p99 > policy.max_p99:
        out.append(f"candidate p99 {cand.p99:.1f} ms > max-p99 {policy.max_p99:g} ms")
    if base.requests >= policy.min_requests:
        base_rate = base.error_rate or 0.0
        increase = policy.max_error_increase
        if increase is not None and rate - base_rate > increase:
            out.append(
                f"candidate error rate {rate:.2%} exceeds baseline's {base_rate:.2%} by more"
                f" than max-error-increase {increase:.2%}"
            )
        ratio = policy.max_p99_ratio
        if (
            ratio is not None
            and cand.p99 is not None
            and base.p99 is not None
            and cand.p99 > ratio * base.p99
            and cand.p99 - base.p99 > policy.p99_slack
        ):
            out.append(
                f"candidate p99 {cand.p99:.1f} ms > {ratio:g} x baseline's {base.p99:.1f} ms"
            )
    return out


def _event(
    state: CanaryState,
    action: str,
    to_weight: int,
    reason: str,
    now: float,
    evidence: Evidence | None,
    policy: CanaryPolicy,
) -> CanaryEvent:
    return CanaryEvent(
        at=now,
        service=state.service,
        action=action,
        from_weight=state.weight,
        to_weight=to_weight,
        reason=reason,
        evidence=evidence.to_json(policy) if evidence is not None else None,
    )


def step(state: CanaryState, evidence: Evidence, policy: CanaryPolicy, now: float) -> Decision:
    """Decide one step (the rules are in the module docstring)."""
    if state.phase is not Phase.RAMPING:
        return Decision(Action.HOLD, f"canary is {state.phase.value}", state)

    broken = violations(evidence, policy)
    if broken:
        reason = "; ".join(broken)
        event = _event(state, Action.ROLLBACK, 0, reason, now, evidence, policy)
        return Decision(
            Action.ROLLBACK,
            reason,
            state.evolve(event, weight=0, phase=Phase.ROLLED_BACK, reason=reason),
            event,
        )

    age = now - state.step_started
    if age < policy.interval:
        return Decision(Action.HOLD, f"{policy.interval - age:.1f}s left at {state.weight}%", state)

    cand, base = evidence.candidate, evidence.baseline
    restart = False
    if cand.requests < policy.min_requests or base.requests < policy.min_requests:
        reason = (
            f"too few requests to judge: candidate {cand.requests}, baseline {base.requests}"
            f" (min-requests {policy.min_requests}); holding at {state.weight}%"
        )
    elif evidence.missing_share > policy.max_missing:
        reason = (
            f"{evidence.missing} log entries were lost in the window"
            f" ({evidence.missing_share:.2%} > max-missing {policy.max_missing:.2%});"
            f" not promoting on missing data, collecting again at {state.weight}%"
        )
        restart = True
    else:
        return _promote(state, evidence, policy, now)

    changes: dict[str, Any] = {"step_started": now} if restart else {}
    if now - state.checked >= policy.interval or restart:
        event = _event(state, Action.INCONCLUSIVE, state.weight, reason, now, evidence, policy)
        return Decision(
            Action.INCONCLUSIVE,
            reason,
            state.evolve(event, checked=now, reason=reason, **changes),
            event,
        )
    return Decision(Action.INCONCLUSIVE, reason, state)


def _promote(state: CanaryState, evidence: Evidence, policy: CanaryPolicy, now: float) -> Decision:
    target = policy.next_weight(state.weight) or 100
    done = target >= 100
    reason = (
        f"{evidence.candidate.requests} candidate requests within thresholds"
        f" at {state.weight}%; " + ("promoted to 100%" if done else f"next step {target}%")
    )
    event = _event(state, Action.PROMOTE, target, reason, now, evidence, policy)
    return Decision(
        Action.PROMOTE,
        reason,
        state.evolve(
            event,
            weight=target,
            phase=Phase.PROMOTED if done else Phase.RAMPING,
            step_started=now,
            reason=reason,
        ),
        event,
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
    return state.evolve(
        event, weight=weight, phase=new_phase, step_started=now, checked=0.0, reason=reason
    )
