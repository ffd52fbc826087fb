"""Canary policies: what the controller ramps, read from the config's ``versions`` section.

A service's canary (``versions.<service>.canary``, :mod:`junction.config.decisions`) names
the candidate version; the baseline is the service's default version. With a ``ramp``
mapping the controller moves the candidate's weight along ``ramp.steps``; without one the
weight stays as written and nothing here applies. :class:`CanaryPolicy` is the flat, frozen
form the pure :func:`junction.canary.step.step` reads, so its tests need no YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    max_error_rate: float = 0.05
    max_error_increase: float | None = 0.01
    max_p99: float | None = None
    max_p99_ratio: float | None = 1.5
    p99_slack: float = 5.0
    max_missing: float = 0.0
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

    def thresholds(self) -> dict[str, Any]:
        """The thresholds, as recorded with every decision's evidence."""
        return {
            "min_requests": self.min_requests,
            "max_error_rate": self.max_error_rate,
            "max_error_increase": self.max_error_increase,
            "max_p99_ms": self.max_p99,
            "max_p99_ratio": self.max_p99_ratio,
            "p99_slack_ms": self.p99_slack,
            "max_missing": self.max_missing,
        }


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
            max_error_rate=ramp.max_error_rate,
            max_error_increase=ramp.max_error_increase,
            max_p99=ramp.max_p99,
            max_p99_ratio=ramp.max_p99_ratio,
            p99_slack=ramp.p99_slack,
            max_missing=ramp.max_missing,
            baseline_version=sv.default,
        )
    return out
