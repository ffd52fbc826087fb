#!/usr/bin/env python3
"""Fleet canary benchmark (issue 11): N replicas each seeing 1/N of the traffic, one leader
deciding on their merged counts, against one receiver of all the traffic.

Each run is one simulated ramp at the live tick (0.5 s), with the live code: every replica
has its own :class:`~junction.als.windows.Windows` and :class:`CanaryController` with a
:class:`~junction.canary.coordinator.FleetCoordinator`; their evidence boards publish the
bounded JSON values (:func:`junction.canary.fleet.encode_bounded`) into an in-memory KV and
the leader reads and merges them (:meth:`EvidenceBoard.ingest`, :func:`merge_fleet`)
exactly as against Consul; only Consul's HTTP round trips are left out. Replica 0 leads
throughout (take-overs are the integration test's business). The single-receiver rows run
the same controller without a coordinator (file mode).

Traffic: Poisson(rps x tick) requests per tick, split by the weight the ramp set,
Bernoulli errors, log-normal latencies (median 20 ms, shape 0.5); every request goes to a
replica drawn uniformly (the load balancer).

Claims checked (the issue's): with 5 replicas, A/A false rollbacks stay at most alpha
(0.05) within the Wilson 95 % interval, and the time to detect +5 points of errors on a 1 %
baseline matches the single receiver's within its interval (the median's 95 %
distribution-free interval, from order statistics).

    .venv/bin/python loadtest/canary_fleet_bench.py --runs 600 --workers 2 --out docs/benchmarks.md

writes its section of docs/benchmarks.md (between ``<!-- canary-fleet-bench:start -->`` and
``<!-- canary-fleet-bench:end -->``). ``--runs 10`` is a smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from junction.als.evidence import bucket_edge, latency_bucket
from junction.als.record import SOURCE_SPLIT
from junction.als.windows import WindowKey, Windows
from junction.canary.controller import CanaryController
from junction.canary.coordinator import FleetCoordinator
from junction.canary.fleet import EvidenceBoard
from junction.canary.leader import Election
from junction.canary.memstore import MemoryStateStore
from junction.canary.policy import CanaryPolicy
from junction.canary.replay import ManualClock
from junction.canary.simulate import (
    RunOutcome,
    Simulation,
    Traffic,
    run_batch,
    run_seeds,
    single_ramp,
    summarize,
)
from junction.canary.state import Phase
from junction.config.load import load_config
from junction.config.model import Config

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- canary-fleet-bench:start -->", "<!-- canary-fleet-bench:end -->"
ALPHA = 0.05
TICK = 0.5
T0 = 1_767_225_600.0
STEPS = (10, 25, 50, 100)


def bench_config() -> Config:
    """One service; the ramp policy's defaults but for the steps (as the decision bench's
    power rows)."""
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
    canary:
      version: go
      weight: 10
      ramp: {{steps: {list(STEPS)}}}
""",
        "canary-fleet-bench",
    )


