"""Drains: an operator's (or the maintenance agent's) wish that one instance take no new
requests. Pure: records, how they name instances, what they do to a catalog, and whether
one may be added.

A drain names a service (a cluster name) and an instance, either by the catalog's id of
the instance (Consul's service ID) or by ``ADDRESS:PORT`` (``[ADDRESS]:PORT`` for IPv6),
the address and port the catalog reports. A drained instance keeps its place in the
catalog with :attr:`~junction.catalog.model.Health.DRAINING`, which translation turns into
``HealthStatus.DRAINING`` in EDS: Envoy sends it no new requests and lets those in flight
finish (it does not close connections for a health change unless
``close_connections_on_host_health_failure``, which Junction leaves off).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from junction.catalog.model import Health, Instance
from junction.config.model import CLUSTER_NAME
from junction.errors import JunctionError

__all__ = [
    "DrainError",
    "DrainRecord",
    "DrainRefused",
    "apply_drains",
    "check_drain",
    "check_names",
    "instance_label",
    "matches",
]

#: A Consul service ID: anything printable but '/' (it becomes a KV key segment).
_INSTANCE = re.compile(r"^[^/\s]{1,256}$")
SERVING = (Health.HEALTHY, Health.DEGRADED)


class DrainError(JunctionError):
    """Base class of the drain package's errors (the message says what is wrong)."""


class DrainRefused(DrainError):
    """A drain that would do harm (leave a cluster with no healthy host) or that names no
    known instance; ``--force`` records it anyway."""


@dataclass(frozen=True, slots=True)
class DrainRecord:
    """One drain, as stored. ``since`` is a Unix time; ``by`` who asked (``operator``,
    ``maintenance-agent``); ``forced``: recorded despite a refusal."""

    service: str
    instance: str
    reason: str = ""
    since: float = 0.0
    by: str = "operator"
    forced: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.instance)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> DrainRecord:
        """Raises :class:`DrainError` naming the field when ``data`` is not a record."""
        if not isinstance(data, Mapping):
            raise DrainError("not a JSON object")
        try:
            record = cls(
                service=_text(data, "service"),
                instance=_text(data, "instance"),
                reason=_text(data, "reason", ""),
                since=float(data.get("since", 0.0)),
                by=_text(data, "by", "operator"),
                forced=bool(data.get("forced", False)),
            )
        except (TypeError, ValueError) as exc:
            raise DrainError(f"since: {exc}") from None
        check_names(record.service, record.instance)
        return record


def _text(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise DrainError(f"{key}: must be a string")
    return value


def check_names(service: str, instance: str) -> None:
    """Raise :class:`DrainError` unless both are usable names."""
    if not CLUSTER_NAME.match(service):
        raise DrainError(f"service {service!r} is not a service (cluster) name")
    if not _INSTANCE.match(instance):
        raise DrainError(
            f"instance {instance!r} is neither a service ID nor ADDRESS:PORT (no '/' or spaces)"
        )


def instance_label(inst: Instance) -> str:
    """``ADDRESS:PORT`` of ``inst`` (IPv6 in brackets), as drains and /status name it."""
    try:
        v6 = ipaddress.ip_address(inst.address).version == 6
    except ValueError:
        v6 = False
    return f"[{inst.address}]:{inst.port}" if v6 else f"{inst.address}:{inst.port}"


def matches(inst: Instance, instance: str) -> bool:
    """Whether the drain name ``instance`` names ``inst`` (its id, or its address:port)."""
    return (bool(inst.id) and inst.id == instance) or instance_label(inst) == instance


def apply_drains(instances: Iterable[Instance], drained: Iterable[str]) -> tuple[Instance, ...]:
    """``instances`` with every one named in ``drained`` set to DRAINING (others as is)."""
    names = tuple(drained)
    return tuple(
        dataclasses.replace(i, health=Health.DRAINING)
        if names and any(matches(i, n) for n in names)
        else i
        for i in instances
    )


def check_drain(
    service: str,
    instance: str,
    instances: Iterable[Instance],
    drained: Iterable[str],
    envoy: Mapping[str, bool] | None = None,
) -> str:
    """What draining ``instance`` of ``service`` does, as one sentence; raises
    :class:`DrainRefused` (saying what would happen) when it names no instance or would
    leave the service with no healthy host. ``drained``: the service's current drains.
    ``envoy``: ``ADDRESS:PORT`` -> whether Envoy sends the host traffic (its admin API:
    active health checks and outlier ejections count too); hosts it does not list are
    judged by the catalog alone."""
    insts = tuple(instances)
    envoy = envoy or {}

    def serving(i: Instance) -> bool:
        return i.health in SERVING and envoy.get(instance_label(i), True)

    def state(i: Instance) -> str:
        if i.health in SERVING and not serving(i):
            return "failing in Envoy (health check or outlier ejection)"
        return i.health.value
    named = [i for i in insts if matches(i, instance)]
    if not named:
        known = ", ".join(sorted({instance_label(i) for i in insts})) or "none"
        raise DrainRefused(
            f"no instance of {service} is {instance!r} (its instances: {known}); "
            "the drain would do nothing until one registers under that name"
        )
    after = apply_drains(insts, (*drained, instance))
    left = [i for i in after if serving(i)]
    if not left:
        states = ", ".join(f"{instance_label(i)} {state(i)}" for i in apply_drains(insts, drained))
        raise DrainRefused(
            f"draining {instance} would leave {service} with no healthy instance "
            f"(now: {states}); Envoy would answer every request for it with 503 "
            "'no healthy upstream'"
        )
    return (
        f"{', '.join(instance_label(i) for i in named)} of {service} takes no new requests; "
        f"{len(left)} of {len(insts)} instances keep serving"
    )
