#!/usr/bin/env python3
"""Canary decision benchmark (issue 10): the ramp policy's error rates, power and speed.

Every row is ``--runs`` simulated ramps (default 1,000) of one scenario, checked at the live
tick (0.5 s), under two policies side by side:

- **new**: the live controller, windows and step (:func:`junction.canary.simulate.run_batch`,
  the code ``junction canary simulate`` runs), with the ramp policy's defaults;
- **old**: the threshold rule Junction used before issue 10 (``max-error-rate`` 5 %,
  ``max-error-increase`` 1 point, ``max-p99-ratio`` 1.5 beyond a 5 ms slack, judged from
  ``min-requests`` 100 on the evidence since the step began, re-checked every tick). It is
  kept here, and only here, as a negative control: :func:`old_violations` and
  :func:`old_rule_run` are a copy of that rule; the product no longer has it. Its p99s come
  from a log-bucketed histogram with DDSketch's 1 % relative accuracy, as the old windows'.

Traffic (both policies, :class:`junction.canary.simulate.Traffic`): Poisson(rps x tick)
requests per tick split by the weight the policy set, Bernoulli errors, log-normal
latencies (median 20 ms, shape 0.5), the candidate's times ``latency-ratio``.

Claims checked (the issue's goals):

- A/A (the candidate is the baseline): false rollbacks at most alpha = 0.05 within the
  binomial (Wilson 95 %) interval, at 0.1 %, 1 % and 5 % errors, and for latency;
- power: +5 points of errors on a 1 % baseline at a 10 % first step, 200 req/s: rolled back
  in >= 99 % of runs within two step intervals (also +2 points and latency x1.25, shown);
- a healthy candidate (the A/A rows) promoted through every step in >= 95 % of runs.

    .venv/bin/python loadtest/canary_bench.py --runs 1000 --workers 2 --out docs/benchmarks.md

writes its section of docs/benchmarks.md (between ``<!-- canary-bench:start -->`` and
``<!-- canary-bench:end -->``; the rest is kept). ``--runs 20`` is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from junction.canary.simulate import (
    RunOutcome,
    Simulation,
    Summary,
    Traffic,
    run_batch,
    run_seeds,
    summarize,
)
from junction.config.load import load_config
from junction.config.model import Config

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- canary-bench:start -->", "<!-- canary-bench:end -->"
ALPHA = 0.05
TICK = 0.5
INTERVAL = 60.0
DEFAULT_STEPS = (1, 5, 10, 25, 50, 100)
POWER_STEPS = (10, 25, 50, 100)


def config_for(steps: Sequence[int]) -> Config:
    """The benchmark's config: one service, the ramp policy's defaults but for the steps."""
    return load_config(
        f"""\
