"""The pure step function, driven by scripts of windows -> decisions, and operator commands."""

from __future__ import annotations

import pytest

from junction.als.windows import Figures
from junction.canary.errors import CommandError
from junction.canary.policy import CanaryPolicy
from junction.canary.state import MAX_EVENTS, CanaryState, Phase
from junction.canary.step import Action, Evidence, apply_command, initial_state, step

POLICY = CanaryPolicy(
    service="web-api",
    version="go",
    baseline="web-api-perl",
    candidate="web-api-go",
    steps=(1, 5, 25, 100),
    interval=10.0,
    min_requests=100,
    max_error_rate=0.05,
    max_error_increase=0.01,
    max_p99=500.0,
    max_p99_ratio=1.5,
    p99_slack=5.0,
    max_missing=0.0,
)


def figs(requests: int, failures: int = 0, p99: float = 20.0) -> Figures:
    return Figures(requests, failures, failures, 0, p99 / 2, p99 * 0.9, p99)


def ev(cand: Figures, base: Figures | None = None, missing: int = 0) -> Evidence:
    return Evidence(0.0, 0.0, base if base is not None else figs(1000), cand, missing)


HEALTHY = ev(figs(200))


def start(now: float = 0.0) -> CanaryState:
    return initial_state(POLICY, now)


def run(script: list[tuple[float, Evidence]]) -> list[tuple[Action, int, Phase]]:
    """Apply the steps in order, as the controller would; (action, weight, phase) each."""
    state = start()
    out = []
    for now, evidence in script:
        d = step(state, evidence, POLICY, now)
        state = d.state
        out.append((d.action, state.weight, state.phase))
    return out


def test_initial_state() -> None:
    s = start(5.0)
    assert (s.weight, s.phase, s.step_started) == (1, Phase.RAMPING, 5.0)
    assert [e.action for e in s.events] == ["start"]


def test_a_healthy_candidate_is_promoted_through_every_step() -> None:
    assert run(
        [(10.0, HEALTHY), (20.0, HEALTHY), (30.0, HEALTHY), (40.0, HEALTHY), (50.0, HEALTHY)]
    ) == [
        (Action.PROMOTE, 5, Phase.RAMPING),
        (Action.PROMOTE, 25, Phase.RAMPING),
        (Action.PROMOTE, 100, Phase.PROMOTED),
        (Action.HOLD, 100, Phase.PROMOTED),
        (Action.HOLD, 100, Phase.PROMOTED),
    ]


def test_holds_until_the_interval_has_passed() -> None:
    assert run([(3.0, HEALTHY), (9.9, HEALTHY), (10.0, HEALTHY), (15.0, HEALTHY)]) == [
        (Action.HOLD, 1, Phase.RAMPING),
        (Action.HOLD, 1, Phase.RAMPING),
        (Action.PROMOTE, 5, Phase.RAMPING),
        (Action.HOLD, 5, Phase.RAMPING),  # a new step: a new interval
    ]


def test_too_few_requests_is_inconclusive_never_a_promotion() -> None:
    few = ev(figs(99))
    assert run([(10.0, few), (11.0, few), (30.0, ev(figs(200), figs(50))), (31.0, HEALTHY)]) == [
        (Action.INCONCLUSIVE, 1, Phase.RAMPING),
        (Action.INCONCLUSIVE, 1, Phase.RAMPING),
        (Action.INCONCLUSIVE, 1, Phase.RAMPING),  # the baseline is short of data too
        (Action.PROMOTE, 5, Phase.RAMPING),
    ]


def test_no_data_at_all_is_inconclusive() -> None:
    d = step(start(), ev(Figures(), Figures()), POLICY, 100.0)
    assert d.action is Action.INCONCLUSIVE and d.state.weight == 1
    assert "too few requests" in d.reason


def test_inconclusive_events_are_recorded_once_per_interval() -> None:
    state = start()
    actions = []
    for now in (10.0, 11.0, 12.0, 21.0):
        d = step(state, ev(figs(5)), POLICY, now)
        actions.append(d.event is not None)
        state = d.state
    assert actions == [True, False, False, True]
    assert [e.action for e in state.events] == ["start", "inconclusive", "inconclusive"]


def test_lost_log_entries_block_the_promotion_and_restart_the_window() -> None:
    d = step(start(), ev(figs(200), missing=3), POLICY, 10.0)
    assert d.action is Action.INCONCLUSIVE and d.state.weight == 1
    assert d.state.step_started == 10.0  # the evidence so far is incomplete: collect again
    assert "3 log entries were lost" in d.reason
    assert d.event is not None and d.event.evidence is not None and d.event.evidence["missing"] == 3


def test_tolerated_losses_do_not_block() -> None:
    policy = CanaryPolicy(
        service="web-api", version="go", baseline="web-api-perl", candidate="web-api-go",
        steps=(1, 100), interval=10.0, min_requests=100, max_missing=0.01,
    )  # fmt: skip
    d = step(initial_state(policy, 0.0), ev(figs(200), figs(800), missing=5), policy, 10.0)
    assert d.action is Action.PROMOTE and d.state.phase is Phase.PROMOTED


