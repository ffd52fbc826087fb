"""Per-node xDS state and the status it exposes: plain data, no I/O.

A :class:`NodeState` records, per type URL, a :class:`~junction.xds.type_state.TypeState`
(what the node ACKed, what was sent since, the last NACK and the versions never to
resend), which changes only through its own transitions. It is keyed by node
id in a :class:`NodeRegistry`, so every stream of one node (ADS, or the separate per-type
CDS/EDS/LDS/RDS streams) reads and updates the same state. :meth:`NodeState.status`
turns it into frozen :class:`NodeStatus` values for ``/status`` and ``/healthz``.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from junction.xds.events import StreamKind
from junction.xds.records import WILDCARD, WILDCARD_TYPES, Inflight, NackInfo, Subscription
from junction.xds.resources import ADS_ORDER, Resource, digest_versions, short_type
from junction.xds.type_state import StreamTypeState, TypeState
from junction.xds.view import Holding, ViewMemo

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
    "type_status",
    "version_of",
]

# ---- status (plain data for /status and /healthz) ---------------------------------------


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


def type_status(ts: TypeState, latest: str | None) -> TypeStatus:
    """``ts`` as plain data; ``latest`` is the newest snapshot's version (None: none yet)."""
    st = ts.stream
    # No stream serves the type but an older open one will take it back: not in sync
    # until that stream's Envoy ACKs.
    handing_over = st is None and bool(ts.claimants)
    subscribed = (st is not None and st.sub.active) or handing_over
    awaiting = st is not None and st.awaiting
    last = ts.last_sent
    in_sync = not subscribed or (
        not handing_over
        and latest is not None
        and ts.snapshot_version == latest
        and not awaiting
        and not ts.waiting
        and ts.acked_known
        and ts.acked_version == ts.target_version
    )
    return TypeStatus(
        type_url=ts.type_url,
        subscribed=subscribed,
        sent_version="" if last is None else last.version,
        sent_nonce="" if last is None else last.nonce,
        acked_version=ts.acked_version,
        target_version=ts.target_version,
        awaiting_ack=awaiting,
        waiting=tuple(sorted(ts.waiting)),
        nack=ts.nack,
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
        types = tuple(type_status(self.types[t], latest) for t in ADS_ORDER)
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
        #: Shared by every stream's views: what resources reference (see ViewMemo).
        self.view_memo = ViewMemo()

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

    def seen(self, node: NodeState) -> None:
        """``node`` sent a request just now."""
        node.last_seen = self.clock()

    def get(self, node_id: str) -> NodeState | None:
        return self._nodes.get(node_id)

    def nodes(self) -> list[NodeState]:
        return [self._nodes[k] for k in sorted(self._nodes)]


def nonce_prefix() -> str:
    """A random per-stream prefix: nonces never repeat across streams or processes."""
    return secrets.token_hex(4) + "-"
