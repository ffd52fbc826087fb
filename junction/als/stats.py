"""The statistics of ``junction report``: per-arm figures and arm-vs-control tests.

- Error rate: Wilson score interval (95 %) for each arm; the difference from control is
  tested with the two-proportion z-test (pooled standard error, two-sided), the standard
  test for comparing two binomial proportions with large samples.
- Latency: the Mann-Whitney U test (two-sided; scipy) on the arms' latencies, at most
  ``sample`` per arm drawn by reservoir sampling with a fixed seed (so a report is
  reproducible). It asks whether one arm's latencies tend to be larger than the other's,
  without assuming a distribution, which suits long-tailed latencies. Quantiles (p50,
  p95, p99) come from a DDSketch over all requests, not from the sample.

Pure functions plus :class:`ArmAccumulator`, which takes records one at a time (logs can be
larger than memory).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from ddsketch import DDSketch
from scipy import stats as _scipy

__all__ = [
    "ArmAccumulator",
    "ArmStats",
    "Comparison",
    "compare",
    "mann_whitney",
    "two_proportion_z",
    "wilson",
]

Z95 = 1.959963984540054


def wilson(failures: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``failures / n`` ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = failures / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) for H0: p1 == p2, with the pooled standard error. No evidence either
    way (an empty arm, or no failures and no successes to tell apart): (0.0, 1.0)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def mann_whitney(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann-Whitney U test (1.0 when either side is empty)."""
    if not a or not b:
        return 1.0
    return float(_scipy.mannwhitneyu(a, b, alternative="two-sided").pvalue)


@dataclass
class ArmAccumulator:
    """Takes one request at a time; keeps counts, a DDSketch and a reservoir sample."""

    name: str
    sample: int = 20_000
    seed: int = 1
    requests: int = 0
    failures: int = 0
    sketch: DDSketch = field(default_factory=lambda: DDSketch(0.01))
    latencies: list[float] = field(default_factory=list)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.seed}:{self.name}")

    def add(self, ms: float, failed: bool) -> None:
        self.requests += 1
        if failed:
            self.failures += 1
        self.sketch.add(ms)
        if len(self.latencies) < self.sample:
            self.latencies.append(ms)
        else:  # reservoir sampling (Vitter's algorithm R)
            j = self._rng.randrange(self.requests)
            if j < self.sample:
                self.latencies[j] = ms

    def result(self) -> ArmStats:
        low, high = wilson(self.failures, self.requests)

        def q(x: float) -> float | None:
            v = self.sketch.get_quantile_value(x) if self.requests else None
            return None if v is None else float(v)

        return ArmStats(
            self.name,
            self.requests,
            self.failures,
            self.failures / self.requests if self.requests else None,
            low,
            high,
            q(0.5),
            q(0.95),
            q(0.99),
        )


@dataclass(frozen=True)
class ArmStats:
    name: str
    requests: int
    failures: int
    error_rate: float | None
    ci_low: float
    ci_high: float
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class Comparison:
    """One arm against control."""

    arm: str
    error_diff: float | None
    error_z: float
    error_p: float
    latency_p: float
    errors_significant: bool
    latency_significant: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "error_rate_difference": self.error_diff,
            "error_z": self.error_z,
            "error_p": self.error_p,
            "errors_significant": self.errors_significant,
            "latency_p": self.latency_p,
            "latency_significant": self.latency_significant,
        }


def compare(arm: ArmAccumulator, control: ArmAccumulator, alpha: float = 0.05) -> Comparison:
    z, p = two_proportion_z(arm.failures, arm.requests, control.failures, control.requests)
    latency_p = mann_whitney(arm.latencies, control.latencies)
    diff = (
        arm.failures / arm.requests - control.failures / control.requests
        if arm.requests and control.requests
        else None
    )
    return Comparison(arm.name, diff, z, p, latency_p, p < alpha, latency_p < alpha)
