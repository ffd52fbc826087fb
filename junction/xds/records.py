"""The plain records of the xDS type state: a subscription, a response in flight, a NACK.

Data only; :mod:`junction.xds.type_state` owns the state that holds them and changes it
through its transitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from junction.xds.resources import CLUSTER, LISTENER, Resource

__all__ = ["POISON_MAX", "WILDCARD", "WILDCARD_TYPES", "Inflight", "NackInfo", "Subscription"]

#: Types whose empty initial subscription means "everything" (xDS protocol, "How the
#: client specifies what resources to return": legacy wildcard; Envoy uses it for both).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
WILDCARD = "*"
#: How many NACKed versions of one type are remembered (never sent again).
POISON_MAX = 32


@dataclass(frozen=True, slots=True)
class NackInfo:
    version: str
    nonce: str
    error_detail: str
    at: float
    origin: str
    config_version: str


@dataclass
class Subscription:
    """What a stream asked for of one type: wildcard and/or explicit names."""

    wildcard: bool = False
    #: No name was ever given: an empty list still means wildcard (CDS/LDS only).
    legacy: bool = True
    names: set[str] = field(default_factory=set)

    def select(self, resources: Mapping[str, Resource]) -> dict[str, Resource]:
        if self.wildcard:
            return dict(resources)
        return {n: resources[n] for n in sorted(self.names) if n in resources}

    def covers(self, resources: Mapping[str, Resource]) -> bool:
        """Does :meth:`select` give all of ``resources``? (Then a snapshot's mapping and its
        type version can be used as they are: no copy, no rehash of the whole type.)"""
        return self.wildcard or self.names.issuperset(resources.keys())

    @property
    def active(self) -> bool:
        return self.wildcard or bool(self.names)


@dataclass(frozen=True)
class Inflight:
    """The latest response of one type on a stream, until it is ACKed or NACKed."""

    nonce: str
    version: str
    resources: dict[str, Resource]
    removed: tuple[str, ...]
    origin: str
    config_version: str
    restore: bool