class MemoryKV:
    """The replicas' evidence values, as Consul KV holds them (Key, Value, ModifyIndex)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.index = 0

    def put(self, key: str, raw: bytes) -> None:
        self.index += 1
        self.entries[key] = {"Key": key, "Value": raw, "ModifyIndex": self.index}


class MemoryBoard(EvidenceBoard):
    """An evidence board whose KV is a :class:`MemoryKV` (same encoding, same parsing)."""

    def __init__(self, kv: MemoryKV, replica: str, clock: ManualClock) -> None:
        super().__init__(None, replica, clock=clock, wall=clock)  # type: ignore[arg-type]
        self.kv = kv

    async def publish(self, services: Any) -> bool:
        raw = self.encode(services)
        if raw is None:
            return False
        self.kv.put(self.key, raw)
        return True

    async def read(self) -> None:
        self.ingest(list(self.kv.entries.values()))

    async def withdraw(self) -> None:
        self.kv.entries.pop(self.key, None)


class FixedElection:
    """Replica 0 leads for the whole run (an election that never changes hands)."""

    def __init__(self, replica: str, leads: bool) -> None:
        self.replica = replica
        self.leads = leads
        self.state = Election(10.0, holding=leads, problem=None, holder="r0")

    def leader(self) -> bool:
        return self.leads

    def status(self) -> dict[str, Any]:
        return {"replica": self.replica, "leader": self.leads}

    async def run(self) -> None:
        pass

    async def resign(self) -> None:
        pass


def bucket_probabilities(median_ms: float, sigma: float) -> tuple[int, np.ndarray]:
    """(first bucket, probabilities) of a log-normal latency over the windows' 2 % latency
    buckets (as ``junction canary simulate`` draws them), tails beyond 6 sigma folded in."""
    low = latency_bucket(median_ms * math.exp(-6 * sigma))
    high = latency_bucket(median_ms * math.exp(6 * sigma))
    mu = math.log(median_ms)
    edges = [math.log(bucket_edge(k)) for k in range(low - 1, high + 1)]
    cdf = np.array([0.5 * math.erfc(-(e - mu) / (sigma * math.sqrt(2))) for e in edges])
    cdf[0], cdf[-1] = 0.0, 1.0
    return low, np.diff(cdf)


class SplitTraffic:
    """One tick's requests as counts, each replica's drawn on its own: Poisson traffic
    spread uniformly over N replicas is N independent Poisson streams of rate rps/N."""

    def __init__(self, traffic: Traffic, policy: CanaryPolicy, rng: np.random.Generator) -> None:
        self.traffic = traffic
        self.rng = rng
        base = bucket_probabilities(traffic.latency_ms, traffic.latency_sigma)
        cand = bucket_probabilities(
            traffic.latency_ms * traffic.latency_ratio, traffic.latency_sigma
        )
        self.sides = (
            (WindowKey("sim", policy.candidate, "", SOURCE_SPLIT), traffic.candidate_error, cand),
            (WindowKey("sim", policy.baseline, "", SOURCE_SPLIT), traffic.baseline_error, base),
        )

    def feed(self, windows: Sequence[Windows], now: float, weight: int, span: float = TICK) -> int:
        rng, share = self.rng, self.traffic.rps * span / len(windows)
        end = now - span / 2  # in the slot of the span's middle, as the simulator does
        candidate = 0
        for w in windows:
            n = int(rng.poisson(share))
            n_c = int(rng.binomial(n, weight / 100.0)) if n else 0
            candidate += n_c
            for (key, p_err, (first, probs)), count in zip(self.sides, (n_c, n - n_c), strict=True):
                if not count:
                    continue
                errors = int(rng.binomial(count, p_err))
                drawn = rng.multinomial(count, probs)
                hit = np.flatnonzero(drawn)
                w.add_counts(key, end, errors, {first + int(i): int(drawn[i]) for i in hit})
        return candidate


async def one_run(
    config: Config, policy: CanaryPolicy, traffic: Traffic, replicas: int, seed: int,
    max_seconds: float,
) -> RunOutcome:  # fmt: skip
    """One ramp with ``replicas`` replicas (1: one receiver, no coordinator)."""
    rng = np.random.default_rng(seed)
    clock = ManualClock(T0)
    store = MemoryStateStore()
    kv = MemoryKV()
    windows = [Windows(slot_seconds=1.0, horizon=300.0, clock=clock) for _ in range(replicas)]
    controllers = []
    for i in range(replicas):
        coordinator = None
        if replicas > 1:
            name = f"r{i}"
            coordinator = FleetCoordinator(
                FixedElection(name, i == 0),  # type: ignore[arg-type]
                MemoryBoard(kv, name, clock),
            )
        controllers.append(
            CanaryController(store, windows[i], lambda: config, tick=TICK, clock=clock,
                             coordinator=coordinator)
        )  # fmt: skip
    gen = SplitTraffic(traffic, policy, rng)
    leader, followers = controllers[0], controllers[1:]
    # As the simulator does: the service ran before its canary, so the baseline's recent
    # latencies (a step's thresholds come from them) are in every replica's windows.
    warm = min(policy.latency_lookback, 300.0)
    for second in range(math.ceil(warm), 0, -1):
        clock.now = T0 - (second - 1)
        gen.feed(windows, clock.now, 0, span=1.0)
    clock.now = T0
    await leader.tick()  # the ramp starts at the first step
    candidate_requests = promotions = ticks = 0
    while True:
        state = store.state(policy.service)
        assert state is not None
        if state.phase in (Phase.ROLLED_BACK, Phase.PROMOTED):
            outcome = "rollback" if state.phase is Phase.ROLLED_BACK else "promoted"
            return RunOutcome(outcome, clock.now - T0, candidate_requests, promotions)
        if clock.now - T0 >= max_seconds:
            return RunOutcome("undecided", clock.now - T0, candidate_requests, promotions)
        ticks += 1
        clock.now = T0 + ticks * TICK
        candidate_requests += gen.feed(windows, clock.now, state.weight)
        for c in followers:  # they publish (once a second); they never decide
            await c.tick()
        for decision in await leader.tick():
            if decision.event is not None and decision.event.action == "promote":
                promotions += 1


@dataclass(frozen=True)
class Row:
    name: str
    traffic: Traffic
    replicas: int
    max_seconds: float


def run_chunk(row: Row, seeds: Sequence[int]) -> list[RunOutcome]:
    config, policy = single_ramp(bench_config(), None)
    if row.replicas == 1:  # one receiver: the simulator `junction canary simulate` runs
        return run_batch(Simulation(config, None, row.traffic, TICK, row.max_seconds), seeds)

    async def runs() -> list[RunOutcome]:
        return [
            await one_run(config, policy, row.traffic, row.replicas, s, row.max_seconds)
            for s in seeds
        ]

    return asyncio.run(runs())


def run_row(row: Row, runs: int, seed: int, workers: int) -> list[RunOutcome]:
    seeds = run_seeds(seed, runs)
    if workers <= 1:
        return run_chunk(row, seeds)
    size = math.ceil(runs / workers)
    chunks = [seeds[i : i + size] for i in range(0, runs, size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(run_chunk, [row] * len(chunks), chunks))
    return [o for part in parts for o in part]


def median_interval(values: Sequence[float]) -> tuple[float, float, float] | None:
    """The median and its distribution-free 95 % interval (order statistics: ranks
    n/2 -+ 1.96 sqrt(n)/2)."""
    if not values:
        return None
    xs = sorted(values)
    n = len(xs)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half) - 1)
    hi = min(n - 1, math.ceil(n / 2 + half))
    return float(np.median(xs)), xs[lo], xs[hi]


def fmt_rate(count: int, runs: int, low: float, high: float) -> str:
    return f"{count}/{runs} = {count / runs:.1%} [{low:.1%}, {high:.1%}]"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--replicas", type=int, default=5)
    p.add_argument("--out", help="update this markdown file's fleet section")
    args = p.parse_args(argv)
    aa = Traffic(rps=200, baseline_error=0.01, candidate_error=0.01)
    bad = Traffic(rps=200, baseline_error=0.01, candidate_error=0.06)
    rows = [
        Row("A/A, 1 % errors", aa, 1, 600.0),
        Row("A/A, 1 % errors", aa, args.replicas, 600.0),
        Row("+5 points (1 % -> 6 %)", bad, 1, 240.0),
        Row("+5 points (1 % -> 6 %)", bad, args.replicas, 240.0),
    ]
    lines = [
        f"`.venv/bin/python loadtest/canary_fleet_bench.py --runs {args.runs}"
        f" --seed {args.seed} --replicas {args.replicas}` ({platform.python_version()},"
        f" {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}); steps {list(STEPS)},"
        " 200 req/s in all, policy defaults (alpha 0.05, interval 60 s), live tick 0.5 s.",
        "",
        "| scenario | replicas | rolled back [95 % CI] | promoted | seconds to roll back:"
        " median [95 % CI], p90 | candidate requests (median) | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows):
        began = time.perf_counter()
        outcomes = run_row(row, args.runs, args.seed + i // 2, args.workers)
        wall = time.perf_counter() - began
        s = summarize(outcomes)
        rb, pr = s.rates["rollback"], s.rates["promoted"]
        secs = [o.seconds for o in outcomes if o.outcome == "rollback"]
        med = median_interval(secs)
        p90 = float(np.percentile(secs, 90)) if secs else None
        reqs = s.candidate_requests["rollback"]
        timing = "-"
        if med is not None and p90 is not None:
            timing = f"{med[0]:.1f} [{med[1]:.1f}, {med[2]:.1f}], {p90:.1f}"
        lines.append(
            f"| {row.name} | {row.replicas} | {fmt_rate(rb.count, rb.runs, rb.low, rb.high)}"
            f" | {pr.count / pr.runs:.1%} | {timing}"
            f" | {f'{reqs[0]:.0f}' if reqs else '-'} | {wall:.0f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        path = Path(args.out)
        doc = path.read_text() if path.exists() else ""
        block = f"{START}\n{text}{END}"
        if START in doc and END in doc:
            doc = doc[: doc.index(START)] + block + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip("\n") + "\n\n## Fleet canary decisions (issue 11)\n\n" + block + "\n"
        path.write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
