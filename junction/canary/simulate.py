"""Simulation: the live canary controller against synthetic traffic that follows its weights.

``junction canary simulate`` tells an operator, before a release, how a ramp policy
behaves: how often it rolls back a candidate as good as the baseline (the false alarm
rate, at most the policy's alpha if the statistics are right), how often it catches a bad one,
how fast, and on how many candidate requests. It runs the *same* controller, windows and
step as a live replica (:mod:`junction.canary.controller`), on a
:class:`~junction.canary.replay.ManualClock` and a
:class:`~junction.canary.memstore.MemoryStateStore`, at the live tick (0.5 s).

Each tick of ``tick`` seconds, for the weight ``w`` the controller has set (the stored
state's weight, as Envoy would apply it):

- ``n ~ Poisson(rps * tick)`` requests, ``n_c ~ Binomial(n, w / 100)`` of them to the
  candidate, the rest to the baseline;
- each side's errors ``~ Binomial(n_side, p_side)`` (``baseline_error``,
  ``candidate_error``);
- latencies log-normal (median ``latency_ms``, shape ``latency_sigma``: a long right tail,
  as service latencies have), the candidate's times ``latency_ratio``, counted per latency
  bucket of the windows;
- the counts go into the live :class:`~junction.als.windows.Windows`
  (:meth:`~junction.als.windows.Windows.add_counts`) in the slot the requests ended in;
  from there on everything is the live code. Drawing counts instead of building a record
  per request is what makes thousands of ramps take minutes rather than hours.

Before the ramp starts, the windows get ``latency-lookback`` seconds of the baseline's
traffic alone (the service ran before its canary, and a step fixes its latency thresholds
from the baseline's recent quantiles). A run ends at a rollback, at the promotion to
100 %, or after ``max_seconds`` (then it is *undecided*: the ramp still holds). Every run
has its own generator seeded from (``seed``, run index) through numpy's ``SeedSequence``,
so results do not depend on how runs are spread over worker processes.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from junction.als.record import SOURCE_SPLIT
from junction.als.stats import wilson
from junction.als.windows import WindowKey, Windows
from junction.canary.controller import CanaryController
from junction.canary.evidence import LATENCY_BUCKET_GROWTH
from junction.canary.memstore import MemoryStateStore
from junction.canary.policy import CanaryPolicy, policies
from junction.canary.replay import LIVE_HORIZON, LIVE_SLOT, LIVE_TICK, ManualClock
from junction.canary.state import Phase
from junction.config.model import Config

__all__ = [
    "OUTCOMES",
    "Rate",
    "RunOutcome",
    "Simulation",
    "Summary",
    "Traffic",
    "min_ramp_seconds",
    "run_batch",
    "run_once",
    "run_seeds",
    "simulate",
    "single_ramp",
    "summarize",
]

#: How a run ended.
OUTCOMES = ("rollback", "promoted", "undecided")


@dataclass(frozen=True, slots=True)
class Traffic:
    """The synthetic traffic of one scenario (see the module docstring)."""

    rps: float
    baseline_error: float
    candidate_error: float
    latency_ratio: float = 1.0
    latency_ms: float = 20.0
    latency_sigma: float = 0.5

    def __post_init__(self) -> None:
        for name in ("baseline_error", "candidate_error"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a share 0..1, got {value:g}")
        if not self.rps > 0 or not math.isfinite(self.rps):
            raise ValueError(f"rps must be above 0, got {self.rps:g}")
        if not self.latency_ratio > 0 or not self.latency_ms > 0 or self.latency_sigma < 0:
            raise ValueError("need latency-ratio > 0, latency-ms > 0 and latency-sigma >= 0")


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One ramp: how it ended, when (seconds after its start), the candidate's requests
    until then, and the promotions it made."""

    outcome: str
    seconds: float
    candidate_requests: int
    promotions: int


@dataclass(frozen=True, slots=True)
class Simulation:
    """What to simulate: one service's ramp policy under one traffic scenario."""

    config: Config
    #: None: the config's only ramp.
    service: str | None
    traffic: Traffic
    tick: float = LIVE_TICK
    max_seconds: float | None = None


