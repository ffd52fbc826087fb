"""Envoy v3 resources as Junction carries them: named, versioned, immutable.

A :class:`Snapshot` is what translation produces and what every xDS stream serves from.
Each resource's version is a hash of its deterministic serialization, so an unchanged
resource keeps its version across snapshots (what delta xDS needs), and a type's version
is a hash of its resources' names and versions (what state-of-the-world xDS needs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

__all__ = [
    "ADS_ORDER",
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "TYPE_URLS",
    "Resource",
    "Snapshot",
    "short_type",
]

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"

#: The order ADS must send types in so Envoy never sees a reference to a missing resource
#: (xDS protocol, "Eventual consistency considerations": CDS, EDS, LDS, RDS).
ADS_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
TYPE_URLS = frozenset(ADS_ORDER)


def short_type(type_url: str) -> str:
    """``...cluster.v3.Cluster`` -> ``Cluster`` (for logs and /status)."""
    return type_url.rsplit(".", 1)[-1]


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    """One Envoy resource. ``version`` is a content hash; ``payload`` its wire bytes."""

    name: str
    message: Message
    payload: bytes
    version: str

    @classmethod
    def of(cls, name: str, message: Message) -> Resource:
        payload = message.SerializeToString(deterministic=True)
        return cls(name, message, payload, _digest(payload))


@dataclass(frozen=True)
class Snapshot:
    """Every resource Junction serves, by type URL and name. Immutable."""

    resources: Mapping[str, Mapping[str, Resource]]
    #: Where the config came from and its version, for mapping NACKs back to a source.
    origin: str = ""
    config_version: str = ""
    versions: Mapping[str, str] = field(init=False)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        frozen = {
            t: MappingProxyType(dict(sorted(self.resources.get(t, {}).items())))
            for t in ADS_ORDER
        }
        object.__setattr__(self, "resources", MappingProxyType(frozen))
        # By key (the name resources are filed and sent under): then a type's version is
        # exactly what protocol_state.version_of gives for all its resources, so the xDS
        # core can use it instead of rehashing a whole type per response.
        versions = {t: _keyed_version(frozen[t]) for t in ADS_ORDER}
        object.__setattr__(self, "versions", MappingProxyType(versions))
        object.__setattr__(self, "version", _whole_version(versions))

    @classmethod
    def build(
        cls,
        by_type: Mapping[str, Iterable[tuple[str, Message]]],
        origin: str = "",
        config_version: str = "",
    ) -> Snapshot:
        return cls(
            {t: {n: Resource.of(n, m) for n, m in items} for t, items in by_type.items()},
            origin=origin,
            config_version=config_version,
        )

    def replace(
        self,
        by_type: Mapping[str, Mapping[str, Resource]],
        *,
        origin: str | None = None,
        config_version: str | None = None,
    ) -> Snapshot:
        """This snapshot with the resources of the types in ``by_type`` replaced.

        The same as building it whole, except that the other types' (immutable) mappings
        and versions are shared instead of re-sorted and rehashed: after a one-instance
        change at 1000 clusters only the endpoints are. Consumers may tell an unchanged
        type by the identity of its mapping.
        """
        unknown = by_type.keys() - TYPE_URLS
        if unknown:
            raise ValueError(f"not a served type URL: {sorted(unknown)}")
        frozen = dict(self.resources)
        versions = dict(self.versions)
        for t, resources in by_type.items():
            frozen[t] = MappingProxyType(dict(sorted(resources.items())))
            versions[t] = _keyed_version(frozen[t])
        new = object.__new__(Snapshot)
        object.__setattr__(new, "resources", MappingProxyType(frozen))
        object.__setattr__(new, "origin", self.origin if origin is None else origin)
        object.__setattr__(
            new, "config_version", self.config_version if config_version is None else config_version
        )
        object.__setattr__(new, "versions", MappingProxyType(versions))
        object.__setattr__(new, "version", _whole_version(versions))
        return new

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, MappingProxyType({}))

    def counts(self) -> dict[str, int]:
        return {short_type(t): len(self.of_type(t)) for t in ADS_ORDER}


def type_version(resources: Iterable[Resource]) -> str:
    """Version of a set of resources of one type: a hash of their names and versions."""
    return _digest("\n".join(f"{r.name}={r.version}" for r in resources).encode())


def _keyed_version(resources: Mapping[str, Resource]) -> str:
    # type_version with each resource's key for its name (the same for any snapshot that
    # passes check_snapshot, which requires key == name).
    return _digest("\n".join([n + "=" + r.version for n, r in resources.items()]).encode())


def _whole_version(versions: Mapping[str, str]) -> str:
    return _digest("".join(versions[t] for t in ADS_ORDER).encode())
