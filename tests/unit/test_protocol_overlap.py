"""Several streams with one node id (a hot restart, a copied bootstrap, an overlapping
reconnect), scripted on the protocol cores (no I/O).

The contract: the newest open stream's ACK state is what counts for the node, and a closed
stream's state is dropped, so an older stream that is still open takes its types back and
is judged on its own answers.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from xds_snapshots import (
    NODE,
    ROUTE_NAME,
    ack,
    delta_ack,
    delta_request,
    nack,
    names_of,
    request,
    snapshot,
)

from junction.xds.cache import SnapshotCache
from junction.xds.protocol import Output
from junction.xds.protocol_delta import DeltaStream
from junction.xds.protocol_sotw import SotwStream
from junction.xds.protocol_state import NodeRegistry, NodeStatus
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

Sotw = discovery_pb2.DiscoveryResponse
Delta = discovery_pb2.DeltaDiscoveryResponse


def only(out: Output[Sotw], type_url: str) -> Sotw:
    assert [r.type_url for r in out.responses] == [type_url]
    return out.responses[0]


class Envoy:
    """One SotW ADS stream as Envoy drives it; remembers the latest response per type."""

    def __init__(self, registry: NodeRegistry, node: str = NODE) -> None:
        self.stream = SotwStream(registry, None, nonce_prefix=f"s{id(self)}-")
        self.node = node
        self.last: dict[str, Sotw] = {}

    def send(self, req: discovery_pb2.DiscoveryRequest, snap: Snapshot) -> Output[Sotw]:
        out = self.stream.receive(req, snap)
        self.last.update({r.type_url: r for r in out.responses})
        return out

    def update(self, snap: Snapshot) -> Output[Sotw]:
        out = self.stream.update(snap)
        self.last.update({r.type_url: r for r in out.responses})
        return out

    def ack(self, type_url: str, snap: Snapshot, names: tuple[str, ...] = ()) -> Output[Sotw]:
        return self.send(ack(self.last[type_url], names), snap)

    def ack_all(self, snap: Snapshot, rounds: int = 8) -> None:
        """ACK whatever is in flight until nothing more comes (bounded)."""
        names = {ENDPOINT: tuple(snap.of_type(ENDPOINT)), ROUTE: (ROUTE_NAME,)}
        for _ in range(rounds):
            pending = dict(self.last)
            self.last = {}
            if not pending:
                return
            for t, r in pending.items():
                out = self.stream.receive(ack(r, names.get(t, ())), snap)
                self.last.update({x.type_url: x for x in out.responses})
        raise AssertionError("still sending after 8 rounds of ACKs")

    def connect(self, snap: Snapshot) -> None:
        node = self.node
        only(self.send(request(CLUSTER, node=node), snap), CLUSTER)
        self.send(request(LISTENER, node=node), snap)
        self.ack(CLUSTER, snap)
        self.send(request(ENDPOINT, names=tuple(snap.of_type(ENDPOINT)), node=node), snap)
        self.ack_all(snap)
        self.send(request(ROUTE, names=(ROUTE_NAME,), node=node), snap)
        self.ack_all(snap)


def status(registry: NodeRegistry, snap: Snapshot, node: str = NODE) -> NodeStatus:
    state = registry.get(node)
    assert state is not None
    return state.status(snap.version)


def test_a_duplicate_that_nacks_and_closes_leaves_the_first_stream_serving_and_healthy() -> None:
    snap = snapshot({"A": 100})
    registry = NodeRegistry(clock=lambda: 1.0)
    first = Envoy(registry)
    first.connect(snap)
    assert status(registry, snap).synced
    dup = Envoy(registry)
    cds = only(dup.send(request(CLUSTER), snap), CLUSTER)
    # While the duplicate is open, its answers are the node's: it NACKed.
    dup.send(nack(cds, "", "duplicate rejects"), snap)
    st = status(registry, snap)
    assert not st.synced and any("NACKed" in p for p in st.problems())
    dup.stream.close()
    # The older stream takes CDS back: it is sent the target again and judged on its ACK.
    assert not status(registry, snap).synced
    resent = only(first.update(snap), CLUSTER)
    assert resent.version_info == snap.versions[CLUSTER]
    first.ack_all(snap)
    st = status(registry, snap)
    assert st.synced, st.problems()
    assert all(t.nack is None for t in st.types)
    # The version the duplicate refused is not held back from the first stream's Envoy.
    newer = snapshot({"A": 100, "B": 0})
    assert CLUSTER in {r.type_url for r in first.update(newer).responses}


def test_the_newest_stream_counts_while_open_and_an_older_ones_close_changes_nothing() -> None:
    snap = snapshot({"A": 100})
    registry = NodeRegistry(clock=lambda: 1.0)
    old = Envoy(registry)
    old.connect(snap)
    new = Envoy(registry)
    new.connect(snap)
    assert status(registry, snap).synced
    old.stream.close()
    st = status(registry, snap)
    assert st.synced and st.streams == ("sotw/ads",)
    assert new.update(snap).responses == ()


def test_with_three_streams_the_newest_still_open_takes_the_type_back() -> None:
    snap = snapshot({"A": 100})
    registry = NodeRegistry(clock=lambda: 1.0)
    a, b, c = Envoy(registry), Envoy(registry), Envoy(registry)
    for envoy in (a, b, c):
        envoy.connect(snap)
    c.stream.close()
    # a is woken first (as the server would, in watch order) but b is the newer one.
    assert a.update(snap).responses == ()
    taken = {r.type_url: r.version_info for r in b.update(snap).responses}
    assert taken[CLUSTER] == snap.versions[CLUSTER]
    b.ack_all(snap)
    assert status(registry, snap).synced
    b.stream.close()
    assert CLUSTER in {r.type_url for r in a.update(snap).responses}
    a.ack_all(snap)
    assert status(registry, snap).synced


def test_a_closed_streams_nack_is_dropped_even_with_no_stream_left() -> None:
    snap = snapshot({"A": 100})
    registry = NodeRegistry(clock=lambda: 1.0)
    only_one = Envoy(registry)
    cds = only(only_one.send(request(CLUSTER), snap), CLUSTER)
    only_one.send(nack(cds, "", "no"), snap)
    only_one.stream.close()
    st = status(registry, snap)
    assert not st.connected and all(t.nack is None for t in st.types)
    # Its reconnect is sent the version again (the refusal was that stream's).
    again = Envoy(registry)
    assert only(again.send(request(CLUSTER), snap), CLUSTER).version_info == cds.version_info


def test_a_rogue_node_never_turns_the_managed_nodes_health() -> None:
    snap = snapshot({"A": 100})
    cache = SnapshotCache(snap)
    managed = Envoy(cache.registry)
    managed.connect(snap)
    rogue = Envoy(cache.registry, node="rogue")
    cds = only(rogue.send(request(CLUSTER, node="rogue"), snap), CLUSTER)
    rogue.send(nack(cds, "", "rogue rejects"), snap)
    assert cache.health_problems(snap.version, (NODE,)) == []
    # Without named nodes, every connected node counts (the old behaviour).
    assert any("rogue" in p for p in cache.health_problems(snap.version))
    assert cache.health_problems(snap.version, ("missing",)) == [
        "node missing: never connected to xDS"
    ]
    managed.stream.close()
    assert cache.health_problems(snap.version, (NODE,)) == [f"node {NODE}: not connected"]


# ---- delta ------------------------------------------------------------------------------


class DeltaEnvoy:
    def __init__(self, registry: NodeRegistry) -> None:
        self.stream = DeltaStream(registry, None, nonce_prefix=f"d{id(self)}-")
        self.last: dict[str, Delta] = {}

    def send(self, req: discovery_pb2.DeltaDiscoveryRequest, snap: Snapshot) -> Output[Delta]:
        out = self.stream.receive(req, snap)
        self.last.update({r.type_url: r for r in out.responses})
        return out

    def ack_all(self, snap: Snapshot, error: str | None = None) -> list[Delta]:
        seen: list[Delta] = []
        for _ in range(8):
            pending, self.last = dict(self.last), {}
            if not pending:
                return seen
            seen.extend(pending.values())
            for r in pending.values():
                out = self.stream.receive(delta_ack(r, error), snap)
                self.last.update({x.type_url: x for x in out.responses})
        raise AssertionError("still sending after 8 rounds of ACKs")

    def connect(self, snap: Snapshot) -> None:
        self.send(delta_request(CLUSTER), snap)
        self.send(delta_request(LISTENER), snap)
        self.send(delta_request(ENDPOINT, subscribe=tuple(snap.of_type(ENDPOINT))), snap)
        self.send(delta_request(ROUTE, subscribe=(ROUTE_NAME,)), snap)
        self.ack_all(snap)


def test_delta_the_older_stream_takes_back_and_learns_what_left_meanwhile() -> None:
    snap = snapshot({"A": 50, "B": 50})
    registry = NodeRegistry(clock=lambda: 1.0)
    first = DeltaEnvoy(registry)
    first.connect(snap)
    assert status(registry, snap).synced
    dup = DeltaEnvoy(registry)
    dup.send(delta_request(CLUSTER), snap)
    dup.ack_all(snap, error="duplicate rejects")
    assert not status(registry, snap).synced
    dup.stream.close()
    # Meanwhile B left the config: the first stream's Envoy still holds it.
    later = snapshot({"A": 100})
    out = first.stream.update(later)
    first.last.update({r.type_url: r for r in out.responses})
    sent = first.ack_all(later)
    cds = [r for r in sent if r.type_url == CLUSTER]
    assert cds and [r.name for r in cds[0].resources] == ["A"]
    assert "B" in {n for r in cds for n in r.removed_resources}
    assert status(registry, later).synced, status(registry, later).problems()
    assert names_of is not None  # (shared helpers stay importable for both variants)
