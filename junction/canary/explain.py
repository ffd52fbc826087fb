"""What a canary decision was made on, in words and numbers (pure; used by
:mod:`junction.canary.step`): the evidence recorded with every event and shown on /canary
and /status, and the reason of a rollback."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from junction.als.evidence import SideCounts
from junction.canary.monitor import RampStats, metric_weights, read
from junction.canary.policy import CanaryPolicy
from junction.canary.state import CanaryState

__all__ = ["SAMPLE_RATIO_ALPHA", "decision_evidence", "regression_reason"]

#: The sample-ratio test's level: a false mismatch only delays a step, so it is strict.
SAMPLE_RATIO_ALPHA = 0.001


def decision_evidence(
    state: CanaryState,
    policy: CanaryPolicy,
    now: float,
    tick_seconds: float,
    sample_ratio_log_e: float | None = None,
) -> dict[str, Any]:
    """What a decision was made on (the event's ``evidence``, shown on /canary and /status):
    the step's counts per side, the configured and observed shares, the ramp's candidate
    totals, the e-values (reject at ``1/alpha``) and the anytime-valid p-value."""
    stats = state.stats or RampStats.fresh(policy.latency_metrics)
    tally = stats.step
    seen = tally.candidate.requests + tally.baseline.requests

    def side(cluster: str, counts: SideCounts) -> dict[str, Any]:
        return {
            "cluster": cluster,
            "requests": counts.requests,
            "errors": counts.errors,
            "error_rate": counts.errors / counts.requests if counts.requests else None,
            "slow": list(counts.slow),
        }

    reading = replace(read(stats), sample_ratio=sample_ratio_log_e)
    return {
        "start": state.step_started,
        "end": now,
        "tick_seconds": tick_seconds,
        "last_tick": stats.last_tick,
        "baseline": side(policy.baseline, tally.baseline),
        "candidate": side(policy.candidate, tally.candidate),
        "share": {
            "configured": state.weight / 100.0,
            "observed": tally.candidate.requests / seen if seen else None,
        },
        "ramp_candidate": {"requests": stats.ramp_requests, "errors": stats.ramp_errors},
        "missing": tally.missing,
        "thresholds_ms": list(state.thresholds_ms),
        "tests": {
            **reading.to_json(policy.test_settings()),
            "anytime_p": round(min(1.0, math.exp(-stats.peak)), 6),
            "sample_ratio_reject_at": 1 / SAMPLE_RATIO_ALPHA,
        },
        "policy": policy.thresholds(),
    }


def regression_reason(stats: RampStats, policy: CanaryPolicy) -> str:
    """The rollback's reason: the metric that weighs most in the e-value, with its counts."""
    reading = read(stats)
    weights = metric_weights(len(reading.latency))
    values = [reading.errors, *reading.latency, reading.guardrail]
    parts = [w * math.exp(min(v, 700.0)) for w, v in zip(weights, values, strict=True)]
    top = max(range(len(parts)), key=parts.__getitem__)
    tally = stats.step
    if top == 0:
        # The errors test runs over the whole ramp: a step restarted by a sample-ratio or
        # lost-log hold may have few counts of its own, so the ramp's are named too.
        what = (
            f"candidate errors {stats.ramp_errors} of {stats.ramp_requests} over the ramp"
            f" ({tally.candidate.errors} of {tally.candidate.requests} vs baseline"
            f" {tally.baseline.errors} of {tally.baseline.requests} in this step)"
        )
    elif top == len(parts) - 1:
        what = (
            f"candidate error rate above max-error-rate {policy.max_error_rate:.0%}"
            f" ({stats.ramp_errors} of {stats.ramp_requests} over the ramp)"
        )
    else:
        i = top - 1
        c = tally.candidate.slow[i] if len(tally.candidate.slow) > i else 0
        b = tally.baseline.slow[i] if len(tally.baseline.slow) > i else 0
        what = (
            f"candidate requests slower than threshold {i + 1}: {c} of"
            f" {tally.candidate.requests} vs baseline {b} of {tally.baseline.requests}"
        )
    return (
        f"regression: {what}; rollback e-value {math.exp(min(stats.peak, 700.0)):.3g}"
        f" >= 1/alpha {1 / policy.alpha:g} (anytime p {math.exp(-stats.peak):.4f})"
    )