def single_ramp(config: Config, service: str | None) -> tuple[Config, CanaryPolicy]:
    """``config`` reduced to the one ramp simulated, and its policy. ValueError names the
    ramps there are when ``service`` is not one (or is None and there are several)."""
    found = policies(config)
    if service is None:
        if len(found) != 1:
            names = ", ".join(found) or "none"
            raise ValueError(f"name the service to simulate (--service); ramps: {names}")
        service = next(iter(found))
    if service not in found:
        names = ", ".join(found) or "none"
        raise ValueError(f"{service!r} has no canary ramp in the config (ramps: {names})")
    versions = {service: config.versions[service]}
    return config.model_copy(update={"versions": versions}), found[service]


def min_ramp_seconds(policy: CanaryPolicy) -> float:
    """The fastest a healthy candidate can reach 100 %: one interval per promotion."""
    return policy.interval * (len(policy.steps) - 1)


_LOG_GROWTH = math.log(LATENCY_BUCKET_GROWTH)


def latency_buckets(ms: npt.NDArray[np.float64]) -> dict[int, int]:
    """Durations counted per latency bucket of the windows
    (:func:`~junction.canary.evidence.latency_bucket`, vectorized: ``ceil(log(ms) / log g)``
    with the same guard against rounding at an edge)."""
    keys, counts = np.unique(
        np.ceil(np.log(np.maximum(ms, 0.001)) / _LOG_GROWTH - 1e-9), return_counts=True
    )
    return dict(zip(keys.astype(np.int64).tolist(), counts.tolist(), strict=True))


class _Generator:
    """One run's traffic, drawn as counts tick by tick (no per-request objects)."""

    def __init__(self, traffic: Traffic, policy: CanaryPolicy, rng: np.random.Generator) -> None:
        self.traffic = traffic
        self.rng = rng
        mu = math.log(traffic.latency_ms)
        self.sides = (
            (
                WindowKey("sim", policy.candidate, "", SOURCE_SPLIT),
                traffic.candidate_error,
                mu + math.log(traffic.latency_ratio),
            ),
            (WindowKey("sim", policy.baseline, "", SOURCE_SPLIT), traffic.baseline_error, mu),
        )

    def feed(self, windows: Windows, now: float, tick: float, weight: int) -> int:
        """Count one tick's requests (ended in ``(now - tick, now]``) in ``windows``;
        returns the candidate's."""
        rng = self.rng
        n = int(rng.poisson(self.traffic.rps * tick))
        n_c = int(rng.binomial(n, weight / 100.0)) if n else 0
        # Every request of the tick lands in the slot of the tick's middle: ticks never
        # straddle slots when the slot is a multiple of the tick, as live (0.5 s in 1 s).
        end = now - tick / 2
        sigma = self.traffic.latency_sigma
        for (key, p_err, mu), count in zip(self.sides, (n_c, n - n_c), strict=True):
            if not count:
                continue
            errors = int(rng.binomial(count, p_err))
            windows.add_counts(key, end, errors, latency_buckets(rng.lognormal(mu, sigma, count)))
        return n_c


async def _run(sim: Simulation, config: Config, policy: CanaryPolicy, seed: int) -> RunOutcome:
    rng = np.random.default_rng(seed)
    clock = ManualClock(1_767_225_600.0)
    start = clock.now
    windows = Windows(slot_seconds=LIVE_SLOT, horizon=LIVE_HORIZON, clock=clock)
    store = MemoryStateStore()
    controller = CanaryController(store, windows, lambda: config, tick=sim.tick, clock=clock)
    gen = _Generator(sim.traffic, policy, rng)
    limit = sim.max_seconds if sim.max_seconds is not None else 4 * min_ramp_seconds(policy)
    candidate_requests = promotions = ticks = 0
    # The service ran before its canary: the baseline's recent latencies, from which a step
    # fixes its latency thresholds, are there when the ramp starts, as live.
    warm = min(policy.latency_lookback, LIVE_HORIZON)
    for second in range(math.ceil(warm / LIVE_SLOT), 0, -1):
        clock.now = start - (second - 1) * LIVE_SLOT
        gen.feed(windows, clock.now, LIVE_SLOT, 0)
    clock.now = start
    await controller.tick()  # the ramp starts at the first step
    while True:
        state = store.state(policy.service)
        assert state is not None
        if state.phase is Phase.ROLLED_BACK or state.phase is Phase.PROMOTED:
            outcome = "rollback" if state.phase is Phase.ROLLED_BACK else "promoted"
            return RunOutcome(outcome, clock.now - start, candidate_requests, promotions)
        if clock.now - start >= limit:
            return RunOutcome("undecided", clock.now - start, candidate_requests, promotions)
        ticks += 1
        clock.now = start + ticks * sim.tick
        candidate_requests += gen.feed(windows, clock.now, sim.tick, state.weight)
        for decision in await controller.tick():
            if decision.event is not None and decision.event.action == "promote":
                promotions += 1