listener: {{listen: {{address: 127.0.0.1, port: 8000}}}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {{prefix: [/api], weight: 90}}
    web-api-go: {{prefix: [/api], weight: 10}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    canary: {{version: go, weight: 0, ramp: {{steps: {list(steps)}, interval: {INTERVAL:g}}}}}
""",
        "canary-bench.yaml",
    )


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    kind: str  # "aa" (false rollbacks, healthy promotion) or "power"
    traffic: Traffic
    steps: tuple[int, ...]


def rows(rps: float) -> list[Row]:
    return [
        Row("A/A, 0.1 % errors", "aa", Traffic(rps, 0.001, 0.001), DEFAULT_STEPS),
        Row("A/A, 1 % errors", "aa", Traffic(rps, 0.01, 0.01), DEFAULT_STEPS),
        Row("A/A, 5 % errors", "aa", Traffic(rps, 0.05, 0.05), DEFAULT_STEPS),
        Row("A/A latency (no errors)", "aa", Traffic(rps, 0.0, 0.0), DEFAULT_STEPS),
        Row(
            "+5 points (1 % -> 6 %), 10 % first step",
            "power",
            Traffic(rps, 0.01, 0.06),
            POWER_STEPS,
        ),
        Row(
            "+2 points (1 % -> 3 %), 10 % first step",
            "power",
            Traffic(rps, 0.01, 0.03),
            POWER_STEPS,
        ),
        Row(
            "latency x1.25, 10 % first step",
            "power",
            Traffic(rps, 0.01, 0.01, latency_ratio=1.25),
            POWER_STEPS,
        ),
    ]


# ---- the OLD threshold rule (negative control; the product no longer has it) ---------------


@dataclass(frozen=True, slots=True)
class OldPolicy:
    """The old ``CanaryRamp`` defaults."""

    steps: tuple[int, ...]
    interval: float = INTERVAL
    min_requests: int = 100
    max_error_rate: float = 0.05
    max_error_increase: float | None = 0.01
    max_p99: float | None = None
    max_p99_ratio: float | None = 1.5
    p99_slack: float = 5.0


def old_violations(
    cand: tuple[int, int, float | None], base: tuple[int, int, float | None], p: OldPolicy
) -> list[str]:
    """A copy of the OLD rule (``junction.canary.step.violations`` before issue 10) on
    (requests, failures, p99 ms) of each side since the step began."""
    c_requests, c_failures, c_p99 = cand
    b_requests, b_failures, b_p99 = base
    if c_requests < p.min_requests:
        return []
    out: list[str] = []
    rate = c_failures / c_requests
    if rate > p.max_error_rate:
        out.append("max-error-rate")
    if p.max_p99 is not None and c_p99 is not None and c_p99 > p.max_p99:
        out.append("max-p99")
    if b_requests >= p.min_requests:
        base_rate = b_failures / b_requests
        if p.max_error_increase is not None and rate - base_rate > p.max_error_increase:
            out.append("max-error-increase")
        ratio = p.max_p99_ratio
        if (
            ratio is not None
            and c_p99 is not None
            and b_p99 is not None
            and c_p99 > ratio * b_p99
            and c_p99 - b_p99 > p.p99_slack
        ):
            out.append("max-p99-ratio")
    return out


_GAMMA = (1 + 0.01) / (1 - 0.01)  # DDSketch's bucket ratio for 1 % relative accuracy
_LOG_GAMMA = math.log(_GAMMA)
_OFFSET, _BINS = 400, 1400  # buckets for 0.0003 ms .. 10^8 ms


class Histogram:
    """A DDSketch-like log-bucketed histogram (Masson, Rim, Lee, VLDB 2019), in numpy."""

    def __init__(self) -> None:
        self.counts = np.zeros(_BINS, dtype=np.int64)
        self.n = 0

    def add(self, ms: np.ndarray) -> None:
        idx = np.ceil(np.log(ms) / _LOG_GAMMA).astype(np.int64) + _OFFSET
        self.counts += np.bincount(np.clip(idx, 0, _BINS - 1), minlength=_BINS)
        self.n += len(ms)

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = q * (self.n - 1)
        i = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        return 2 * _GAMMA ** (i - _OFFSET) / (_GAMMA + 1)


def old_rule_run(traffic: Traffic, policy: OldPolicy, seed: int, max_seconds: float) -> RunOutcome:
    """One ramp under the OLD rule: rollback the first tick a threshold breaks; promote after
    ``interval`` when both sides have ``min-requests``; else hold."""
    rng = np.random.default_rng(seed)
    mu = math.log(traffic.latency_ms)
    steps = policy.steps
    weight, step_started, now = steps[0], 0.0, 0.0
    cand_total = promotions = 0
    fresh = True
    while True:
        if fresh:
            c_n = c_err = b_n = b_err = 0
            c_hist, b_hist = Histogram(), Histogram()
            fresh = False
        if now >= max_seconds:
            return RunOutcome("undecided", now, cand_total, promotions)
        now += TICK
        n = int(rng.poisson(traffic.rps * TICK))
        nc = int(rng.binomial(n, weight / 100.0)) if n else 0
        nb = n - nc
        cand_total += nc
        c_n += nc
        b_n += nb
        if nc:
            c_err += int(rng.binomial(nc, traffic.candidate_error))
            c_hist.add(rng.lognormal(mu, traffic.latency_sigma, nc) * traffic.latency_ratio)
        if nb:
            b_err += int(rng.binomial(nb, traffic.baseline_error))
            b_hist.add(rng.lognormal(mu, traffic.latency_sigma, nb))
        cand = (c_n, c_err, c_hist.quantile(0.99) if c_n >= policy.min_requests else None)
        base = (b_n, b_err, b_hist.quantile(0.99) if b_n >= policy.min_requests else None)
        if old_violations(cand, base, policy):
            return RunOutcome("rollback", now, cand_total, promotions)
        if now - step_started >= policy.interval and min(c_n, b_n) >= policy.min_requests:
            promotions += 1
            later = [s for s in steps if s > weight]
            if not later or later[0] >= 100:
                return RunOutcome("promoted", now, cand_total, promotions)
            weight, step_started, fresh = later[0], now, True


def old_batch(row: Row, seeds: Sequence[int], max_seconds: float) -> list[RunOutcome]:
    policy = OldPolicy(row.steps)
    return [old_rule_run(row.traffic, policy, s, max_seconds) for s in seeds]


# ---- running -------------------------------------------------------------------------------


def new_batch(row: Row, seeds: Sequence[int], max_seconds: float) -> list[RunOutcome]:
    sim = Simulation(config_for(row.steps), "web-api", row.traffic, TICK, max_seconds)
    return run_batch(sim, seeds)


@dataclass(frozen=True, slots=True)
class Result:
    row: Row
    policy: str
    outcomes: list[RunOutcome]
    cpu_seconds: float

    @property
    def summary(self) -> Summary:
        return summarize(self.outcomes)

    def rolled_back_within(self, seconds: float) -> int:
        return sum(1 for o in self.outcomes if o.outcome == "rollback" and o.seconds <= seconds)


def _timed(
    fn: str, row: Row, seeds: Sequence[int], max_seconds: float
) -> tuple[list[RunOutcome], float]:
    start = time.process_time()
    out = (new_batch if fn == "new" else old_batch)(row, seeds, max_seconds)
    return out, time.process_time() - start


def max_seconds_for(row: Row) -> float:
    return 4 * INTERVAL * (len(row.steps) - 1)


def _load_cache(
    path: Path | None, runs: int, seed: int, rps: float
) -> dict[tuple[str, str], Result]:
    """Rows already run with these settings (``--cache``: one JSON line per row and policy)."""
    out: dict[tuple[str, str], Result] = {}
    if path is None or not path.exists():
        return out
    by_name = {r.name: r for r in rows(rps)}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        row = by_name.get(doc["row"])
        if row is None or (doc["runs"], doc["seed"], doc["rps"]) != (runs, seed, rps):
            continue
        outcomes = [RunOutcome(*o) for o in doc["outcomes"]]
        out[(row.name, doc["policy"])] = Result(row, doc["policy"], outcomes, doc["cpu"])
    return out


def _save(path: Path | None, result: Result, runs: int, seed: int, rps: float) -> None:
    if path is None:
        return
    doc = {
        "row": result.row.name,
        "policy": result.policy,
        "runs": runs,
        "seed": seed,
        "rps": rps,
        "cpu": result.cpu_seconds,
        "outcomes": [
            [o.outcome, o.seconds, o.candidate_requests, o.promotions] for o in result.outcomes
        ],
    }
    with path.open("a") as f:
        f.write(json.dumps(doc) + "\n")


def run_all(
    runs: int,
    seed: int,
    workers: int,
    rps: float,
    only: Sequence[str],
    cache: Path | None = None,
) -> list[Result]:
    """Every chosen row under both policies, a row at a time (each spread over ``workers``
    processes); with ``cache``, rows already there are read back and new ones appended, so
    an interrupted run goes on where it stopped."""
    chosen = [r for r in rows(rps) if not only or any(o in r.name for o in only)]
    seeds = run_seeds(seed, runs)
    chunk = max(1, math.ceil(runs / (4 * workers)))
    results = _load_cache(cache, runs, seed, rps)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    # The rows the claims rest on first, so an interrupted run has them.
    first = ("A/A, 1 %", "+5 points", "+2 points", "latency x1.25")
    order = sorted(chosen, key=lambda r: next((i for i, f in enumerate(first) if f in r.name), 9))
    try:
        for row in order:
            for policy in ("new", "old"):
                if (row.name, policy) in results:
                    continue
                tasks = [
                    (policy, row, seeds[i : i + chunk], max_seconds_for(row))
                    for i in range(0, runs, chunk)
                ]
                if pool is not None:
                    done = [f.result() for f in [pool.submit(_timed, *t) for t in tasks]]
                else:
                    done = [_timed(*t) for t in tasks]
                result = Result(
                    row, policy, [o for part, _ in done for o in part], sum(c for _, c in done)
                )
                results[(row.name, policy)] = result
                _save(cache, result, runs, seed, rps)
                sys.stderr.write(f"done: {row.name} / {policy} ({result.cpu_seconds:.0f} s CPU)\n")
    finally:
        if pool is not None:
            pool.shutdown()
    return [results[(r.name, p)] for r in chosen for p in ("new", "old")]


# ---- the report ----------------------------------------------------------------------------


def _rate(count: int, runs: int) -> str:
    from junction.als.stats import wilson

    low, high = wilson(count, runs)
    return f"{count / runs:.1%} [{low:.1%}, {high:.1%}]"


def _mp(v: tuple[float, float] | None, unit: str = "") -> str:
    return "-" if v is None else f"{v[0]:,.0f}{unit} / {v[1]:,.0f}{unit}"


def checks(results: Sequence[Result]) -> list[str]:
    """The claims, each PASS or FAIL, for the new policy (and what the old one did)."""
    out = []
    for r in results:
        s = r.summary
        rb = s.rates["rollback"]
        if r.row.kind == "aa":
            ok = rb.low <= ALPHA
            out.append(
                f"{r.policy}: {r.row.name}: false rollbacks {rb.share:.1%} (95 % CI low"
                f" {rb.low:.1%}) <= alpha {ALPHA:g}: {'PASS' if ok else 'FAIL'}"
            )
            pr = s.rates["promoted"]
            out.append(
                f"{r.policy}: {r.row.name}: promoted through every step {pr.share:.1%}"
                f" >= 95 %: {'PASS' if pr.share >= 0.95 else 'FAIL'}"
            )
        elif r.row.name.startswith("+5"):
            within = r.rolled_back_within(2 * INTERVAL)
            share = within / s.runs
            out.append(
                f"{r.policy}: {r.row.name}: rolled back within two intervals {share:.1%}"
                f" >= 99 %: {'PASS' if share >= 0.99 else 'FAIL'}"
            )
    return out


def markdown(
    results: Sequence[Result],
    runs: int,
    seed: int,
    workers: int,
    rps: float,
    wall: float,
    load: tuple[float, float],
) -> str:
    lines = [
        "## Canary decisions: the anytime-valid policy against the old thresholds (issue 10)",
        "",
        f"{runs:,} simulated ramps per row and policy, checked every {TICK:g} s (the live"
        f" tick), {rps:g} req/s, log-normal latencies (median 20 ms, shape 0.5), interval"
        f" {INTERVAL:g} s; steps {list(DEFAULT_STEPS)} for the A/A rows,"
        f" {list(POWER_STEPS)} for the others. **new**: the live controller, windows and step"
        " (`junction canary simulate`), the ramp policy's defaults; **old**: the threshold rule"
        " before issue 10 (a copy kept in the benchmark only, as a negative control). A run"
        " that has neither rolled back nor reached 100 % after 4x its minimum ramp time is"
        " *undecided*. Rates with their 95 % Wilson intervals; times and candidate requests"
        " as median / p90.",
        "",
        "| scenario | policy | rolled back | within 2 intervals | s to rollback | candidate"
        " requests to rollback | promoted to 100 % | ramp s (min) | candidate requests to"
        " promote | undecided |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        minimum = INTERVAL * (len(r.row.steps) - 1)
        lines.append(
            f"| {r.row.name} | {r.policy} | {_rate(s.rates['rollback'].count, s.runs)}"
            f" | {r.rolled_back_within(2 * INTERVAL) / s.runs:.1%}"
            f" | {_mp(s.seconds['rollback'])} | {_mp(s.candidate_requests['rollback'])}"
            f" | {_rate(s.rates['promoted'].count, s.runs)}"
            f" | {_mp(s.seconds['promoted'])} ({minimum:g})"
            f" | {_mp(s.candidate_requests['promoted'])}"
            f" | {s.rates['undecided'].share:.1%} |"
        )
    cpu = {p: sum(r.cpu_seconds for r in results if r.policy == p) for p in ("new", "old")}
    ramps = {p: sum(len(r.outcomes) for r in results if r.policy == p) for p in ("new", "old")}
    lines += [
        "",
        "Checks:",
        "",
        *[f"- {c}" for c in checks(results)],
        "",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), {workers} worker processes,"
        f" {wall:,.0f} s wall (this invocation); load average (1 min) {load[0]:.2f} at start,"
        f" {load[1]:.2f} at end. CPU per simulated ramp:"
        f" new {1000 * cpu['new'] / max(1, ramps['new']):.0f} ms,"
        f" old {1000 * cpu['old'] / max(1, ramps['old']):.0f} ms.",
        "",
        "Reproduce:",
        "",
        "```sh",
        f".venv/bin/python loadtest/canary_bench.py --runs {runs} --seed {seed}"
        f" --workers {workers} --out docs/benchmarks.md",
        "```",
    ]
    return "\n".join(lines) + "\n"


def update_doc(path: Path, text: str) -> None:
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in doc and END in doc:
        before, rest = doc.split(START, 1)
        after = rest.split(END, 1)[1]
    else:
        before, after = doc.rstrip("\n") + "\n\n", "\n"
    path.write_text(before + START + "\n" + text + END + after)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=1000, help="ramps per row and policy")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rps", type=float, default=200.0)
    p.add_argument("--only", action="append", default=[], help="rows whose name contains this")
    p.add_argument("--out", type=Path, help="update this markdown file's section")
    p.add_argument("--cache", type=Path, help="JSON lines of finished rows (resume a run)")
    args = p.parse_args(argv)
    load0 = os.getloadavg()[0]
    start = time.monotonic()
    results = run_all(args.runs, args.seed, max(1, args.workers), args.rps, args.only, args.cache)
    wall = time.monotonic() - start
    text = markdown(
        results, args.runs, args.seed, args.workers, args.rps, wall, (load0, os.getloadavg()[0])
    )
    sys.stdout.write(text)
    if args.out is not None:
        update_doc(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
