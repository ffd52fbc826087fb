"""Anytime-valid tests for canaries: e-processes over per-tick counts (pure math, numpy).

An e-process M_t is nonnegative, starts at 1 and is a supermartingale under the null, so by
Ville's inequality P(exists t: M_t >= 1/alpha) <= alpha: the rule "reject the first time
M_t >= 1/alpha" keeps its error rate however often it is checked, with optional stopping
(Ramdas, Gruenwald, Vovk, Shafer, "Game-theoretic statistics and safe anytime-valid
inference", Statistical Science 2023; Johari, Koomen, Pekelis, Walsh, "Always valid
inference", Operations Research 2022). Averages of e-processes are e-processes, so metrics
combine by averaging (never worse than Bonferroni).

**The conditional count test** (Lindon & Malek, "Anytime-valid inference for multinomial
count data", NeurIPS 2022; Lindon, Sanden, Shirikian, "Rapid regression detection in
software deployments through sequential testing", KDD 2022). Each side's events (errors, or
requests slower than a threshold) arrive at rate share x e^delta_side x lambda(t), with
lambda(t) arbitrary, so load changes and incidents that hit both sides alike cancel. In
tick s with observed candidate share pi_s = n_c / (n_c + n_b), an event comes from the
candidate with probability theta_s(delta) = pi_s e^delta / (pi_s e^delta + 1 - pi_s), so
the log likelihood ratio of delta against delta0 over the tick's x candidate and y baseline
events is::

    x (delta - delta0) - (x + y) [log1p(pi_s (e^delta - 1)) - log1p(pi_s (e^delta0 - 1))]

A mixture over a grid of delta is the e-process; the state is one number per grid point,
and a tick's counts are all an update needs (so replicas' counts add up before it). With
per-request Bernoulli outcomes and delta0 = 0 the candidate's count given the tick's total
is hypergeometric, smaller in convex order than the binomial (Hoeffding 1963), and each
factor is convex in x: its expectation under the null is at most 1. Ticks where one side
had no traffic carry no information and are skipped. For delta0 != 0 (the non-inferiority
test) the same holds exactly in the Poisson model, a close approximation for rare events.

**Composite nulls** (non-inferiority, the sample-ratio tolerance): alternatives beyond the
null's boundary are compared with the boundary; in a one-parameter exponential family the
ratio has expectation <= 1 under every parameter on the null's side (the log-partition is
convex), so the mixture stays an e-process for the whole composite null.

**Guardrail**: H0 "the candidate's error rate is at most p0", a mixture of Bernoulli
likelihood ratios p1 > p0 against p0 over the candidate's totals: rejecting it is the same as
a time-uniform lower confidence bound on the rate exceeding p0 (the method of mixtures,
Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Annals of Statistics 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ERRORS_GRID",
    "LATENCY_GRID",
    "Grid",
    "beta_mixture_log_bf",
    "count_log_lr",
    "guardrail_alternatives",
    "guardrail_log_e",
    "log_mean_exp",
    "noninferiority_grid",
    "sample_ratio_log_e",
]

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Grid:
    """Alternatives ``deltas`` (log rate ratios) tested against ``null`` (a log ratio), each
    with weight 1/len(deltas)."""

    deltas: Floats
    null: float = 0.0

    @classmethod
    def between(cls, low: float, high: float, points: int, null: float = 0.0) -> Grid:
        """``points`` ratios spaced geometrically from ``low`` to ``high`` (ratios, not logs)."""
        return cls(np.log(np.geomspace(low, high, points)), null)

    def __len__(self) -> int:
        return len(self.deltas)


#: Rollback on errors: the candidate's error rate 1.1 to 20 times the baseline's.
ERRORS_GRID = Grid.between(1.1, 20.0, 24)
#: Rollback on latency: slow-request odds 1.2 to 20 times the baseline's (a floor above the
#: errors' so that a systematic but negligible difference, e.g. 2 % slower hosts, is not a
#: regression: the mixture's log-growth is negative for true ratios under about 1.1).
LATENCY_GRID = Grid.between(1.2, 20.0, 24)


def noninferiority_grid(margin: float, points: int = 12) -> Grid:
    """Non-inferiority: null "the candidate is worse by the ``margin`` ratio or more"
    (delta >= log margin), alternatives from ``margin / 1.1`` down to ``margin / 20``."""
    if margin <= 1.0:
        raise ValueError(f"margin must be > 1, got {margin}")
    return Grid(math.log(margin) - np.log(np.geomspace(1.1, 20.0, points)), math.log(margin))


def count_log_lr(grid: Grid, share: Floats, cand: Floats, base: Floats) -> Floats:
    """The log likelihood ratios of the conditional count test, per tick, cumulated.

    ``share``: the candidate's observed share of requests per tick, (T,) or per tick and
    column (T, M); ``cand``, ``base``: (T, M) each side's events per tick (columns: metrics,
    or independent runs in a simulation). Returns (T, M, G): the cumulative log ratio of
    each grid point after each tick. Ticks whose share is 0 or 1 add nothing.
    """
    share = np.asarray(share, dtype=np.float64)
    if share.ndim == 1:
        share = share[:, None]
    informative = (share > 0.0) & (share < 1.0)
    pi = np.where(informative, share, 0.5)[..., None]
    # log1p(pi (e^delta - 1)): the normalizer of theta(delta), alternatives and null.
    log_norm = np.log1p(pi * np.expm1(grid.deltas)) - np.log1p(pi * math.expm1(grid.null))
    x = np.where(informative, cand, 0.0)
    n = x + np.where(informative, base, 0.0)
    step = x[..., None] * (grid.deltas - grid.null) - n[..., None] * log_norm
    out: Floats = np.cumsum(step, axis=0)
    return out


def log_mean_exp(log_values: Floats, axis: int = -1) -> Floats:
    """log(mean(exp(v))) along ``axis``, without overflow (the mixture of equal weights)."""
    top = np.max(log_values, axis=axis, keepdims=True)
    out: Floats = np.squeeze(top, axis=axis) + np.log(np.mean(np.exp(log_values - top), axis=axis))
    return out


def sample_ratio_log_e(cand: int, base: int, share: float, tolerance: float) -> float:
    """Two-sided sample-ratio test: the log e-value against "the candidate's odds of getting
    a request are within ``tolerance`` times the configured ``share``'s" (binomial requests,
    share constant within a step, so the totals suffice). Alternatives: 12 ratios from
    ``tolerance x 1.1`` to ``tolerance x 20`` on either side, each against its boundary."""
    if not 0.0 < share < 1.0 or cand + base == 0:
        return 0.0
    ratios = np.geomspace(1.1, 20.0, 12)
    bound = math.log(tolerance)
    logs = []
    for sign in (1.0, -1.0):
        grid = Grid(sign * (bound + np.log(ratios)), sign * bound)
        logs.append(
            count_log_lr(grid, np.array([share]), np.array([[cand]]), np.array([[base]]))[-1, 0]
        )
    return float(log_mean_exp(np.concatenate(logs)))


def guardrail_alternatives(max_rate: float, points: int = 24) -> Floats:
    """The guardrail's alternatives: error rates p1 = p0 + (1 - p0) u, u from 1 % to 90 %
    geometrically (close above p0 to far above it)."""
    if not 0.0 < max_rate < 1.0:
        raise ValueError(f"max_rate must be in (0, 1), got {max_rate}")
    out: Floats = max_rate + (1.0 - max_rate) * np.geomspace(0.01, 0.9, points)
    return out


def guardrail_log_e(requests: int, errors: int, max_rate: float) -> float:
    """Log e-value against "the candidate's error rate is at most ``max_rate``" from its
    totals (a mixture of Bernoulli likelihood ratios over rates above ``max_rate``)."""
    if requests <= 0:
        return 0.0
    p1 = guardrail_alternatives(max_rate)
    logs = errors * np.log(p1 / max_rate) + (requests - errors) * np.log1p(
        -(p1 - max_rate) / (1.0 - max_rate)
    )
    return float(log_mean_exp(logs))


def beta_mixture_log_bf(cand: int, base: int, share: float, k: float = 100.0) -> float:
    """The closed form of the count test for a constant ``share`` rho: the Bayes factor of a
    Beta(k rho, k (1 - rho)) mixture over the candidate's event probability against rho,
    ``B(k rho + x, k (1 - rho) + y) / B(k rho, k (1 - rho)) / (rho^x (1 - rho)^y)``
    (Lindon & Malek 2022). Two-sided; used to check :func:`count_log_lr` and as a reference."""
    a, b = k * share, k * (1.0 - share)
    return (
        _log_beta(a + cand, b + base)
        - _log_beta(a, b)
        - cand * math.log(share)
        - base * math.log1p(-share)
    )


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
