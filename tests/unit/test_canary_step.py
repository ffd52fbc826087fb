"""The pure step function, driven by scripts of per-tick evidence -> decisions, and operator
commands. Ticks are 1 s; a tick is judged once it ended ``settle`` (2 s) ago."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from junction.als.evidence import SideCounts, StepEvidence, TickCounts, snap_threshold
from junction.canary.errors import CommandError, StateFormatError
from junction.canary.policy import CanaryPolicy
from junction.canary.state import MAX_EVENTS, CanaryState, Phase
from junction.canary.step import (
    Action,
    CanaryDecision,
    apply_command,
    initial_state,
    judge_states,
    needs_write,
    pending_window,
    step,
    step_thresholds,
)

POLICY = CanaryPolicy(
    service="web-api",
    version="go",
    baseline="web-api-perl",
    candidate="web-api-go",
    steps=(1, 5, 25, 100),
    interval=10.0,
    min_requests=100,
    latency_thresholds=(100.0,),
)
SLOW = snap_threshold(100.0)


def side(requests: int, errors: int = 0, slow: int = 0) -> SideCounts:
    return SideCounts(requests, errors, (slow,))


CAND, BASE = side(20), side(1980)  # 1 % of 2000 requests a tick, no errors


def ev(
    first: int,
    last: int,
    cand: SideCounts = CAND,
    base: SideCounts = BASE,
    missing: int = 0,
    thresholds: tuple[float, ...] = (SLOW,),
) -> StepEvidence:
    """The same counts in every tick from ``first`` to ``last`` (inclusive)."""
    ticks = [TickCounts(t, base, cand) for t in range(first, last + 1)]
    return StepEvidence(1.0, thresholds, tuple(ticks), missing)


def start(now: float = 0.0, policy: CanaryPolicy = POLICY) -> CanaryState:
    return initial_state(policy, now)


def run(
    script: list[tuple[float, StepEvidence | None]], policy: CanaryPolicy = POLICY
) -> list[tuple[Action, int, Phase]]:
    """Apply the steps in order, as the controller would; (action, weight, phase) each.
    Evidence None: 2000 healthy requests a tick, split as the weights say."""
    state = start(policy=policy)
    out = []
    for now, evidence in script:
        if evidence is None:
            n = 20 * state.weight
            evidence = ev(0, int(now), cand=side(n), base=side(2000 - n))
        d = step(state, evidence, policy, now)
        state = d.state
        out.append((d.action, state.weight, state.phase))
    return out


def healthy(now: float) -> tuple[float, None]:
    return now, None


def test_initial_state_fixes_the_policy_thresholds() -> None:
    s = start(5.0)
    assert (s.weight, s.phase, s.step_started) == (1, Phase.RAMPING, 5.0)
    assert s.thresholds_ms == (SLOW,) and 100.0 <= SLOW < 102.1
    assert [e.action for e in s.events] == ["start"]
    assert s.stats is None


def test_a_healthy_candidate_is_promoted_through_every_step() -> None:
    assert run([healthy(10), healthy(20), healthy(30), healthy(40), healthy(50)]) == [
        (Action.PROMOTE, 5, Phase.RAMPING),
        (Action.PROMOTE, 25, Phase.RAMPING),
        (Action.PROMOTE, 100, Phase.PROMOTED),
        (Action.HOLD, 100, Phase.PROMOTED),
        (Action.HOLD, 100, Phase.PROMOTED),
    ]


def test_holds_until_the_interval_has_passed() -> None:
    assert run([healthy(3), healthy(9.9), healthy(10), healthy(15)]) == [
        (Action.HOLD, 1, Phase.RAMPING),
        (Action.HOLD, 1, Phase.RAMPING),
        (Action.PROMOTE, 5, Phase.RAMPING),
        (Action.HOLD, 5, Phase.RAMPING),  # a new step: a new interval
    ]


def test_only_closed_ticks_are_judged_once() -> None:
    d = step(start(), ev(0, 5), POLICY, 5.5)
    assert d.state.stats is not None and d.state.stats.last_tick == 2  # ended by 3.5
    # The same ticks again (a controller that re-reads) are not counted twice.
    again = step(d.state, ev(0, 5), POLICY, 5.5)
    assert again.state.stats is not None
    assert again.state.stats.step.candidate.requests == 3 * 20
    assert pending_window(d.state, POLICY, 7.5, 1.0) == (3.0, 4.0)
    assert pending_window(d.state, POLICY, 5.9, 1.0) is None


def test_too_few_requests_is_inconclusive_never_a_promotion() -> None:
    few = ev(0, 30, cand=side(5))
    assert run([(10.0, few), (11.0, few)]) == [
        (Action.INCONCLUSIVE, 1, Phase.RAMPING),
        (Action.INCONCLUSIVE, 1, Phase.RAMPING),
    ]
    d = step(start(), StepEvidence(1.0, (SLOW,)), POLICY, 100.0)
    assert d.action is Action.INCONCLUSIVE and d.state.weight == 1
    assert "too few requests" in d.reason


def test_inconclusive_events_are_recorded_once_per_interval() -> None:
    state = start()
    recorded = []
    for now in (10.0, 11.0, 12.0, 21.0):
        d = step(state, ev(0, 30, cand=side(1)), POLICY, now)
        recorded.append(d.event is not None)
        state = d.state
    assert recorded == [True, False, False, True]
    assert [e.action for e in state.events] == ["start", "inconclusive", "inconclusive"]


def test_lost_log_entries_block_the_promotion_and_restart_the_step() -> None:
    d = step(start(), ev(0, 10, missing=3), POLICY, 10.0)
    assert d.action is Action.INCONCLUSIVE and d.state.weight == 1
    assert d.state.step_started == 10.0  # the evidence so far is incomplete: collect again
    assert "3 log entries were lost" in d.reason
    assert d.event is not None and d.event.evidence is not None
    assert d.event.evidence["missing"] == 3
    assert d.state.stats is not None and d.state.stats.step.missing == 0  # a new step


def test_tolerated_losses_do_not_block() -> None:
    policy = CanaryPolicy(
        service="web-api", version="go", baseline="web-api-perl", candidate="web-api-go",
        steps=(1, 100), interval=10.0, min_requests=100, max_missing=0.01,
    )  # fmt: skip
    d = step(initial_state(policy, 0.0), ev(0, 10, missing=5), policy, 10.0)
    assert d.action is Action.PROMOTE and d.state.phase is Phase.PROMOTED


def test_a_failing_candidate_is_rolled_back_before_the_interval_with_the_evidence() -> None:
    bad = ev(0, 10, cand=side(20, errors=4), base=side(1980, errors=40))  # 20 % vs 2 %
    d = step(start(), bad, POLICY, 5.0)  # ticks 0..2 judged: 12 of 60 vs 120 of 5940
    assert d.action is Action.ROLLBACK
    assert (d.state.weight, d.state.phase) == (0, Phase.ROLLED_BACK)
    assert d.reason.startswith("regression: candidate errors 12 of 60 over the ramp (12 of 60 vs baseline 120 of 5940")
    assert ">= 1/alpha 20" in d.reason
    assert d.event is not None and d.event.to_weight == 0
    facts = d.event.evidence
    assert facts is not None
    assert facts["candidate"]["errors"] == 12 and facts["baseline"]["requests"] == 5940
    assert facts["tests"]["rollback_e"] >= 20 and facts["tests"]["errors_e"] > 40
    assert facts["tests"]["anytime_p"] <= 0.05
    assert facts["share"]["configured"] == 0.01
    assert facts["policy"]["alpha"] == 0.05
    # Nothing moves afterwards.
    assert step(d.state, ev(0, 100), POLICY, 100.0).action is Action.HOLD


def test_one_failure_is_not_a_regression() -> None:
    d = step(start(), ev(0, 0, cand=side(10, errors=1), base=side(1000)), POLICY, 3.0)
    assert d.action is Action.HOLD


def test_rollback_even_with_lost_entries() -> None:
    bad = ev(0, 10, cand=side(20, errors=8), missing=500)
    assert step(start(), bad, POLICY, 5.0).action is Action.ROLLBACK


def test_slow_candidate_is_rolled_back_on_latency() -> None:
    slow = ev(0, 10, cand=side(20, slow=10), base=side(1980, slow=99))
    d = step(start(), slow, POLICY, 8.0)
    assert d.action is Action.ROLLBACK
    assert "slower than threshold 1" in d.reason


def test_guardrail_rolls_back_when_both_sides_fail_alike() -> None:
    policy = CanaryPolicy(
        service="web-api", version="go", baseline="web-api-perl", candidate="web-api-go",
        max_error_rate=0.2, latency_thresholds=(100.0,),
    )  # fmt: skip
    awful = ev(0, 40, cand=side(20, errors=12), base=side(1980, errors=1188))
    d = step(start(policy=policy), awful, policy, 40.0)
    assert d.action is Action.ROLLBACK and "max-error-rate 20%" in d.reason


def test_evidence_counted_against_other_thresholds_judges_errors_only() -> None:
    stale = ev(0, 10, cand=side(20, slow=20), base=side(1980), thresholds=(50.0,))
    d = step(start(), stale, POLICY, 10.0)
    assert d.action is Action.PROMOTE
    assert d.event is not None and d.event.evidence is not None
    assert d.event.evidence["candidate"]["slow"] == [0]


def test_sample_ratio_mismatch_is_inconclusive_and_says_why() -> None:
    # The candidate should get 1 % of requests but gets 5 %: broken routing.
    lopsided = ev(0, 10, cand=side(100), base=side(1900))
    d = step(start(), lopsided, POLICY, 10.0)
    assert d.action is Action.INCONCLUSIVE
    assert d.reason.startswith("sample ratio mismatch: the candidate got 5.00% of")
    assert d.state.step_started == 10.0


def test_early_promotion_needs_proof_of_non_inferiority() -> None:
    policy = CanaryPolicy(
        service="web-api", version="go", baseline="web-api-perl", candidate="web-api-go",
        steps=(50, 100), interval=600.0, latency_thresholds=(100.0,),
    )  # fmt: skip
    state = start(policy=policy)
    same = ev(0, 200, cand=side(500, errors=25, slow=100), base=side(500, errors=25, slow=100))
    d = step(state, same, policy, 100.0)
    assert d.action is Action.PROMOTE and "proven no worse than 1.5x" in d.reason
    # Too little evidence for a proof: hold until the interval is over.
    few = ev(0, 200, cand=side(50, errors=1, slow=10), base=side(50, errors=1, slow=10))
    assert step(state, few, policy, 100.0).action is Action.HOLD


def test_a_a_through_the_step_function_stays_under_alpha() -> None:
    """Whole ramps of identical versions, every tick judged, seeded: false rollbacks within
    alpha + 3 sd (the old fixed thresholds rolled back 88 % of these)."""
    rng = np.random.default_rng(11)
    runs, rolled, promoted = 300, 0, 0
    policy = CanaryPolicy(
        service="s", version="go", baseline="b", candidate="c",
        steps=(10, 25, 50, 100), interval=20.0, latency_thresholds=(100.0,),
    )  # fmt: skip
    for _ in range(runs):
        state = initial_state(policy, 0.0)
        for now in range(3, 120):
            if state.phase is not Phase.RAMPING:
                break
            rps = rng.poisson(100)
            n_c = rng.binomial(rps, state.weight / 100)
            e_c, e_b = rng.binomial(n_c, 0.02), rng.binomial(rps - n_c, 0.02)
            s_c, s_b = rng.binomial(n_c, 0.1), rng.binomial(rps - n_c, 0.1)
            tick = TickCounts(now - 3, side(rps - n_c, e_b, s_b), side(n_c, e_c, s_c))
            state = step(state, StepEvidence(1.0, (SLOW,), (tick,)), policy, float(now)).state
        rolled += state.phase is Phase.ROLLED_BACK
        promoted += state.phase is Phase.PROMOTED
    bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert rolled / runs <= bound, f"{rolled} of {runs} A/A ramps rolled back"
    assert promoted / runs >= 0.9


def test_step_thresholds() -> None:
    quantiles = CanaryPolicy("s", "go", "b", "c")
    assert step_thresholds(quantiles, None) is None  # no baseline data yet
    assert step_thresholds(quantiles, (10.0, 50.0, 200.0)) == tuple(
        snap_threshold(x) for x in (10.0, 50.0, 200.0)
    )
    assert step_thresholds(POLICY, None) == (SLOW,)
    assert step_thresholds(CanaryPolicy("s", "go", "b", "c", latency_quantiles=()), None) == ()


def test_needs_write_only_on_checkpoints() -> None:
    policy = replace(POLICY, interval=100.0)
    s = start(policy=policy)
    d1 = step(s, ev(0, 5), policy, 5.0)
    assert needs_write(s, d1.state, 1.0)  # the tests' first state
    d2 = step(d1.state, ev(0, 8), policy, 8.0)
    assert not needs_write(d1.state, d2.state, 1.0)  # 3 ticks later: re-judged if lost
    d3 = step(d1.state, ev(0, 15), policy, 15.0)
    assert needs_write(d1.state, d3.state, 1.0)  # 10 ticks later


def test_events_are_bounded() -> None:
    state = start()
    for i in range(MAX_EVENTS + 20):
        state = step(state, ev(0, 0, cand=side(1)), POLICY, 10.0 * (i + 1)).state
    assert len(state.events) == MAX_EVENTS


def test_state_round_trips_through_json_with_its_tests() -> None:
    d: CanaryDecision = step(start(), ev(0, 8, cand=side(20, 1, 3)), POLICY, 8.0)
    back = CanaryState.loads(d.state.dumps())
    assert back == d.state and back.stats == d.state.stats
    assert back.thresholds_ms == (SLOW,)


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


def test_a_restarted_ramp_starts_new_tests() -> None:
    bad = step(start(), ev(0, 10, cand=side(20, errors=8)), POLICY, 5.0).state
    assert bad.phase is Phase.ROLLED_BACK and bad.stats is not None
    again = apply_command(bad, "resume", POLICY, 50.0)
    assert again.stats is None and again.phase is Phase.RAMPING


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
    assert step(paused, ev(0, 50, cand=side(20, 18)), POLICY, 100.0).action is Action.HOLD


def test_judging_all_ramps_at_once_decides_as_step_alone() -> None:
    """The controller's stacked update (judge_states) then step() gives the same states and
    decisions as step() on each ramp by itself."""
    rng = np.random.default_rng(5)
    states = [start() for _ in range(6)]
    for now in range(3, 30):
        evs = []
        for i in range(6):
            errors = int(rng.binomial(20, 0.3 if i == 0 else 0.01))
            cand = side(20, errors, int(rng.binomial(20, 0.1)))
            base = side(1980, int(rng.binomial(1980, 0.01)), int(rng.binomial(1980, 0.1)))
            # Ramps 4 and 5 get two ticks at once (a controller that fell behind).
            ticks = [TickCounts(now - 3, base, cand)] + (
                [TickCounts(now - 4, base, cand)] if i >= 4 else []
            )
            evs.append(StepEvidence.of(1.0, (SLOW,), ticks))
        together = judge_states([(s, e, POLICY) for s, e in zip(states, evs, strict=True)], now)
        for i in range(6):
            a = step(together[i], evs[i], POLICY, float(now))
            b = step(states[i], evs[i], POLICY, float(now))
            assert (a.action, a.reason, a.state) == (b.action, b.reason, b.state)
            assert a.state.stats == b.state.stats
            states[i] = a.state
    assert states[0].phase is Phase.ROLLED_BACK and states[1].phase is not Phase.ROLLED_BACK


def test_a_stored_state_with_broken_tests_is_named() -> None:
    data = step(start(), ev(0, 8), POLICY, 8.0).state.to_json()
    data["stats"]["grid"] = [[1.0, 2.0]]
    with pytest.raises(StateFormatError, match=r"stats grid of shape \(1, 2\)"):
        CanaryState.from_json(data)
    data["stats"] = {"grid": "x"}
    with pytest.raises(StateFormatError):
        CanaryState.from_json(data)
