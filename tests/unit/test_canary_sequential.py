"""The anytime-valid tests against known values, and their error rates over seeded runs.

The A/A runs check the e-process at EVERY tick (the controller's way of looking) with a
fixed share, a ramp, error bursts on both sides and ticks without traffic: false rollbacks
stay within alpha + 3 sd of a binomial over the runs. A z-test re-run every tick on the same
data (what thresholds re-checked every tick amount to) must fail that bound: the test would
catch the old behaviour. And a real regression is caught nearly always.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from junction.canary.sequential import (
    ERRORS_GRID,
    LATENCY_GRID,
    Grid,
    beta_mixture_log_bf,
    count_log_lr,
    guardrail_log_e,
    log_mean_exp,
    noninferiority_grid,
    sample_ratio_log_e,
)

ALPHA = 0.05


def test_likelihood_ratio_by_hand() -> None:
    # delta = log 2; theta = 2 pi / (2 pi + 1 - pi) = 2 pi / (1 + pi).
    # tick 1: pi 0.1, 1 candidate and 2 baseline errors: (20/11) (10/11)^2 = 2000/1331
    # tick 2: pi 0.5, 1 baseline error: (1/3) / (1/2) = 2/3
    # a tick with no candidate traffic: skipped
    # tick 3: pi 0.2, 3 candidate errors: (5/3)^3 = 125/27
    grid = Grid(np.array([math.log(2.0)]))
    share = np.array([0.1, 0.5, 0.0, 0.2])
    cand = np.array([[1], [0], [0], [3]])
    base = np.array([[2], [1], [4], [0]])
    out = count_log_lr(grid, share, cand, base)
    assert out.shape == (4, 1, 1)
    expected = [2000 / 1331, 2000 / 1331 * 2 / 3, 2000 / 1331 * 2 / 3, 500000 / 107811]
    assert np.allclose(np.exp(out[:, 0, 0]), expected, rtol=1e-12)


def test_null_other_than_zero_is_a_ratio_of_ratios() -> None:
    share = np.array([0.3, 0.05])
    cand, base = np.array([[2], [1]]), np.array([[5], [9]])
    a, b = math.log(1.2), math.log(1.5)
    ratio = count_log_lr(Grid(np.array([a]), b), share, cand, base)
    direct = count_log_lr(Grid(np.array([a, b])), share, cand, base)
    assert ratio[-1, 0, 0] == pytest.approx(direct[-1, 0, 0] - direct[-1, 0, 1], abs=1e-12)


def test_constant_share_depends_on_totals_only_and_matches_binomial() -> None:
    # With a constant share the ticks' ratio is the binomial likelihood ratio of the totals.
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, (50, 1)), rng.integers(0, 40, (50, 1))
    out = count_log_lr(ERRORS_GRID, np.full(50, 0.1), x, y)[-1, 0]
    theta = 0.1 * np.exp(ERRORS_GRID.deltas) / (0.1 * np.exp(ERRORS_GRID.deltas) + 0.9)
    n, k = int(y.sum() + x.sum()), int(x.sum())
    binom = stats.binom.logpmf(k, n, theta) - stats.binom.logpmf(k, n, 0.1)
    assert np.allclose(out, binom, atol=1e-9)


def test_beta_mixture_closed_form() -> None:
    # B(k rho + x, k(1 - rho) + y) / B(k rho, k(1 - rho)) / (rho^x (1 - rho)^y) equals the
    # Beta(k rho, k(1 - rho)) average of the binomial likelihood ratio.
    rho, k, x, y = 0.1, 100.0, 9, 30
    a, b = k * rho, k * (1 - rho)

    def integrand(theta: float) -> float:
        return float(
            stats.beta.pdf(theta, a, b) * (theta / rho) ** x * ((1 - theta) / (1 - rho)) ** y
        )

    numeric, _ = integrate.quad(integrand, 0, 1, limit=200)
    assert beta_mixture_log_bf(x, y, rho, k) == pytest.approx(math.log(numeric), rel=1e-6)
    assert beta_mixture_log_bf(0, 0, rho, k) == 0.0


def test_skipped_ticks_and_mixture_start_at_one() -> None:
    out = count_log_lr(
        ERRORS_GRID, np.array([0.0, 1.0]), np.array([[0], [5]]), np.array([[7], [0]])
    )
    assert np.all(out == 0.0)
    assert float(log_mean_exp(out[-1, 0])) == pytest.approx(0.0, abs=1e-12)


def test_guardrail_and_sample_ratio_known_values() -> None:
    # Few requests never trip the guardrail; many failures do.
    assert guardrail_log_e(3, 3, 0.5) < math.log(20)
    assert guardrail_log_e(200, 150, 0.5) > math.log(200)
    assert guardrail_log_e(1000, 480, 0.5) < 0.0
    # Exactly the configured split: no evidence; the candidate getting nothing: rejected.
    assert sample_ratio_log_e(100, 900, 0.1, 1.5) < 0.0
    assert sample_ratio_log_e(0, 5000, 0.1, 1.5) > math.log(1000)
    assert sample_ratio_log_e(1500, 3500, 0.1, 1.5) > math.log(1000)
    # Within the tolerance: not a mismatch however much data.
    assert sample_ratio_log_e(12_000, 88_000, 0.1, 1.5) < 0.0


def _runs(rng: np.random.Generator, runs: int, ticks: int, delta_c: float = 0.0) -> tuple:
    """Per run and tick: observed share, candidate and baseline errors. Traffic ~200/s with
    zero-traffic ticks; half the runs at a fixed 10 % share, half ramping 1-5-10-25-50 %;
    a base rate per run (0.1 %, 1 %, 5 % or 50 %) with bursts (x10) hitting both sides."""
    rps = rng.poisson(200, (ticks, runs)) * (rng.random((ticks, runs)) > 0.05)
    ramp = np.repeat([0.01, 0.05, 0.10, 0.25, 0.50], math.ceil(ticks / 5))[:ticks]
    share = np.where(np.arange(runs) % 2 == 0, 0.10, ramp[:, None])
    n_c = rng.binomial(rps, share)
    n_b = rps - n_c
    base_rate = np.array([0.001, 0.01, 0.05, 0.5])[np.arange(runs) % 4]
    burst = np.where(rng.random((ticks, runs)) < 0.03, 10.0, 1.0)
    p = np.minimum(base_rate * burst, 0.6)
    p_c = np.minimum(p * math.exp(delta_c), 1.0)
    e_c, e_b = rng.binomial(n_c, p_c), rng.binomial(n_b, p)
    total = n_c + n_b
    observed = np.divide(n_c, total, out=np.zeros(n_c.shape), where=total > 0)
    return observed, e_c, e_b, n_c, n_b


def _rejected(grid: Grid, observed: np.ndarray, e_c: np.ndarray, e_b: np.ndarray) -> np.ndarray:
    """Per run: did the mixture reach 1/alpha at any tick?"""
    out = []
    for lo in range(0, observed.shape[1], 250):
        sl = slice(lo, lo + 250)
        logs = log_mean_exp(count_log_lr(grid, observed[:, sl], e_c[:, sl], e_b[:, sl]))
        out.append((logs >= math.log(1 / ALPHA)).any(axis=0))
    return np.concatenate(out)


def test_a_a_false_rollbacks_stay_under_alpha_checked_every_tick() -> None:
    rng = np.random.default_rng(20261202)
    runs, ticks = 2000, 300
    observed, e_c, e_b, n_c, n_b = _runs(rng, runs, ticks)
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)
    for grid in (ERRORS_GRID, LATENCY_GRID):
        rate = _rejected(grid, observed, e_c, e_b).mean()
        assert rate <= bound, f"A/A false rollbacks {rate:.3f} > {bound:.3f}"
    # Negative control: a one-sided two-proportion z-test on the cumulative counts, re-run
    # every tick (what a fixed threshold re-checked every tick is) must break the bound.
    cc, cb = np.cumsum(e_c, axis=0), np.cumsum(e_b, axis=0)
    nc, nb = np.cumsum(n_c, axis=0), np.cumsum(n_b, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pc, pb = cc / nc, cb / nb
        pool = (cc + cb) / (nc + nb)
        z = (pc - pb) / np.sqrt(pool * (1 - pool) * (1 / nc + 1 / nb))
    z_rate = (np.nan_to_num(z) > stats.norm.ppf(1 - ALPHA)).any(axis=0).mean()
    assert z_rate > bound, f"the z-test control should fail the bound: {z_rate:.3f}"


def test_power_five_points_on_one_percent_at_ten_percent_share() -> None:
    rng = np.random.default_rng(7)
    runs, ticks = 500, 120  # two 60 s intervals at 200 req/s
    rps = rng.poisson(200, (ticks, runs))
    n_c = rng.binomial(rps, 0.10)
    n_b = rps - n_c
    e_c, e_b = rng.binomial(n_c, 0.06), rng.binomial(n_b, 0.01)
    observed = n_c / np.maximum(rps, 1)
    caught = _rejected(ERRORS_GRID, observed, e_c, e_b)
    assert caught.mean() >= 0.99, f"caught {caught.mean():.3f}"


def test_noninferiority_proves_an_equal_candidate_and_not_a_worse_one() -> None:
    rng = np.random.default_rng(3)
    grid = noninferiority_grid(1.5)
    ticks = 600
    n_c = rng.binomial(400, 0.5, (ticks, 200))
    n_b = 400 - n_c
    share = n_c / 400
    same = _rejected(grid, share, rng.binomial(n_c, 0.05), rng.binomial(n_b, 0.05))
    assert same.mean() > 0.9
    # Exactly at the margin (the null's boundary): proven at most alpha of the time.
    worse = _rejected(grid, share, rng.binomial(n_c, 0.075), rng.binomial(n_b, 0.05))
    assert worse.mean() <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 200)
    with pytest.raises(ValueError, match="margin"):
        noninferiority_grid(1.0)
