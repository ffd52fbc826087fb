"""The running tests of one ramp: their state (stored with the canary's state) and the update
by newly closed ticks (pure, no I/O; the math is :mod:`junction.canary.sequential`).

What runs, and over what:

- **rollback**, over the WHOLE ramp (not reset when a step is promoted: the conditional test
  reads the observed share of every tick, so it stays valid as the weights change): the
  count test on errors (:data:`~junction.canary.sequential.ERRORS_GRID`) and on the
  requests slower than each latency threshold (:data:`~junction.canary.sequential.LATENCY_GRID`),
  plus the guardrail on the candidate's error rate. They are averaged with weights
  :func:`metric_weights` into one e-process: rolling back when it reaches 1/alpha keeps the
  chance of rolling back a candidate as good as its baseline under alpha for the whole ramp;
- **non-inferiority**, per step: errors and every slow count against "worse by the margin or
  more"; all of them at 1/alpha prove the candidate no worse (an intersection-union test,
  valid at alpha without a correction);
- **sample ratio**, per step, from the step's totals (:func:`sample_ratio`).

State: one float per grid point per test (:class:`RampStats`), plus a few counts. Every test
is a row of one (rows, 24) array updated by the same vectorized formula (the guardrail's
Bernoulli ratio is the count formula with constant coefficients), so a tick costs a dozen
numpy operations whatever the number of metrics.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from junction.canary.evidence import EvidenceFormatError, SideCounts, TickCounts
from junction.canary.sequential import (
    ERRORS_GRID,
    LATENCY_GRID,
    guardrail_alternatives,
    noninferiority_grid,
    sample_ratio_log_e,
)

__all__ = [
    "GRID_POINTS",
    "Job",
    "Layout",
    "RampStats",
    "Reading",
    "SequentialSettings",
    "StepTally",
    "judge",
    "judge_many",
    "layout",
    "metric_weights",
    "read",
    "sample_ratio",
]

Floats = npt.NDArray[np.float64]

#: Grid points of every test (the rollback grids, the guardrail's, non-inferiority's).
GRID_POINTS = 24


@dataclass(frozen=True, slots=True)
class SequentialSettings:
    """What the tests need from the policy (:class:`junction.canary.policy.CanaryPolicy`)."""

    alpha: float = 0.05
    margin: float = 1.5
    max_error_rate: float = 0.5
    latency_metrics: int = 3
    sample_ratio_tolerance: float = 1.5


def metric_weights(latency_metrics: int) -> tuple[float, ...]:
    """Weights of (errors, slow_0..slow_k-1, guardrail) in the rollback average: half on
    errors, 0.4 shared by the latency thresholds, 0.1 on the guardrail (0.9 on errors
    without latency thresholds). They sum to 1, so the average is an e-process."""
    if latency_metrics <= 0:
        return (0.9, 0.1)
    return (0.5, *([0.4 / latency_metrics] * latency_metrics), 0.1)


@dataclass(frozen=True, eq=False)
class Layout:
    """The rows of the tests' array and their constants. Rows: 0 errors, 1..k slow counts,
    k+1 guardrail (rollback, whole ramp); k+2 errors, k+3.. slow counts (non-inferiority).
    A row's log ratio after a tick with candidate events x, events n, share pi grows by
    ``x coef - n (log1p(pi em1) - log1p(pi em1_null) + const)``."""

    latency: int
    coef: Floats
    em1: Floats
    em1_null: Floats
    const: Floats
    log_weights: Floats
    #: The distinct rows of ``em1`` (errors, latency, guardrail, non-inferiority) and each
    #: row's index in it: log1p is computed once per distinct grid, not once per row.
    em1_distinct: Floats
    em1_index: npt.NDArray[np.intp]

    @property
    def rows(self) -> int:
        return 2 * self.latency + 3

    @property
    def rollback_rows(self) -> int:
        return self.latency + 2


@functools.lru_cache(maxsize=64)
def layout(latency: int, margin: float, max_error_rate: float) -> Layout:
    """The (cached) constants for ``latency`` thresholds, a margin and a guardrail."""
    ni = noninferiority_grid(margin, GRID_POINTS)
    count_rows = [ERRORS_GRID] + [LATENCY_GRID] * latency
    p1 = guardrail_alternatives(max_error_rate, GRID_POINTS)
    a = np.log(p1 / max_error_rate)
    b = np.log1p(-(p1 - max_error_rate) / (1.0 - max_error_rate))
    zero = np.zeros(GRID_POINTS)
    coef = [g.deltas - g.null for g in count_rows] + [a - b] + [ni.deltas - ni.null] * (1 + latency)
    em1 = [np.expm1(g.deltas) for g in count_rows] + [zero] + [np.expm1(ni.deltas)] * (1 + latency)
    em1_null = [0.0] * (1 + latency) + [0.0] + [math.expm1(ni.null)] * (1 + latency)
    const = [zero] * (1 + latency) + [-b] + [zero] * (1 + latency)
    return Layout(
        latency=latency,
        coef=np.array(coef),
        em1=np.array(em1),
        em1_null=np.array(em1_null)[:, None],
        const=np.array(const),
        log_weights=np.log(np.array(metric_weights(latency))),
        em1_distinct=np.array(
            [np.expm1(ERRORS_GRID.deltas), np.expm1(LATENCY_GRID.deltas), zero, np.expm1(ni.deltas)]
        ),
        em1_index=np.array([0] + [1] * latency + [2] + [3] * (1 + latency), dtype=np.intp),
    )


@dataclass(frozen=True, slots=True)
class StepTally:
    """The current step's totals (judged ticks only), for the sample-ratio test and display."""

    baseline: SideCounts = field(default_factory=SideCounts)
    candidate: SideCounts = field(default_factory=SideCounts)
    #: Requests counted for the sample-ratio test (after the step's grace).
    ratio_baseline: int = 0
    ratio_candidate: int = 0
    missing: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.to_json(),
            "candidate": self.candidate.to_json(),
            "ratio": [self.ratio_baseline, self.ratio_candidate],
            "missing": self.missing,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepTally:
        rb, rc = data.get("ratio") or (0, 0)
        return cls(
            baseline=SideCounts.from_json(data["baseline"]),
            candidate=SideCounts.from_json(data["candidate"]),
            ratio_baseline=int(rb),
            ratio_candidate=int(rc),
            missing=int(data.get("missing", 0)),
        )


