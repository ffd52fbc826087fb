"""Canary policies: what the controller ramps, read from the config's ``versions`` section.

A service's canary (``versions.<service>.canary``, :mod:`junction.config.decisions`) names
the candidate version; the baseline is the service's default version. With a ``ramp``
mapping the controller moves the candidate's weight along ``ramp.steps``; without one the
weight stays as written and nothing here applies. :class:`CanaryPolicy` is the flat, frozen
form the pure :func:`junction.canary.step.step` reads, so its tests need no YAML.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from junction.canary.monitor import SequentialSettings
from junction.config.model import Config

__all__ = ["CanaryPolicy", "policies"]


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    """One service's ramp (field meanings: :class:`junction.config.decisions.CanaryRamp`)."""

    service: str
    version: str
    baseline: str
    candidate: str
    steps: tuple[int, ...] = (1, 5, 10, 25, 50, 100)
    interval: float = 60.0
    min_requests: int = 100
    alpha: float = 0.05
    margin: float = 1.5
    max_error_rate: float = 0.5
    latency_quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    latency_thresholds: tuple[float, ...] | None = None
    latency_lookback: float = 120.0
    sample_ratio_tolerance: float = 1.5
    max_missing: float = 0.0
    #: Seconds after a tick's end before it is judged (every Envoy has flushed its logs:
    #: the ALS buffer flushes every second).
    settle: float = 2.0
    #: Seconds at the start of a step left out of the sample-ratio test (Envoys applying
    #: the new weights).
    grace: float = 3.0
    #: The version name of the baseline (the service's default), for display.
    baseline_version: str = field(default="")

    def __post_init__(self) -> None:
        if not self.steps or list(self.steps) != sorted(set(self.steps)) or self.steps[-1] != 100:
            raise ValueError(f"steps must increase and end at 100, got {self.steps}")

    def next_weight(self, weight: int) -> int | None:
        """The step after ``weight`` (the first step above it); None at 100."""
        for s in self.steps:
            if s > weight:
                return s
        return None

    def step_index(self, weight: int) -> int:
        """Index of the highest step <= ``weight`` (-1 below the first)."""
        index = -1
        for i, s in enumerate(self.steps):
            if s <= weight:
                index = i
        return index

    @property
    def latency_metrics(self) -> int:
        """How many latency thresholds each step counts slow requests against."""
        if self.latency_thresholds is not None:
            return len(self.latency_thresholds)
        return len(self.latency_quantiles)

    def test_settings(self) -> SequentialSettings:
        """What the sequential tests read (:mod:`junction.canary.monitor`)."""
        return _settings(
            self.alpha,
            self.margin,
            self.max_error_rate,
            self.latency_metrics,
            self.sample_ratio_tolerance,
        )

    def thresholds(self) -> dict[str, Any]:
        """The policy's settings, as recorded with every decision's evidence."""
        return {
            "alpha": self.alpha,
            "margin": self.margin,
            "min_requests": self.min_requests,
            "max_error_rate": self.max_error_rate,
            "latency_quantiles": list(self.latency_quantiles),
            "latency_thresholds_ms": (
                None if self.latency_thresholds is None else list(self.latency_thresholds)
            ),
            "sample_ratio_tolerance": self.sample_ratio_tolerance,
            "max_missing": self.max_missing,
        }


@functools.lru_cache(maxsize=256)
def _settings(
    alpha: float, margin: float, max_error_rate: float, latency: int, tolerance: float
) -> SequentialSettings:
    # Cached: the controller asks for every ramp twice a second.
    return SequentialSettings(alpha, margin, max_error_rate, latency, tolerance)


def policies(config: Config) -> dict[str, CanaryPolicy]:
    """Every service whose canary has a ``ramp``, by service name."""
    out: dict[str, CanaryPolicy] = {}
    for service, sv in sorted(config.versions.items()):
        canary = sv.canary
        if canary is None or canary.ramp is None:
            continue
        ramp = canary.ramp
        out[service] = CanaryPolicy(
            service=service,
            version=canary.version,
            baseline=sv.clusters[sv.default],
            candidate=sv.clusters[canary.version],
            steps=tuple(ramp.steps),
            interval=ramp.interval,
            min_requests=ramp.min_requests,
            alpha=ramp.alpha,
            margin=ramp.margin,
            max_error_rate=ramp.max_error_rate,
            latency_quantiles=tuple(ramp.latency_quantiles),
            latency_thresholds=(
                None if ramp.latency_thresholds is None else tuple(ramp.latency_thresholds)
            ),
            latency_lookback=ramp.latency_lookback,
            sample_ratio_tolerance=ramp.sample_ratio_tolerance,
            max_missing=ramp.max_missing,
            baseline_version=sv.default,
        )
    return out
