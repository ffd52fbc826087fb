"""Who decides, per route: Envoy itself (``native``), the decision service (``service``), or
nobody (``off``). Chosen automatically from the config, per route; translation, the
decision service, ``junction render`` and ``/status`` all read it from here.

Envoy can make a decision natively when it needs nothing but route matching and its own
weighted-cluster hash:

- a **pin** by header or query parameter with ``trust: any`` becomes one header- or
  query-matched route per version in front of the plain route (Envoy's ``HeaderMatcher``
  and ``QueryParameterMatcher``);
- the **sticky canary** becomes the plain route itself: weighted clusters with
  ``use_hash_policy`` over the canary key (:mod:`junction.extproc.envoy_hash`).

A route needs the service (ext_proc stays on for it) when it has an experiment (arms,
salts, sticky-cookie issuance), or its service's pin trusts by ``cidr`` or ``hmac`` (the
source address, a signature and a clock) or reads a cookie (Envoy matches a ``Cookie``
header only by regex over the whole header). ``decision.force-service: true`` sends every
route that decides through the service, for debugging: the same decisions, made and
counted by the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from junction.config.model import Config
from junction.extproc.plan import RoutePlan, route_plans

__all__ = ["NATIVE", "OFF", "SERVICE", "RouteTier", "Tier", "route_tiers", "tier_summary"]

Tier = Literal["off", "native", "service"]
OFF: Tier = "off"
NATIVE: Tier = "native"
SERVICE: Tier = "service"


@dataclass(frozen=True, slots=True)
class RouteTier:
    """Who decides on one prefix route, and why."""

    plan: RoutePlan
    tier: Tier
    #: Why the service is needed (empty unless ``tier`` is ``service``).
    reasons: tuple[str, ...]
    #: Envoy matches pins on this route itself (header/query routes per version).
    native_pin: bool
    #: The plain route is the sticky canary split (weighted clusters hashing the key). Also
    #: on service routes: when the service fails open, canary users stay where they were.
    hash_canary: bool


def route_tiers(config: Config) -> tuple[RouteTier, ...]:
    """One :class:`RouteTier` per :func:`~junction.extproc.plan.route_plans` entry, same order."""
    return tuple(_tier(config, plan) for plan in route_plans(config))


def service_reasons(config: Config, plan: RoutePlan) -> tuple[str, ...]:
    """Why ``plan``'s route cannot be decided by Envoy alone (empty: it can)."""
    reasons = [f"experiment {name}" for name in plan.experiments]
    sv = config.versions.get(plan.service) if plan.service else None
    pin = sv.pin if sv is not None else None
    if pin is not None:
        if pin.trust != "any":
            reasons.append(f"pin trust: {pin.trust}")
        if pin.cookie is not None:
            reasons.append("cookie pin")
    if config.decision.force_service:
        reasons.append("decision.force-service")
    return tuple(reasons)


def _tier(config: Config, plan: RoutePlan) -> RouteTier:
    sv = config.versions.get(plan.service) if plan.service else None
    canary = sv is not None and sv.canary is not None
    if not plan.enabled:
        return RouteTier(plan, OFF, (), native_pin=False, hash_canary=False)
    reasons = service_reasons(config, plan)
    if reasons:
        return RouteTier(plan, SERVICE, reasons, native_pin=False, hash_canary=canary)
    has_pin = sv is not None and sv.pin is not None
    return RouteTier(plan, NATIVE, (), native_pin=has_pin, hash_canary=canary)


def tier_summary(config: Config) -> list[dict[str, object]]:
    """Plain data for ``junction render`` and ``/status``: per route, who decides and why."""
    return [
        {
            "vhost": t.plan.vhost,
            "prefix": t.plan.prefix,
            "service": t.plan.service,
            "tier": t.tier,
            "native": [
                *(["pin"] if t.native_pin else []),
                *(["canary"] if t.hash_canary and t.tier == NATIVE else []),
            ],
            "reasons": list(t.reasons),
        }
        for t in route_tiers(config)
    ]
