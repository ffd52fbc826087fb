"""CPU of the canary controller's decisions: 100 services ramping, one controller tick each
0.5 s (ticks of evidence are 1 s, so about every other controller tick judges a new one).

Two figures, CPU time (``time.process_time``, so a loaded machine's waiting is left out):

- ``step``: the decisions alone, on prepared per-tick evidence: every ramp's new tick folded
  into its tests in one stacked update (``judge_states``, as the controller does), then
  ``step`` per ramp;
- ``controller``: what the controller does per service without the store's I/O: fix the
  step's latency thresholds, gather the pending ticks from real windows holding every
  service's access-log counts (``Windows.step_evidence``), then ``step``.

Run: ``.venv/bin/python loadtest/canary_step_cpu.py [--services 100] [--ticks 240]``
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from dataclasses import dataclass

from junction.als.record import LogRecord
from junction.als.windows import Windows
from junction.canary.controller import fix_thresholds, gather_evidence
from junction.canary.evidence import SideCounts, StepEvidence, TickCounts, snap_threshold
from junction.canary.policy import CanaryPolicy
from junction.canary.state import CanaryState, Phase
from junction.canary.step import initial_state, judge_states, step


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


def policy(i: int) -> CanaryPolicy:
    # Long intervals, a tiny margin and alpha: the ramps keep ramping for the whole run (the
    # steady state is what is measured; the work per tick is the same for any alpha).
    return CanaryPolicy(
        service=f"svc-{i}", version="go", baseline=f"b-{i}", candidate=f"c-{i}",
        steps=(10, 25, 50, 100), interval=10_000.0, margin=1.01, alpha=1e-9,
    )  # fmt: skip


def bench_step(services: int, ticks: int, rng: random.Random) -> list[float]:
    """CPU ms per controller tick, step() alone."""
    pols = [policy(i) for i in range(services)]
    states = [
        initial_state(p, 0.0).evolve(thresholds_ms=tuple(snap_threshold(x) for x in (5, 20, 80)))
        for p in pols
    ]
    out = []

    def errors(n: int) -> int:
        return sum(rng.random() < 0.01 for _ in range(n))

    def slow(n: int, p: float) -> int:
        return sum(rng.random() < p for _ in range(n))

    for k in range(ticks):
        now = 3.0 + k * 0.5
        tick = int(now) - 3
        evidences = []
        for _ in pols:
            n = rng.randint(150, 250)
            c = sum(rng.random() < 0.1 for _ in range(n))
            base = SideCounts(n - c, errors(n - c), (slow(n - c, 0.5), slow(n - c, 0.1), 0))
            cand = SideCounts(c, errors(c), (slow(c, 0.5), slow(c, 0.1), 0))
            evidences.append(
                StepEvidence(1.0, states[0].thresholds_ms, (TickCounts(tick, base, cand),))
            )
        t0 = time.process_time()
        judged = judge_states(list(zip(states, evidences, pols, strict=True)), now)
        for i, p in enumerate(pols):
            states[i] = step(judged[i], evidences[i], p, now).state
        out.append((time.process_time() - t0) * 1000)
    ended = [s.reason for s in states if s.phase is not Phase.RAMPING or s.weight != 10]
    assert not ended, f"a ramp moved: not the steady state: {ended[:3]}"
    return out


def bench_controller(services: int, ticks: int, rng: random.Random) -> list[float]:
    """CPU ms per controller tick: thresholds, evidence from the windows, step()."""
    clock = Clock(1000.0)
    windows = Windows(clock=clock)
    pols = [policy(i) for i in range(services)]
    states: list[CanaryState] = [initial_state(p, clock.now) for p in pols]
    out = []
    for k in range(ticks):
        if k % 2 == 0:  # one second of traffic: ~200 requests per service
            records = []
            for p in pols:
                for _ in range(rng.randint(150, 250)):
                    cluster = p.candidate if rng.random() < 0.1 else p.baseline
                    status = 500 if rng.random() < 0.01 else 200
                    ms = rng.lognormvariate(2.5, 0.6)
                    records.append(
                        LogRecord(clock.now - 1 + rng.random(), "n", "/", cluster, status,
                                  ms, False, "GET", "h", "/", "", "")
                    )  # fmt: skip
            windows.add(records)
        clock.now += 0.5
        t0 = time.process_time()
        now = clock.now
        working = [fix_thresholds(windows, p, s, now) for p, s in zip(pols, states, strict=True)]
        evidences = [
            gather_evidence(windows, p, w, now) for p, w in zip(pols, working, strict=True)
        ]
        judged = judge_states(list(zip(working, evidences, pols, strict=True)), now)
        for i, p in enumerate(pols):
            states[i] = step(judged[i], evidences[i], p, now).state
        out.append((time.process_time() - t0) * 1000)
    ended = [s.reason for s in states if s.phase is not Phase.RAMPING or s.weight != 10]
    assert not ended, f"a ramp moved: not the steady state: {ended[:3]}"
    return out


def isolated(services: int, repeats: int = 40) -> tuple[float, float]:
    """CPU ms of one controller tick's decisions for ``services`` ramps, the least of
    ``repeats`` runs of the same pure computation (the least disturbed by other processes):
    (a tick that judges a new tick of evidence, a tick that has none to judge)."""
    pols = [policy(i) for i in range(services)]
    thresholds = tuple(snap_threshold(x) for x in (5, 20, 80))
    states = [initial_state(p, 0.0).evolve(thresholds_ms=thresholds) for p in pols]

    def evidence(tick: int) -> StepEvidence:
        base = SideCounts(180, 2, (90, 18, 2))
        cand = SideCounts(20, 0, (10, 2, 0))
        return StepEvidence(1.0, thresholds, (TickCounts(tick, base, cand),))

    first = [evidence(0)] * services
    states = judge_states(list(zip(states, first, pols, strict=True)), 3.0)
    new = [evidence(1)] * services

    def decide(now: float) -> None:
        judged = judge_states(list(zip(states, new, pols, strict=True)), now)
        for i, p in enumerate(pols):
            step(judged[i], new[i], p, now)

    def least(now: float) -> float:
        best = math.inf
        for _ in range(repeats):
            t0 = time.process_time()
            decide(now)
            best = min(best, (time.process_time() - t0) * 1000)
        return best

    return least(4.0), least(3.5)


def summary(name: str, ms: list[float], services: int) -> str:
    ms = sorted(ms[10:])  # warm-up: the first ticks fix thresholds and allocate
    median = statistics.median(ms)
    p90 = ms[int(len(ms) * 0.9)]
    return (
        f"{name:<11} {services} services: median {median:6.3f} ms per controller tick"
        f" (min {ms[0]:.3f}, p90 {p90:.3f}); {median / services * 1000:5.1f} us per service"
    )


def calibration(rounds: int = 5) -> float:
    """CPU ms of a fixed pure-Python loop (1e5 float additions): divides out the machine's
    speed and load, so runs on different machines compare as ratios."""
    best = math.inf
    for _ in range(rounds):
        t0 = time.process_time()
        x = 0.0
        for i in range(100_000):
            x += i * 0.5
        best = min(best, (time.process_time() - t0) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=240)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    before = calibration()
    judging, quiet = isolated(args.services)
    print(
        f"isolated    {args.services} services: {judging:.3f} ms for a controller tick that"
        f" judges a new tick, {quiet:.3f} ms for one that has none (ticks are 1 s, controller"
        f" ticks 0.5 s: {(judging + quiet) / 2:.3f} ms on average)"
    )
    print(summary("step", bench_step(args.services, args.ticks, rng), args.services))
    print(summary("controller", bench_controller(args.services, args.ticks, rng), args.services))
    print(
        f"calibration: 1e5 Python float additions took {before:.2f} ms before and"
        f" {calibration():.2f} ms after"
    )


if __name__ == "__main__":
    main()
