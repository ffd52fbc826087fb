"""Anytime-valid p-values for experiment reports: arm against control, on error rates.

A fixed-horizon test (the z-test of :mod:`junction.als.stats`) is valid once, at a sample
size chosen in advance. People look at a running experiment every day and stop when it
looks significant, which inflates its false positives far beyond alpha. An anytime-valid
p-value stays valid however often it is looked at: ``p_t = min(1, 1 / max_{s<=t} M_s)``
for an e-process ``M`` (Ville's inequality; Ramdas, Gruenwald, Vovk, Shafer, "Game-theoretic
statistics and safe anytime-valid inference", Statistical Science 2023; Johari, Koomen,
Pekelis, Walsh, "Always valid inference", Operations Research 2022). The price is power:
near the threshold it is larger than the one-look p (30 against 10 errors of 1,000: 0.035
against 0.0014). It never rises again once low: a later look cannot undo a rejection.

The e-process is the canary's conditional count test
(:func:`junction.canary.sequential.count_log_lr`; Lindon & Malek, NeurIPS 2022), made
two-sided: an equal-weight mixture over error-rate ratios ``r`` from 1.1 to 20 *and* from
1/1.1 to 1/20 of the arm against control (a mixture of e-processes is one). Per time bucket
(:data:`BUCKET_SECONDS`, fixed in advance, never chosen from the data) it reads the arm's
share of the two arms' requests and each arm's errors, so traffic that varies over the day
cancels out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from junction.canary.sequential import Grid, count_log_lr, log_mean_exp

__all__ = ["BUCKET_SECONDS", "TWO_SIDED", "anytime_p", "bucket_of"]

#: The report's time bucket: requests are counted per minute of their end time.
BUCKET_SECONDS = 60.0

_RATIOS = np.geomspace(1.1, 20.0, 24)
#: Both directions: the arm's error rate 1.1..20 times control's, or 1/1.1..1/20 of it.
TWO_SIDED = Grid(np.concatenate([np.log(_RATIOS), -np.log(_RATIOS)]))


def bucket_of(end: float) -> int:
    """The bucket of a request that ended at ``end`` (Unix seconds)."""
    return math.floor(end / BUCKET_SECONDS)


def anytime_p(arm: Mapping[int, tuple[int, int]], control: Mapping[int, tuple[int, int]]) -> float:
    """The anytime-valid p of "the arm's error rate equals control's", from per-bucket
    ``(requests, errors)`` of each. 1.0 without a bucket where both arms had traffic."""
    buckets = sorted(set(arm) & set(control))
    if not buckets:
        return 1.0
    n_a = np.array([arm[b][0] for b in buckets], dtype=np.float64)
    n_c = np.array([control[b][0] for b in buckets], dtype=np.float64)
    e_a = np.array([[arm[b][1]] for b in buckets], dtype=np.float64)
    e_c = np.array([[control[b][1]] for b in buckets], dtype=np.float64)
    total = n_a + n_c
    share = np.divide(n_a, total, out=np.zeros_like(total), where=total > 0)
    log_m = log_mean_exp(count_log_lr(TWO_SIDED, share, e_a, e_c)[:, 0, :])
    # p = 1 / max M, with M_0 = 1 (before any data the e-process is 1: p starts at 1).
    return float(min(1.0, math.exp(-max(0.0, float(np.max(log_m))))))