@dataclass(frozen=True, eq=False)
class RampStats:
    """The ramp's tests after every tick up to ``last_tick`` (None: none judged yet).

    ``grid``: (rows, 24) log likelihood ratios (:class:`Layout`); never written in place.
    ``values``: each row's log e-value (the grid's mixture) after the last tick. ``peak``:
    the highest log e-value of the rollback average so far (its anytime p-value is
    ``exp(-peak)``).
    """

    grid: Floats
    values: tuple[float, ...]
    last_tick: int | None = None
    peak: float = 0.0
    #: The candidate's totals over the whole ramp (what the guardrail judged).
    ramp_requests: int = 0
    ramp_errors: int = 0
    step: StepTally = field(default_factory=StepTally)

    @classmethod
    def fresh(cls, latency: int) -> RampStats:
        rows = 2 * latency + 3
        grid = np.zeros((rows, GRID_POINTS))
        grid.flags.writeable = False
        return cls(grid, (0.0,) * rows)

    @property
    def latency(self) -> int:
        return int(self.grid.shape[0] - 3) // 2

    def new_step(self) -> RampStats:
        """The same ramp at a new step (or a restarted one): per-step tests start over."""
        k = self.latency
        grid = self.grid.copy()
        grid[k + 2 :] = 0.0
        grid.flags.writeable = False
        values = (*self.values[: k + 2], *([0.0] * (k + 1)))
        return replace(self, grid=grid, values=values, step=StepTally())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RampStats):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> dict[str, Any]:
        return {
            "last_tick": self.last_tick,
            "grid": self.grid.tolist(),
            "values": list(self.values),
            "peak": self.peak,
            "ramp": [self.ramp_requests, self.ramp_errors],
            "step": self.step.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RampStats:
        grid = np.array(data["grid"], dtype=np.float64)
        if grid.ndim != 2 or grid.shape[1] != GRID_POINTS or grid.shape[0] % 2 != 1:
            raise EvidenceFormatError(f"stats grid of shape {grid.shape} is not (2k+3, 24)")
        if not np.all(np.isfinite(grid)):
            raise EvidenceFormatError("stats grid holds values that are not finite")
        grid.flags.writeable = False
        values = tuple(float(x) for x in data.get("values") or ())
        if len(values) != grid.shape[0]:
            raise EvidenceFormatError(f"{len(values)} stats values for {grid.shape[0]} rows")
        requests, errors = data.get("ramp") or (0, 0)
        last = data.get("last_tick")
        return cls(
            grid=grid,
            values=values,
            last_tick=None if last is None else int(last),
            peak=float(data.get("peak", 0.0)),
            ramp_requests=int(requests),
            ramp_errors=int(errors),
            step=StepTally.from_json(data["step"]) if data.get("step") else StepTally(),
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """The tests' values (log e-values; e = exp). ``sample_ratio`` None: not computed."""

    rollback: float
    errors: float
    latency: tuple[float, ...]
    guardrail: float
    noninferior: tuple[float, ...]
    sample_ratio: float | None = None

    def to_json(self, settings: SequentialSettings) -> dict[str, Any]:
        def e(v: float) -> float:
            return round(math.exp(min(v, 700.0)), 4)

        return {
            "rollback_e": e(self.rollback),
            "errors_e": e(self.errors),
            "latency_e": [e(v) for v in self.latency],
            "guardrail_e": e(self.guardrail),
            "noninferior_e": [e(v) for v in self.noninferior],
            "sample_ratio_e": None if self.sample_ratio is None else e(self.sample_ratio),
            "reject_at": round(1.0 / settings.alpha, 4),
        }


def read(stats: RampStats) -> Reading:
    """The tests' current values (no update; the sample ratio is left out)."""
    k = stats.latency
    v = stats.values
    lw = layout_weights(k)
    top = max(v[: k + 2])
    rollback = top + math.log(
        sum(math.exp(x - top + w) for x, w in zip(v[: k + 2], lw, strict=True))
    )
    return Reading(rollback, v[0], tuple(v[1 : k + 1]), v[k + 1], tuple(v[k + 2 :]))


@functools.lru_cache(maxsize=16)
def layout_weights(latency: int) -> tuple[float, ...]:
    """The logs of :func:`metric_weights`."""
    return tuple(math.log(w) for w in metric_weights(latency))


def sample_ratio(stats: RampStats, share: float, tolerance: float) -> float:
    """The step's sample-ratio log e-value against the configured ``share`` (0..1)."""
    tally = stats.step
    return sample_ratio_log_e(tally.ratio_candidate, tally.ratio_baseline, share, tolerance)


def _pad(side: SideCounts, latency: int) -> SideCounts:
    # Ticks counted before the step's thresholds were fixed have no slow counts.
    if len(side.slow) == latency:
        return side
    return SideCounts(side.requests, side.errors, (0,) * latency)


def _events(ticks: list[TickCounts], k: int) -> tuple[Floats, Floats, Floats]:
    """Per tick: the observed share (T, 1, 1), candidate events (T, rows) and all events
    (T, rows), rows as in :class:`Layout`; ticks where a side had no traffic carry nothing
    but the guardrail's candidate counts."""
    shares, xs, ns = [], [], []
    for t in ticks:
        c, b = _pad(t.candidate, k), _pad(t.baseline, k)
        total = c.requests + b.requests
        informative = c.requests and b.requests
        shares.append(c.requests / total if informative else 0.5)
        x = [c.errors, *c.slow] if informative else [0] * (k + 1)
        n = [c.errors + b.errors, *(p + q for p, q in zip(c.slow, b.slow, strict=True))]
        if not informative:
            n = [0] * (k + 1)
        xs.append([*x, c.errors, *x])
        ns.append([*n, c.requests, *n])
    return np.array(shares)[:, None, None], np.array(xs, float), np.array(ns, float)


@dataclass(frozen=True, slots=True)
class Job:
    """One ramp's newly closed ticks to fold into its tests (arguments of :func:`judge`)."""

    stats: RampStats
    ticks: list[TickCounts]
    settings: SequentialSettings
    step_from_tick: int
    ratio_from_tick: int
    missing: int = 0


def judge(
    stats: RampStats,
    ticks: list[TickCounts],
    settings: SequentialSettings,
    *,
    step_from_tick: int,
    ratio_from_tick: int,
    missing: int = 0,
) -> RampStats:
    """Fold newly closed ``ticks`` (sorted, all after ``stats.last_tick``) into the tests.

    The step's totals count ticks from ``step_from_tick`` on (the rollback tests count them
    all), the sample-ratio test from ``ratio_from_tick`` on. ``missing``: entries lost in
    these ticks. ``stats`` of another number of latency thresholds (the policy changed
    mid-ramp) are started over.
    """
    job = Job(stats, ticks, settings, step_from_tick, ratio_from_tick, missing)
    return judge_many([job])[0]


def judge_many(jobs: list[Job]) -> list[RampStats]:
    """:func:`judge` for many ramps at once: ramps with one new tick and the same tests are
    updated by one stacked numpy computation (the controller's usual case: 100 ramps cost
    about what a few cost), the others one by one. Same results as :func:`judge` each."""
    out: list[RampStats | None] = [None] * len(jobs)
    stacks: dict[tuple[int, float, float], list[int]] = {}
    prepared: list[Job] = []
    for i, job in enumerate(jobs):
        k = job.settings.latency_metrics
        if job.stats.latency != k:
            job = replace(job, stats=replace(RampStats.fresh(k), last_tick=job.stats.last_tick))
        prepared.append(job)
        if not job.ticks:
            step = job.stats.step
            out[i] = (
                replace(job.stats, step=replace(step, missing=step.missing + job.missing))
                if job.missing
                else job.stats
            )
            continue
        key = (k, job.settings.margin, job.settings.max_error_rate)
        if len(job.ticks) == 1:
            stacks.setdefault(key, []).append(i)
        else:
            grid, logs, combined = _update(layout(*key), [job], job.ticks)
            out[i] = _result(job, grid[-1], logs[-1], float(combined.max()))
    for key, members in stacks.items():
        batch = [prepared[i] for i in members]
        grid, logs, combined = _update(layout(*key), batch, [j.ticks[0] for j in batch])
        for row, i in enumerate(members):
            out[i] = _result(prepared[i], grid[row], logs[row], float(combined[row]))
    return [s for s in out if s is not None]


def _update(lay: Layout, jobs: list[Job], ticks: list[TickCounts]) -> tuple[Floats, Floats, Floats]:
    """The stacked update: either one job's ticks in order (cumulated), or one tick of each
    job. Returns the grids (N, rows, G), each row's log e-value (N, rows) and the rollback
    average's log e-value (N,) after each tick or job."""
    pi, x, n = _events(ticks, lay.latency)
    norm = np.log1p(pi * lay.em1_distinct)[:, lay.em1_index, :]
    norm -= np.log1p(pi * lay.em1_null) - lay.const
    grids = x[:, :, None] * lay.coef - n[:, :, None] * norm
    if len(jobs) == 1:
        if len(ticks) > 1:
            grids = np.cumsum(grids, axis=0)
        grids += jobs[0].stats.grid
    else:
        grids += np.stack([j.stats.grid for j in jobs])
    grids.flags.writeable = False  # the rows become the ramps' (immutable) grids
    top = grids.max(axis=2, keepdims=True)
    logs = top[:, :, 0] + np.log(np.exp(grids - top).mean(axis=2))
    roll = logs[:, : lay.rollback_rows] + lay.log_weights
    roll_top = roll.max(axis=1, keepdims=True)
    combined = roll_top[:, 0] + np.log(np.exp(roll - roll_top).sum(axis=1))
    return grids, logs, combined


def _result(job: Job, grid: Floats, logs: Floats, peak: float) -> RampStats:
    """The job's stats after its ticks: the new grid (a read-only row of the batch's
    array), its values, and the counts."""
    k = job.settings.latency_metrics
    stats = job.stats
    tally = stats.step
    base_sum, cand_sum = tally.baseline, tally.candidate
    rb, rc = tally.ratio_baseline, tally.ratio_candidate
    requests, errors = stats.ramp_requests, stats.ramp_errors
    for t in job.ticks:
        requests += t.candidate.requests
        errors += t.candidate.errors
        if t.tick < job.step_from_tick:
            continue
        base_sum += _pad(t.baseline, k)
        cand_sum += _pad(t.candidate, k)
        if t.tick >= job.ratio_from_tick:
            rb, rc = rb + t.baseline.requests, rc + t.candidate.requests
    return RampStats(
        grid=grid,
        values=tuple(logs.tolist()),
        last_tick=job.ticks[-1].tick,
        peak=max(stats.peak, peak),
        ramp_requests=requests,
        ramp_errors=errors,
        step=StepTally(base_sum, cand_sum, rb, rc, tally.missing + job.missing),
    )
