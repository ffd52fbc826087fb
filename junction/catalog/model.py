"""Service instances, as every catalog (Consul, the instances file) reports them.

Health follows SPEC.md section 2: all checks passing -> HEALTHY; any warning -> DEGRADED;
any critical -> UNHEALTHY; node or service maintenance -> DRAINING. The names match
Envoy's ``config.core.v3.HealthStatus`` so translation is a lookup.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Catalog", "Health", "Instance", "health_from_checks"]


class Health(enum.Enum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"


#: Consul's check ids for maintenance mode (node-wide and per service instance).
NODE_MAINTENANCE = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX = "_service_maintenance:"


def health_from_checks(statuses: Iterable[tuple[str, str]]) -> Health:
    """Map Consul checks, given as ``(check_id, status)`` pairs, to a :class:`Health`.

    Maintenance wins over everything: Consul reports it as a critical check with a reserved
    id, and an operator draining a node wants DRAINING, not UNHEALTHY.
    """
    worst = Health.HEALTHY
    for check_id, status in statuses:
        if check_id == NODE_MAINTENANCE or check_id.startswith(SERVICE_MAINTENANCE_PREFIX):
            return Health.DRAINING
        if status == "critical":
            worst = Health.UNHEALTHY
        elif status == "warning" and worst is Health.HEALTHY:
            worst = Health.DEGRADED
    return worst


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a service: where it listens, where it runs, how healthy it is."""

    address: str
    port: int
    zone: str = ""
    region: str = ""
    health: Health = Health.HEALTHY
    weight: int = 1
    #: Consul node name (or another catalog's id); shown in /status, not sent to Envoy.
    node: str = ""
    tags: tuple[str, ...] = ()
    #: The catalog's id of this instance (Consul's service ID); how an operator may name it
    #: to ``junction drain``. Not sent to Envoy.
    id: str = ""

    def __lt__(self, other: object) -> bool:  # stable sort without comparing enums
        if not isinstance(other, Instance):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def sort_key(self) -> tuple[str, str, str, int]:
        return (self.region, self.zone, self.address, self.port)


@dataclass(frozen=True)
class Catalog:
    """Instances of every watched service, each tuple sorted (so equal catalogs compare equal)."""

    services: Mapping[str, tuple[Instance, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frozen = {name: tuple(sorted(insts)) for name, insts in self.services.items()}
        object.__setattr__(self, "services", MappingProxyType(dict(sorted(frozen.items()))))

    def instances(self, service: str) -> tuple[Instance, ...]:
        return self.services.get(service, ())

    def replace(self, service: str, instances: Iterable[Instance]) -> Catalog:
        """A new catalog with ``service``'s instances replaced.

        Only the changed service is sorted: with thousands of services this runs on every
        catalog change, so it must not re-sort the others.
        """
        services = dict(self.services)
        services[service] = tuple(sorted(instances))
        new = object.__new__(Catalog)
        object.__setattr__(new, "services", MappingProxyType(dict(sorted(services.items()))))
        return new

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and dict(self.services) == dict(other.services)

    def __hash__(self) -> int:
        return hash(tuple(self.services.items()))
