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
- **sample ratio**, per step: the candidate's share of requests against the configured
  weight, from the step's totals (ticks of the first ``grace`` seconds of a step are left
  out: Envoys take a moment to apply new weights).

State: one float per grid point per metric (:class:`RampStats`), plus a few counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from junction.canary.evidence import SideCounts, TickCounts
from junction.canary.sequential import (
    ERRORS_GRID,
    LATENCY_GRID,
    count_log_lr,
    guardrail_log_e,
    log_mean_exp,
    noninferiority_grid,
    sample_ratio_log_e,
)

__all__ = ["RampStats", "Reading", "StepTally", "TestSettings", "judge", "metric_weights"]


@dataclass(frozen=True, slots=True)
class TestSettings:
    """What the tests need from the policy (:class:`junction.canary.policy.CanaryPolicy`)."""

    alpha: float = 0.05
    margin: float = 1.5
    max_error_rate: float = 0.5
    latency_metrics: int = 3
    sample_ratio_tolerance: float = 1.5
    grace: float = 3.0


def metric_weights(latency_metrics: int) -> tuple[float, ...]:
    """Weights of (errors, slow_0..slow_k-1, guardrail) in the rollback average: half on
    errors, 0.4 shared by the latency thresholds, 0.1 on the guardrail (0.9 on errors
    without latency thresholds). They sum to 1, so the average is an e-process."""
    if latency_metrics <= 0:
        return (0.9, 0.1)
    return (0.5, *([0.4 / latency_metrics] * latency_metrics), 0.1)


def _zeros(metrics: int, points: int) -> tuple[tuple[float, ...], ...]:
    return tuple((0.0,) * points for _ in range(metrics))


@dataclass(frozen=True, slots=True)
class StepTally:
    """The current step's totals (judged ticks only) and its per-step tests."""

    baseline: SideCounts = field(default_factory=SideCounts)
    candidate: SideCounts = field(default_factory=SideCounts)
    #: Requests counted for the sample-ratio test (after the step's grace).
    ratio_baseline: int = 0
    ratio_candidate: int = 0
    missing: int = 0
    #: Non-inferiority log ratios, per metric (errors, slow...) per grid point.
    noninferior: tuple[tuple[float, ...], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.to_json(),
            "candidate": self.candidate.to_json(),
            "ratio": [self.ratio_baseline, self.ratio_candidate],
            "missing": self.missing,
            "noninferior": [list(v) for v in self.noninferior],
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
            noninferior=tuple(tuple(float(x) for x in v) for v in data.get("noninferior") or ()),
        )