def run_once(sim: Simulation, seed: int) -> RunOutcome:
    """One ramp with a generator seeded by ``seed``."""
    config, policy = single_ramp(sim.config, sim.service)
    return asyncio.run(_run(sim, config, policy, seed))


def run_batch(sim: Simulation, seeds: Sequence[int]) -> list[RunOutcome]:
    """One ramp per seed, in order, in this process."""
    config, policy = single_ramp(sim.config, sim.service)

    async def all_runs() -> list[RunOutcome]:
        return [await _run(sim, config, policy, s) for s in seeds]

    return asyncio.run(all_runs())


def run_seeds(seed: int, runs: int) -> list[int]:
    """Per-run seeds derived from ``seed`` (independent streams; the same for any split)."""
    children = np.random.SeedSequence(seed).spawn(runs)
    return [int(c.generate_state(1, dtype=np.uint64)[0]) for c in children]


def simulate(sim: Simulation, runs: int, *, seed: int = 1, workers: int = 1) -> list[RunOutcome]:
    """``runs`` ramps (in run order, whatever ``workers``: processes to spread them on)."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    single_ramp(sim.config, sim.service)  # fail here, not in a worker
    seeds = run_seeds(seed, runs)
    workers = max(1, min(workers, runs, os.cpu_count() or 1))
    if workers == 1:
        return run_batch(sim, seeds)
    size = math.ceil(runs / workers)
    chunks = [seeds[i : i + size] for i in range(0, runs, size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(run_batch, [sim] * len(chunks), chunks))
    return [o for part in parts for o in part]


@dataclass(frozen=True, slots=True)
class Rate:
    """A share of runs with its 95 % Wilson interval."""

    count: int
    runs: int
    low: float
    high: float

    @property
    def share(self) -> float:
        return self.count / self.runs if self.runs else 0.0

    @classmethod
    def of(cls, count: int, runs: int) -> Rate:
        low, high = wilson(count, runs)
        return cls(count, runs, low, high)

    def to_json(self) -> dict[str, float | int]:
        return {"count": self.count, "runs": self.runs, "share": self.share,
                "low": self.low, "high": self.high}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Summary:
    """Rates of each outcome, and per outcome the median and p90 of seconds and candidate
    requests it took (None when no run ended that way)."""

    runs: int
    rates: dict[str, Rate]
    seconds: dict[str, tuple[float, float] | None]
    candidate_requests: dict[str, tuple[float, float] | None]

    def to_json(self) -> dict[str, object]:
        def pair(v: tuple[float, float] | None) -> dict[str, float] | None:
            return None if v is None else {"median": v[0], "p90": v[1]}

        return {
            "runs": self.runs,
            **{
                name: {
                    **self.rates[name].to_json(),
                    "seconds": pair(self.seconds[name]),
                    "candidate_requests": pair(self.candidate_requests[name]),
                }
                for name in OUTCOMES
            },
        }


def _median_p90(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return float(np.median(values)), float(np.percentile(values, 90))


def summarize(outcomes: Sequence[RunOutcome]) -> Summary:
    """The rates and the timings of ``outcomes``."""
    runs = len(outcomes)
    rates, seconds, requests = {}, {}, {}
    for name in OUTCOMES:
        mine = [o for o in outcomes if o.outcome == name]
        rates[name] = Rate.of(len(mine), runs)
        seconds[name] = _median_p90([o.seconds for o in mine])
        requests[name] = _median_p90([float(o.candidate_requests) for o in mine])
    return Summary(runs, rates, seconds, requests)
