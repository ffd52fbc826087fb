"""The seam between the publisher and the xDS streams: the newest snapshot, and node state.

The publisher calls :meth:`SnapshotCache.set`; every stream serves from
:attr:`SnapshotCache.snapshot`, the newest one, and is woken through a :class:`Watch`
when it changes (or when another stream of the same node changed that node's state, which
per-type streams need for make-before-break gating). Wake-ups are edge signals, not a
queue: a stream that wakes once after several snapshots serves only the newest.

The cache also holds the per-node xDS state (:class:`~junction.xds.protocol.NodeRegistry`)
and exposes it as plain data for the status API (:meth:`nodes`) and the health check
(:meth:`is_synced`, :meth:`health_problems`).

Everything here runs on one asyncio event loop: call :meth:`set` from the loop's thread
(``loop.call_soon_threadsafe(cache.set, snapshot)`` from another thread). No grpc.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from junction.xds.protocol_state import NodeRegistry, NodeStatus
from junction.xds.resources import Snapshot

__all__ = ["SnapshotCache", "Watch"]


@dataclass(eq=False)
class Watch:
    """A registration for wake-ups; :meth:`close` it when the stream ends."""

    node_id: str | None
    callback: Callable[[], None]
    _cache: SnapshotCache | None = field(default=None, repr=False)
    _id: int = 0

    def close(self) -> None:
        if self._cache is not None:
            self._cache._watches.pop(self._id, None)
            self._cache = None


class SnapshotCache:
    """Holds the newest :class:`Snapshot` and the xDS state of every node seen."""

    def __init__(
        self, snapshot: Snapshot | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._snapshot = snapshot
        self.registry = NodeRegistry(clock)
        self._watches: dict[int, Watch] = {}
        self._ids = itertools.count(1)

    # ---- snapshots ----------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The newest snapshot (None until the first :meth:`set`)."""
        return self._snapshot

    def set(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the one every stream serves; wake them if its version is new."""
        previous = self._snapshot
        self._snapshot = snapshot
        if previous is not None and previous.version == snapshot.version:
            return  # same resources (maybe a new origin label): nothing for Envoy to do
        for watch in list(self._watches.values()):
            watch.callback()

    # ---- wake-ups -----------------------------------------------------------------------

    def watch(self, node_id: str | None, callback: Callable[[], None]) -> Watch:
        """Call ``callback()`` on every new snapshot, and on :meth:`notify_node` for
        ``node_id`` from another watch. The callback runs synchronously: it should only
        flag work (e.g. ``queue.put_nowait``)."""
        watch = Watch(node_id, callback, self, next(self._ids))
        self._watches[watch._id] = watch
        return watch

    def notify_node(self, node_id: str, source: Watch | None = None) -> None:
        """Node ``node_id``'s state changed through ``source``: wake its other watches."""
        for watch in list(self._watches.values()):
            if watch.node_id == node_id and watch is not source:
                watch.callback()

    # ---- status -------------------------------------------------------------------------

    def nodes(self) -> list[NodeStatus]:
        """Every node seen (connected or recently disconnected), sorted by node id."""
        latest = None if self._snapshot is None else self._snapshot.version
        return [n.status(latest) for n in self.registry.nodes()]

    def node(self, node_id: str) -> NodeStatus | None:
        state = self.registry.get(node_id)
        if state is None:
            return None
        return state.status(None if self._snapshot is None else self._snapshot.version)

    def node_status(self) -> list[dict[str, Any]]:
        """:meth:`nodes` as JSON-ready dicts (types keyed by short name, e.g. ``Cluster``)."""
        return [n.to_dict() for n in self.nodes()]

    def is_synced(self, node_id: str | None = None) -> bool:
        """Has the node ACKed the newest snapshot for every type it subscribes to?

        With no ``node_id``: is at least one node connected, and is every connected node
        synced? (What the health endpoint asks.)
        """
        if node_id is not None:
            status = self.node(node_id)
            return status is not None and status.synced
        connected = [n for n in self.nodes() if n.connected]
        return bool(connected) and all(n.synced for n in connected)

    def health_problems(
        self, snapshot_version: str | None = None, nodes: Collection[str] = ()
    ) -> list[str]:
        """Why Envoy is not serving the newest config, one line each (empty when it is).

        ``snapshot_version`` is the version the caller considers newest (default: the
        cache's own); a node that has not caught up with it is reported.

        ``nodes``: the node ids this control plane answers for (its managed Envoys). Only
        they are judged, each must be connected and synced, and no other client can turn
        the verdict. Empty: every connected node is judged, and at least one must be.
        """
        current = self._snapshot
        if current is None:
            return ["no snapshot to serve yet"]
        if snapshot_version is not None and snapshot_version != current.version:
            return [f"snapshot {snapshot_version} not handed to the xDS streams yet"]
        if nodes:
            statuses = [(node_id, self.node(node_id)) for node_id in sorted(set(nodes))]
            return [
                p
                for node_id, status in statuses
                for p in (
                    [f"node {node_id}: never connected to xDS"]
                    if status is None
                    else status.problems()
                )
            ]
        connected = [n for n in self.nodes() if n.connected]
        if not connected:
            return ["no Envoy connected to xDS"]
        return [p for n in connected for p in n.problems()]