@dataclass(frozen=True, slots=True)
class RampStats:
    """The ramp's tests after every tick up to ``last_tick`` (None: none judged yet)."""

    last_tick: int | None = None
    #: Rollback log ratios per metric (errors, slow...) per grid point, whole ramp.
    rollback: tuple[tuple[float, ...], ...] = ()
    #: The candidate's totals over the whole ramp (the guardrail's).
    ramp_requests: int = 0
    ramp_errors: int = 0
    #: The highest log e-value of the rollback average so far (1/exp: anytime p-value).
    peak: float = 0.0
    step: StepTally = field(default_factory=StepTally)

    @classmethod
    def fresh(cls, latency_metrics: int, margin: float) -> RampStats:
        return cls(
            rollback=_zeros(1 + latency_metrics, len(ERRORS_GRID)),
            step=StepTally(
                noninferior=_zeros(1 + latency_metrics, len(noninferiority_grid(margin)))
            ),
        )

    def new_step(self, margin: float) -> RampStats:
        """The same ramp at a new step (or a restarted one): per-step tests start over."""
        metrics = len(self.rollback)
        return replace(
            self, step=StepTally(noninferior=_zeros(metrics, len(noninferiority_grid(margin))))
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "last_tick": self.last_tick,
            "rollback": [list(v) for v in self.rollback],
            "ramp": [self.ramp_requests, self.ramp_errors],
            "peak": self.peak,
            "step": self.step.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RampStats:
        requests, errors = data.get("ramp") or (0, 0)
        last = data.get("last_tick")
        return cls(
            last_tick=None if last is None else int(last),
            rollback=tuple(tuple(float(x) for x in v) for v in data.get("rollback") or ()),
            ramp_requests=int(requests),
            ramp_errors=int(errors),
            peak=float(data.get("peak", 0.0)),
            step=StepTally.from_json(data["step"]) if data.get("step") else StepTally(),
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """The tests' values after an update (log e-values; e = exp)."""

    rollback: float
    errors: float
    latency: tuple[float, ...]
    guardrail: float
    noninferior: tuple[float, ...]
    sample_ratio: float

    def to_json(self, settings: TestSettings) -> dict[str, Any]:
        def e(v: float) -> float:
            return round(math.exp(min(v, 700.0)), 4)

        return {
            "rollback_e": e(self.rollback),
            "errors_e": e(self.errors),
            "latency_e": [e(v) for v in self.latency],
            "guardrail_e": e(self.guardrail),
            "noninferior_e": [e(v) for v in self.noninferior],
            "sample_ratio_e": e(self.sample_ratio),
            "reject_at": round(1.0 / settings.alpha, 4),
        }


def _counts(ticks: list[TickCounts], latency: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(share (T,), candidate events (T, M), baseline events (T, M)); slow counts missing
    (thresholds not fixed yet) count as no events."""
    share = np.empty(len(ticks))
    cand = np.zeros((len(ticks), 1 + latency))
    base = np.zeros((len(ticks), 1 + latency))
    for i, t in enumerate(ticks):
        c, b = t.candidate, t.baseline
        total = c.requests + b.requests
        share[i] = c.requests / total if total else 0.0
        cand[i, 0], base[i, 0] = c.errors, b.errors
        if len(c.slow) == latency and len(b.slow) == latency:
            cand[i, 1:], base[i, 1:] = c.slow, b.slow
    return share, cand, base


def _rollback(
    stats: RampStats, share: np.ndarray, cand: np.ndarray, base: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rollback grids after the ticks (M, G) and each metric's log e-value after each
    tick (T, M)."""
    start = np.array(stats.rollback)
    grids = count_log_lr(ERRORS_GRID, share, cand[:, :1], base[:, :1])
    if len(start) > 1:
        slow = count_log_lr(LATENCY_GRID, share, cand[:, 1:], base[:, 1:])
        grids = np.concatenate([grids, slow], axis=1)
    grids = grids + start[None, :, :]
    return grids[-1], log_mean_exp(grids)


def judge(
    stats: RampStats,
    ticks: list[TickCounts],
    settings: TestSettings,
    *,
    share: float,
    ratio_from_tick: int,
    missing: int = 0,
) -> tuple[RampStats, Reading]:
    """Fold newly closed ``ticks`` (sorted, all after ``stats.last_tick``) into the tests.

    ``share``: the configured candidate share of this step (0..1), for the sample-ratio test,
    which counts ticks from ``ratio_from_tick`` on. ``missing``: entries lost meanwhile.
    """
    k = settings.latency_metrics
    step = stats.step
    if ticks:
        s, cand, base = _counts(ticks, k)
        grid_state, logs = _rollback(stats, s, cand, base)
        ni_grid = noninferiority_grid(settings.margin)
        ni = count_log_lr(ni_grid, s, cand, base)[-1] + np.array(step.noninferior)
        c_req = np.cumsum([t.candidate.requests for t in ticks]) + stats.ramp_requests
        c_err = np.cumsum([t.candidate.errors for t in ticks]) + stats.ramp_errors
        guard = np.array(
            [
                guardrail_log_e(int(n), int(x), settings.max_error_rate)
                for n, x in zip(c_req, c_err, strict=True)
            ]
        )
        combined = log_mean_exp_weighted(np.column_stack([logs, guard]), metric_weights(k))
        base_sum, cand_sum = step.baseline, step.candidate
        rb, rc = step.ratio_baseline, step.ratio_candidate
        for t in ticks:
            base_sum += _pad(t.baseline, k)
            cand_sum += _pad(t.candidate, k)
            if t.tick >= ratio_from_tick:
                rb, rc = rb + t.baseline.requests, rc + t.candidate.requests
        stats = RampStats(
            last_tick=ticks[-1].tick,
            rollback=tuple(tuple(float(x) for x in v) for v in grid_state),
            ramp_requests=int(c_req[-1]),
            ramp_errors=int(c_err[-1]),
            peak=max(stats.peak, float(np.max(combined))),
            step=StepTally(
                base_sum, cand_sum, rb, rc, step.missing + missing,
                tuple(tuple(float(x) for x in v) for v in ni),
            ),
        )  # fmt: skip
    elif missing:
        stats = replace(stats, step=replace(step, missing=step.missing + missing))
    return stats, read(stats, settings, share)


def _pad(side: SideCounts, latency: int) -> SideCounts:
    # Ticks counted before the step's thresholds were fixed have no slow counts.
    if len(side.slow) == latency:
        return side
    return SideCounts(side.requests, side.errors, (0,) * latency)


def log_mean_exp_weighted(logs: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """log(sum_m w_m exp(logs[..., m])) (the weighted average of e-values)."""
    top = np.max(logs, axis=-1, keepdims=True)
    inner = np.exp(logs - top) @ np.array(weights)
    out: np.ndarray = np.squeeze(top, axis=-1) + np.log(inner)
    return out


def read(stats: RampStats, settings: TestSettings, share: float) -> Reading:
    """The tests' current values (no update)."""
    k = settings.latency_metrics
    per_metric = [float(log_mean_exp(np.array(v))) for v in stats.rollback] or [0.0] * (1 + k)
    guard = guardrail_log_e(stats.ramp_requests, stats.ramp_errors, settings.max_error_rate)
    rollback = float(log_mean_exp_weighted(np.array([*per_metric, guard]), metric_weights(k)))
    ni = tuple(float(log_mean_exp(np.array(v))) for v in stats.step.noninferior)
    ratio = sample_ratio_log_e(
        stats.step.ratio_candidate,
        stats.step.ratio_baseline,
        share,
        settings.sample_ratio_tolerance,
    )
    return Reading(rollback, per_metric[0], tuple(per_metric[1:]), guard, ni, ratio)


def peak_reading(stats: RampStats) -> float:
    """The anytime-valid p-value of "as good as the baseline" so far: 1 / the highest e."""
    return min(1.0, math.exp(-stats.peak))
