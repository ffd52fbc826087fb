"""Per-node xDS state and the status it exposes: plain data, no I/O.

A :class:`NodeState` records, per type URL, what the node ACKed (content and versions),
what was sent since, the last NACK and the versions never to resend. It is keyed by node
id in a :class:`NodeRegistry`, so every stream of one node (ADS, or the separate per-type
CDS/EDS/LDS/RDS streams) reads and updates the same state. :meth:`NodeState.status`
turns it into frozen :class:`NodeStatus` values for ``/status`` and ``/healthz``.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from junction.xds.resources import ADS_ORDER, CLUSTER, LISTENER, Resource, short_type
from junction.xds.view import Holding

__all__ = [
    "WILDCARD",
    "WILDCARD_TYPES",
    "Inflight",
    "NackInfo",
    "NodeRegistry",
    "NodeState",
    "NodeStatus",
    "StreamKind",
    "StreamTypeState",
    "Subscription",
    "TypeState",
    "TypeStatus",
    "digest_versions",
    "nonce_prefix",
    "selection",
    "version_of",
]

#: Types whose empty initial subscription means "everything" (xDS protocol, "How the
#: client specifies what resources to return": legacy wildcard; Envoy uses it for both).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
WILDCARD = "*"
_POISON_MAX = 32


@dataclass(frozen=True, slots=True)
class StreamKind:
    """``sotw``/``delta`` and ADS or the one type URL of a per-type service."""

    delta: bool
    type_url: str | None = None

    @property
    def ads(self) -> bool:
        return self.type_url is None

    def __str__(self) -> str:
        variant = "delta" if self.delta else "sotw"
        service = "ads" if self.type_url is None else short_type(self.type_url)
        return f"{variant}/{service}"


# ---- status (plain data for /status and /healthz) ---------------------------------------


@dataclass(frozen=True, slots=True)
class NackInfo:
    version: str
    nonce: str
    error_detail: str
    at: float
    origin: str
    config_version: str


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """One type URL of one node. ``target_version`` is what the newest snapshot would be."""

    type_url: str
    subscribed: bool
    sent_version: str
    sent_nonce: str
    acked_version: str
    target_version: str
    awaiting_ack: bool
    waiting: tuple[str, ...]
    nack: NackInfo | None
    in_sync: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": short_type(self.type_url),
            "subscribed": self.subscribed,
            "sent_version": self.sent_version,
            "sent_nonce": self.sent_nonce,
            "acked_version": self.acked_version,
            "target_version": self.target_version,
            "awaiting_ack": self.awaiting_ack,
            "waiting": list(self.waiting),
            "nack": None if self.nack is None else _nack_dict(self.nack),
            "in_sync": self.in_sync,
        }


def _nack_dict(n: NackInfo) -> dict[str, Any]:
    return {
        "version": n.version,
        "nonce": n.nonce,
        "error_detail": n.error_detail,
        "at": n.at,
        "origin": n.origin,
        "config_version": n.config_version,
    }


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node: connected or not, its streams (e.g. ``sotw/ads``), each type's state.

    ``synced`` is True when the node is connected and has ACKed, for every type it
    subscribes to, exactly what the newest snapshot gives it (nothing in flight, nothing
    held back by make-before-break, no NACK outstanding).
    """

    node_id: str
    connected: bool
    streams: tuple[str, ...]
    types: tuple[TypeStatus, ...]
    synced: bool
    last_seen: float

    def problems(self) -> list[str]:
        """Why the node is not synced, one line each (empty when synced)."""
        if self.synced:
            return []
        if not self.connected:
            return [f"node {self.node_id}: not connected"]
        out = []
        for t in self.types:
            if not t.subscribed or t.in_sync:
                continue
            name = short_type(t.type_url)
            if t.nack is not None and t.acked_version != t.target_version:
                out.append(
                    f"node {self.node_id}: {name} version {t.nack.version} NACKed "
                    f"({t.nack.origin} {t.nack.config_version}): {t.nack.error_detail}"
                )
            elif t.awaiting_ack:
                out.append(f"node {self.node_id}: {name} version {t.sent_version} not ACKed yet")
            else:
                out.append(
                    f"node {self.node_id}: {name} at {t.acked_version or 'nothing'}, "
                    f"latest is {t.target_version}"
                )
        return out or [f"node {self.node_id}: not subscribed to anything yet"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "connected": self.connected,
            "streams": list(self.streams),
            "synced": self.synced,
            "last_seen": self.last_seen,
            "types": {short_type(t.type_url): t.to_dict() for t in self.types},
        }


# ---- versions ---------------------------------------------------------------------------