def test_a_failing_candidate_is_rolled_back_at_once_with_the_reason() -> None:
    bad = ev(figs(120, failures=24))  # 20 % errors
    d = step(start(), bad, POLICY, 2.0)  # before the interval: rollbacks do not wait
    assert d.action is Action.ROLLBACK
    assert (d.state.weight, d.state.phase) == (0, Phase.ROLLED_BACK)
    assert "candidate error rate 20.00% > max-error-rate 5.00%" in d.reason
    assert d.event is not None and d.event.to_weight == 0
    evidence = d.event.evidence
    assert evidence is not None
    assert evidence["candidate"]["failures"] == 24 and evidence["baseline"]["requests"] == 1000
    assert evidence["thresholds"]["max_error_rate"] == 0.05
    # Nothing moves afterwards.
    assert step(d.state, HEALTHY, POLICY, 100.0).action is Action.HOLD


def test_failures_are_not_judged_on_too_few_requests() -> None:
    d = step(start(), ev(figs(10, failures=5)), POLICY, 2.0)
    assert d.action is Action.HOLD and d.state.weight == 1


def test_rollback_even_with_lost_entries() -> None:
    d = step(start(), ev(figs(200, failures=40), missing=500), POLICY, 3.0)
    assert d.action is Action.ROLLBACK


@pytest.mark.parametrize(
    ("cand", "base", "reason"),
    [
        (
            figs(200, failures=8),
            figs(1000, failures=10),
            "exceeds baseline's 1.00% by more than max-error-increase 1.00%",
        ),
        (figs(200, p99=600.0), figs(1000, p99=500.0), "candidate p99 600.0 ms > max-p99 500 ms"),
        (
            figs(200, p99=100.0),
            figs(1000, p99=50.0),
            "candidate p99 100.0 ms > 1.5 x baseline's 50.0 ms",
        ),
    ],
)
def test_thresholds(cand: Figures, base: Figures, reason: str) -> None:
    d = step(start(), ev(cand, base), POLICY, 10.0)
    assert d.action is Action.ROLLBACK and reason in d.reason


@pytest.mark.parametrize(
    ("cand", "base"),
    [
        (figs(200, failures=3), figs(1000, failures=10)),  # 1.5 % vs 1 %: within +1 point
        (figs(200, p99=6.0), figs(1000, p99=2.0)),  # 3x, but only 4 ms: under the slack
        (
            figs(200, failures=8),
            figs(50, failures=0),
        ),  # relative checks need a baseline of min-requests
    ],
)
def test_within_thresholds_or_not_judgeable(cand: Figures, base: Figures) -> None:
    assert step(start(), ev(cand, base), POLICY, 10.0).action is not Action.ROLLBACK


def test_events_are_bounded() -> None:
    state = start()
    for i in range(MAX_EVENTS + 20):
        state = step(state, ev(figs(1)), POLICY, 10.0 * (i + 1)).state
    assert len(state.events) == MAX_EVENTS


def test_state_round_trips_through_json() -> None:
    d = step(start(), HEALTHY, POLICY, 10.0)
    assert CanaryState.loads(d.state.dumps()) == d.state


@pytest.mark.parametrize(
    ("phase", "command", "weight", "after"),
    [
        (Phase.RAMPING, "pause", 5, Phase.PAUSED),
        (Phase.PAUSED, "resume", 5, Phase.RAMPING),
        (Phase.ROLLED_BACK, "resume", 1, Phase.RAMPING),
        (Phase.ABORTED, "resume", 1, Phase.RAMPING),
        (Phase.RAMPING, "promote", 100, Phase.PROMOTED),
        (Phase.ROLLED_BACK, "promote", 100, Phase.PROMOTED),
        (Phase.RAMPING, "abort", 0, Phase.ABORTED),
        (Phase.PROMOTED, "abort", 0, Phase.ABORTED),
    ],
)
def test_commands(phase: Phase, command: str, weight: int, after: Phase) -> None:
    state = start().evolve(weight=5, phase=phase)
    new = apply_command(state, command, POLICY, 50.0)
    assert (new.weight, new.phase, new.step_started) == (weight, after, 50.0)
    assert new.events[-1].action == command and new.events[-1].by == "operator"


@pytest.mark.parametrize(
    ("phase", "command", "message"),
    [
        (Phase.PAUSED, "pause", "cannot pause a canary that is paused"),
        (Phase.RAMPING, "resume", "cannot resume a canary that is ramping"),
        (Phase.PROMOTED, "resume", "cannot resume a canary that is promoted"),
        (Phase.PROMOTED, "promote", "already promoted"),
        (Phase.ABORTED, "abort", "already aborted"),
        (Phase.RAMPING, "launch", "unknown command 'launch'"),
    ],
)
def test_commands_that_do_not_apply(phase: Phase, command: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        apply_command(start().evolve(phase=phase), command, POLICY, 1.0)


def test_paused_canaries_do_not_step() -> None:
    paused = apply_command(start(), "pause", POLICY, 1.0)
    assert step(paused, ev(figs(500, failures=400)), POLICY, 100.0).action is Action.HOLD
