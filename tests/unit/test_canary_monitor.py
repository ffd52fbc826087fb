"""The ramp's running tests (the fast, stacked form) agree with the reference math, batch or
tick by tick, and their stored form round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from junction.canary.evidence import EvidenceFormatError, SideCounts, TickCounts
from junction.canary.monitor import RampStats, SequentialSettings, judge, read, sample_ratio
from junction.canary.sequential import (
    ERRORS_GRID,
    LATENCY_GRID,
    count_log_lr,
    guardrail_log_e,
    log_mean_exp,
    noninferiority_grid,
    sample_ratio_log_e,
)

SETTINGS = SequentialSettings(latency_metrics=2, margin=1.5, max_error_rate=0.3)


def random_ticks(seed: int, n: int = 40) -> list[TickCounts]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        nb, nc = int(rng.integers(0, 300)), int(rng.integers(0, 40))
        if t % 7 == 3:
            nb = 0  # a tick without baseline traffic: only the guardrail counts it
        side = [
            SideCounts(m, int(rng.binomial(m, 0.05)), tuple(int(rng.binomial(m, q)) for q in (0.5, 0.1)))
            for m in (nb, nc)
        ]  # fmt: skip
        out.append(TickCounts(100 + t, side[0], side[1]))
    return out


def reference(ticks: list[TickCounts]) -> list[float]:
    informative = [t for t in ticks if t.candidate.requests and t.baseline.requests]
    share = np.array(
        [t.candidate.requests / (t.candidate.requests + t.baseline.requests) for t in informative]
    )
    cand = np.array([[t.candidate.errors, *t.candidate.slow] for t in informative], float)
    base = np.array([[t.baseline.errors, *t.baseline.slow] for t in informative], float)
    out = [float(log_mean_exp(count_log_lr(ERRORS_GRID, share, cand[:, :1], base[:, :1])[-1, 0]))]
    out += [
        float(v)
        for v in log_mean_exp(count_log_lr(LATENCY_GRID, share, cand[:, 1:], base[:, 1:])[-1])
    ]
    n = sum(t.candidate.requests for t in ticks)
    x = sum(t.candidate.errors for t in ticks)
    out.append(guardrail_log_e(n, x, 0.3))
    ni = noninferiority_grid(1.5, 24)
    out += [float(v) for v in log_mean_exp(count_log_lr(ni, share, cand, base)[-1])]
    return out  # fmt: skip


def test_stacked_tests_match_the_reference_math() -> None:
    ticks = random_ticks(1)
    stats = judge(RampStats.fresh(2), ticks, SETTINGS, step_from_tick=0, ratio_from_tick=0)
    assert np.allclose(stats.values, reference(ticks), atol=1e-9)
    assert stats.ramp_requests == sum(t.candidate.requests for t in ticks)
    assert stats.step.candidate.slow == tuple(
        sum(t.candidate.slow[i] for t in ticks) for i in range(2)
    )


def test_batches_and_single_ticks_agree_and_the_peak_is_the_running_max() -> None:
    ticks = random_ticks(2)
    batch = judge(RampStats.fresh(2), ticks, SETTINGS, step_from_tick=0, ratio_from_tick=0)
    one = RampStats.fresh(2)
    peak = 0.0
    for t in ticks:
        one = judge(one, [t], SETTINGS, step_from_tick=0, ratio_from_tick=0)
        peak = max(peak, read(one).rollback)
    assert np.allclose(one.grid, batch.grid) and one.values == pytest.approx(batch.values)
    assert batch.peak == pytest.approx(peak) and one.peak == pytest.approx(peak)


def test_step_totals_and_sample_ratio_counts_start_where_told() -> None:
    ticks = random_ticks(3, 10)
    stats = judge(RampStats.fresh(2), ticks, SETTINGS, step_from_tick=105, ratio_from_tick=107)
    assert stats.step.candidate.requests == sum(t.candidate.requests for t in ticks[5:])
    assert stats.step.ratio_candidate == sum(t.candidate.requests for t in ticks[7:])
    assert sample_ratio(stats, 0.1, 1.5) == sample_ratio_log_e(
        stats.step.ratio_candidate, stats.step.ratio_baseline, 0.1, 1.5
    )


def test_a_new_step_keeps_the_rollback_tests_and_restarts_the_others() -> None:
    stats = judge(
        RampStats.fresh(2), random_ticks(4), SETTINGS, step_from_tick=0, ratio_from_tick=0
    )
    fresh = stats.new_step()
    assert np.array_equal(fresh.grid[:4], stats.grid[:4]) and not fresh.grid[4:].any()
    assert fresh.values[:4] == stats.values[:4] and fresh.values[4:] == (0.0,) * 3
    assert fresh.peak == stats.peak and fresh.step.candidate.requests == 0
    assert read(fresh).noninferior == (0.0, 0.0, 0.0)


def test_json_round_trip_and_bad_stats() -> None:
    stats = judge(
        RampStats.fresh(2), random_ticks(5), SETTINGS, step_from_tick=0, ratio_from_tick=0
    )
    assert RampStats.from_json(stats.to_json()) == stats
    bad = stats.to_json()
    bad["grid"] = [[0.0] * 5]
    with pytest.raises(EvidenceFormatError, match="shape"):
        RampStats.from_json(bad)
    bad = stats.to_json()
    bad["grid"][0][0] = math.inf
    with pytest.raises(EvidenceFormatError, match="not finite"):
        RampStats.from_json(bad)


def test_other_latency_counts_start_the_tests_over() -> None:
    stats = judge(
        RampStats.fresh(3), random_ticks(6, 3)[:0], SETTINGS, step_from_tick=0, ratio_from_tick=0
    )
    assert stats.latency == 2