def digest_versions(versions: Mapping[str, str]) -> str:
    """A type version from ``name -> resource version``.

    The same value as :func:`junction.xds.resources.type_version` over those resources
    (a test pins this), so SotW ``version_info`` and delta ``system_version_info`` agree.
    """
    # "name=version" lines, joined in C (map/str.join): ~2x faster than an f-string per
    # line, and this runs on every delta response and ACK (1000 names at 1000 clusters).
    text = "\n".join(map("=".join, sorted(versions.items())))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def version_of(resources: Mapping[str, Resource]) -> str:
    return digest_versions({n: r.version for n, r in resources.items()})


def selection(
    sub: Subscription, resources: Mapping[str, Resource], version: str = ""
) -> tuple[Mapping[str, Resource], str]:
    """What ``sub`` selects of ``resources`` (read-only) and its :func:`version_of`.

    ``version``, when given, must be ``version_of(resources)`` (a snapshot's type version
    is): if ``sub`` selects everything, both are returned as they are, without copying or
    rehashing the whole type on every response (1000 clusters: ~0.3 ms per type).
    """
    if version and sub.covers(resources):
        return resources, version
    chosen = sub.select(resources)
    return chosen, version_of(chosen)


# ---- per-node state ---------------------------------------------------------------------


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


@dataclass
class Inflight:
    """The latest response of one type on a stream, until it is ACKed or NACKed."""

    nonce: str
    version: str
    resources: dict[str, Resource]
    removed: tuple[str, ...]
    origin: str
    config_version: str
    restore: bool


@dataclass
class StreamTypeState:
    """Stream-scoped part of a type's state: reset when a new stream takes the type."""

    owner: int
    sub: Subscription = field(default_factory=Subscription)
    nonce: str = ""
    awaiting: bool = False
    inflight: Inflight | None = None
    sent_any: bool = False
    #: After a NACK: the names to put back to their ACKed content (delta) / all (SotW).
    restore: set[str] | None = None
    #: Delta: what the node has, or will have once it applies what was sent.
    client: dict[str, str] = field(default_factory=dict)
    #: Delta: subscribed names already reported as non-existent (removed_resources).
    reported_missing: set[str] = field(default_factory=set)
    #: Delta: ``name -> version`` of the last target mapping compared with ``client``,
    #: with that (immutable) mapping: computed once per snapshot, not once per response.
    target_versions: tuple[Mapping[str, Resource], dict[str, str]] | None = None

    def versions_of(self, resources: Mapping[str, Resource]) -> dict[str, str]:
        """``name -> version`` of ``resources``, an immutable mapping (a snapshot's own)."""
        memo = self.target_versions
        if memo is None or memo[0] is not resources:
            memo = self.target_versions = (resources, {n: r.version for n, r in resources.items()})
        return memo[1]


