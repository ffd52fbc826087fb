"""Canary metrics: each ramp's weight and phase, the evidence it is judged on, decisions.

Read at scrape time from the states every replica watches (so every replica exports the
same weights) and from the controller of this process (the decisions it made). The
evidence is the newest recorded event's: the figures and statistics the controller used for
its last decision, so a dashboard can draw weights against the evidence behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from junction.canary.state import CanaryState, Phase
from junction.metrics import counter, gauge

__all__ = ["CanaryMetrics"]


class CanaryMetrics(Collector):
    """``states``: the stored states by service; ``decisions``: this process's controller's
    decisions by (service, action), or None where no controller runs here."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        states: Callable[[], Mapping[str, CanaryState]],
        decisions: Callable[[], Mapping[tuple[str, str], int]] | None = None,
    ) -> None:
        self._states = states
        self._decisions = decisions
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        states = dict(self._states())
        yield gauge(
            "junction_canary_weight",
            "The candidate's share of weighted traffic, percent",
            ["service", "version"],
            {(s, st.version): st.weight for s, st in states.items()},
        )
        yield gauge(
            "junction_canary_phase",
            "1 for the ramp's current phase",
            ["service", "phase"],
            {(s, p.value): float(st.phase is p) for s, st in states.items() for p in Phase},
        )
        yield gauge(
            "junction_canary_step_started_seconds",
            "When the current step began (Unix time)",
            ["service"],
            {(s,): st.step_started for s, st in states.items()},
        )
        yield gauge(
            "junction_canary_evidence",
            "The figures behind the newest decision, per side (requests, failures, ...)",
            ["service", "side", "figure"],
            {key: v for s, st in states.items() for key, v in _evidence(s, st)},
        )
        if self._decisions is not None:
            yield counter(
                "junction_canary_decisions",
                "Decisions this process's controller recorded, by action",
                ["service", "action"],
                {(service, action): n for (service, action), n in self._decisions().items()},
            )


def _evidence(service: str, state: CanaryState) -> Iterator[tuple[tuple[str, str, str], float]]:
    """Numeric leaves of the newest event's evidence, two levels deep (side -> figure)."""
    evidence = next((e.evidence for e in reversed(state.events) if e.evidence), None)
    if not evidence:
        return
    for side, figures in evidence.items():
        if isinstance(figures, dict):
            for name, value in figures.items():
                if _numeric(value):
                    yield (service, side, name), float(value)
        elif _numeric(figures):
            yield (service, "", side), float(figures)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