@dataclass
class TypeState:
    """Node-scoped state of one type URL: survives reconnects of the node."""

    type_url: str
    acked: dict[str, Resource] = field(default_factory=dict)
    acked_versions: dict[str, str] = field(default_factory=dict)
    acked_version: str = ""
    acked_origin: str = ""
    acked_config_version: str = ""
    #: False when the node reported a version whose content this process cannot know.
    acked_known: bool = True
    pending: dict[str, Resource] = field(default_factory=dict)
    last_sent: Inflight | None = None
    sent_at: float | None = None
    nack: NackInfo | None = None
    poisoned_versions: list[str] = field(default_factory=list)
    poisoned_resources: set[tuple[str, str]] = field(default_factory=set)
    poisoned_removals: set[str] = field(default_factory=set)
    poison_snapshot: str = ""
    #: EDS names to resend although unchanged: their cluster was just updated (see
    #: StreamCore._rewarm).
    rewarm: set[str] = field(default_factory=set)
    target_version: str = ""
    snapshot_version: str = ""
    waiting: frozenset[str] = frozenset()
    stream: StreamTypeState | None = None
    #: Ids of the open streams of the node that subscribed to this type, oldest first:
    #: the last one serves it (``stream``); when it closes, the one before takes over.
    claimants: list[int] = field(default_factory=list)

    def drop_answers(self) -> None:
        """Forget the ACK/NACK verdicts of the stream that served this type (it closed)."""
        self.nack = None
        self.poisoned_versions.clear()
        self.poisoned_resources.clear()
        self.poisoned_removals.clear()

    def holding(self) -> Holding:
        """What the node holds of this type, as read-only views of this state: valid until
        the state changes (:func:`~junction.xds.view.compute_view` uses it at once). Views,
        not copies, because a view is computed per type on every pump (1000 clusters: two
        1000-entry copies per type, eight views per one-instance change)."""
        acked: Mapping[str, Resource | None]
        if self.acked.keys() == self.acked_versions.keys():
            acked = MappingProxyType(self.acked)  # the usual case: every content known
        else:
            acked = {n: self.acked.get(n) for n in self.acked_versions}
        return Holding(acked=acked, pending=MappingProxyType(self.pending))

    def held_token(self) -> tuple[object, ...]:
        """Differs after anything a response can do to :meth:`holding`: replace the ACKed
        dicts (set_acked), record a send (a new ``last_sent``, more pending), or learn the
        ACKed content. For reusing a view within one pump while nothing changed."""
        return (
            id(self.acked),
            id(self.acked_versions),
            self.acked_known,
            id(self.last_sent),
            len(self.pending),
        )

    def set_acked(
        self, resources: Mapping[str, Resource | None], versions: Mapping[str, str]
    ) -> None:
        self.acked = {n: r for n, r in resources.items() if r is not None}
        self.acked_versions = dict(versions)
        self.acked_known = True

    def forget(self, names: Iterable[str]) -> None:
        """The node dropped these (unsubscribed): they no longer count as held."""
        for n in names:
            self.acked.pop(n, None)
            self.acked_versions.pop(n, None)
            self.pending.pop(n, None)

    def poison(self, version: str) -> None:
        if version not in self.poisoned_versions:
            self.poisoned_versions.append(version)
            del self.poisoned_versions[:-_POISON_MAX]

    def status(self, latest: str | None) -> TypeStatus:
        st = self.stream
        # No stream serves the type but an older open one will take it back: not in sync
        # until that stream's Envoy ACKs.
        handing_over = st is None and bool(self.claimants)
        subscribed = (st is not None and st.sub.active) or handing_over
        awaiting = st is not None and st.awaiting
        last = self.last_sent
        in_sync = not subscribed or (
            not handing_over
            and latest is not None
            and self.snapshot_version == latest
            and not awaiting
            and not self.waiting
            and self.acked_known
            and self.acked_version == self.target_version
        )
        return TypeStatus(
            type_url=self.type_url,
            subscribed=subscribed,
            sent_version="" if last is None else last.version,
            sent_nonce="" if last is None else last.nonce,
            acked_version=self.acked_version,
            target_version=self.target_version,
            awaiting_ack=awaiting,
            waiting=tuple(sorted(self.waiting)),
            nack=self.nack,
            in_sync=in_sync,
        )


@dataclass
class NodeState:
    """Everything known about one node (one Envoy), shared by all its streams."""

    node_id: str
    types: dict[str, TypeState] = field(default_factory=dict)
    streams: dict[int, StreamKind] = field(default_factory=dict)
    last_seen: float = 0.0

    def __post_init__(self) -> None:
        for t in ADS_ORDER:
            self.types.setdefault(t, TypeState(t))

    def holdings(self) -> dict[str, Holding]:
        return {t: ts.holding() for t, ts in self.types.items()}

    def status(self, latest: str | None) -> NodeStatus:
        types = tuple(self.types[t].status(latest) for t in ADS_ORDER)
        connected = bool(self.streams)
        synced = connected and any(t.subscribed for t in types) and all(t.in_sync for t in types)
        return NodeStatus(
            node_id=self.node_id,
            connected=connected,
            streams=tuple(str(k) for k in self.streams.values()),
            types=types,
            synced=synced,
            last_seen=self.last_seen,
        )


class NodeRegistry:
    """Node states by node id. Disconnected nodes are kept (the oldest pruned past a bound)
    so a reconnecting node resumes with what it is known to hold."""

    def __init__(self, clock: Callable[[], float] = time.time, keep_disconnected: int = 256):
        self.clock = clock
        self._nodes: dict[str, NodeState] = {}
        self._ids = itertools.count(1)
        self._keep = keep_disconnected

    def new_stream_id(self) -> int:
        return next(self._ids)

    def attach(self, node_id: str, stream_id: int, kind: StreamKind) -> NodeState:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = NodeState(node_id)
        node.streams[stream_id] = kind
        node.last_seen = self.clock()
        return node

    def detach(self, node: NodeState, stream_id: int) -> None:
        node.streams.pop(stream_id, None)
        node.last_seen = self.clock()
        gone = sorted((n for n in self._nodes.values() if not n.streams), key=lambda n: n.last_seen)
        for stale in gone[: max(0, len(gone) - self._keep)]:
            del self._nodes[stale.node_id]

    def get(self, node_id: str) -> NodeState | None:
        return self._nodes.get(node_id)

    def nodes(self) -> list[NodeState]:
        return [self._nodes[k] for k in sorted(self._nodes)]


def nonce_prefix() -> str:
    """A random per-stream prefix: nonces never repeat across streams or processes."""
    return secrets.token_hex(4) + "-"
