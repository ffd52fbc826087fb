"""State-of-the-world protocol core, driven by scripts of DiscoveryRequests (no I/O)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from xds_snapshots import (
    NODE,
    ROUTE_NAME,
    ack,
    nack,
    names_of,
    request,
    route_weights,
    snapshot,
)

from junction.xds.protocol import (
    Ack,
    Connected,
    Disconnected,
    MissingNode,
    Nack,
    NodeChanged,
    Output,
    StaleNonce,
    Subscribed,
    Superseded,
    UnknownTypeUrl,
    Unsubscribed,
)
from junction.xds.protocol_sotw import SotwStream
from junction.xds.protocol_state import NodeRegistry, digest_versions
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot, type_version

Response = discovery_pb2.DiscoveryResponse


def only(out: Output[Response], type_url: str | None = None) -> Response:
    assert len(out.responses) == 1, [r.type_url for r in out.responses]
    response = out.responses[0]
    if type_url is not None:
        assert response.type_url == type_url
    return response


def events_of(out: Output[Response], kind: type) -> list[object]:
    return [e for e in out.events if isinstance(e, kind)]


class Script:
    """One ADS stream and the registry behind it; remembers the latest response per type."""

    def __init__(self, registry: NodeRegistry | None = None, type_url: str | None = None):
        self.registry = registry or NodeRegistry(clock=lambda: 1000.0)
        self.stream = SotwStream(self.registry, type_url, nonce_prefix="n")
        self.last: dict[str, Response] = {}
        self.names: dict[str, tuple[str, ...]] = {}

    def send(self, req: discovery_pb2.DiscoveryRequest, snap: Snapshot | None) -> Output[Response]:
        if req.resource_names or req.type_url not in self.names:
            self.names[req.type_url] = tuple(req.resource_names)
        out = self.stream.receive(req, snap)
        self._keep(out)
        return out

    def update(self, snap: Snapshot | None) -> Output[Response]:
        out = self.stream.update(snap)
        self._keep(out)
        return out

    def ack(self, type_url: str, snap: Snapshot) -> Output[Response]:
        return self.send(ack(self.last[type_url], self.names.get(type_url, ())), snap)

    def _keep(self, out: Output[Response]) -> None:
        for r in out.responses:
            self.last[r.type_url] = r

    def connect(self, snap: Snapshot) -> None:
        """What Envoy does on ADS: CDS+LDS wildcard, EDS/RDS by name, ACK everything."""
        assert only(self.send(request(CLUSTER), snap), CLUSTER)
        assert self.send(request(LISTENER), snap).responses == ()
        self.ack(CLUSTER, snap)
        only(self.send(request(ENDPOINT, names=tuple(snap.of_type(ENDPOINT))), snap), ENDPOINT)
        only(self.ack(ENDPOINT, snap), LISTENER)
        self.ack(LISTENER, snap)
        only(self.send(request(ROUTE, names=(ROUTE_NAME,)), snap), ROUTE)
        assert self.ack(ROUTE, snap).responses == ()

    def status(self, snap: Snapshot) -> object:
        node = self.registry.get(NODE)
        assert node is not None
        return node.status(snap.version)


# ---- basics -----------------------------------------------------------------------------


def test_first_connect_sends_cds_eds_lds_rds_in_order_each_after_the_previous_ack() -> None:
    snap = snapshot({"A": 100})
    s = Script()
    out = s.send(request(CLUSTER), snap)
    assert isinstance(out.events[0], Connected)
    cds = only(out, CLUSTER)
    assert names_of(cds) == ["A"]
    # LDS is held: its route config cannot be sent before A is ACKed in CDS and EDS.
    assert s.send(request(LISTENER), snap).responses == ()
    assert s.ack(CLUSTER, snap).responses == ()
    eds = only(s.send(request(ENDPOINT, names=("A",)), snap), ENDPOINT)
    assert names_of(eds) == ["A"]
    lds = only(s.ack(ENDPOINT, snap), LISTENER)
    assert names_of(lds) == ["http"]
    s.ack(LISTENER, snap)
    rds = only(s.send(request(ROUTE, names=(ROUTE_NAME,)), snap), ROUTE)
    assert route_weights(rds) == {"A": 100}
    out = s.ack(ROUTE, snap)
    assert events_of(out, Ack) == [Ack(ROUTE, rds.version_info, rds.nonce)]
    assert s.status(snap).synced  # type: ignore[attr-defined]


def test_versions_are_content_hashes_and_every_response_has_a_fresh_nonce() -> None:
    snap = snapshot({"A": 90, "B": 10})
    s = Script()
    s.connect(snap)
    nonces = [r.nonce for r in s.last.values()]
    assert len(set(nonces)) == len(nonces) == 4
    assert s.last[CLUSTER].version_info == type_version(snap.of_type(CLUSTER).values())
    assert s.last[CLUSTER].version_info == snap.versions[CLUSTER]
    versions = {n: r.version for n, r in snap.of_type(ENDPOINT).items()}
    assert digest_versions(versions) == type_version(snap.of_type(ENDPOINT).values())


def test_nothing_is_resent_when_nothing_changed() -> None:
    snap = snapshot({"A": 100})
    s = Script()
    s.connect(snap)
    assert s.update(snap).responses == ()
    # Same resources, new origin label: still nothing.
    assert s.update(snapshot({"A": 100}, config_version="v2")).responses == ()
    # A repeated request with the latest nonce (e.g. a hint) is answered only on change.
    assert s.ack(CLUSTER, snap).responses == ()


def test_status_tracks_sent_and_acked_versions_per_type() -> None:
    snap = snapshot({"A": 100})
    s = Script()
    cds = only(s.send(request(CLUSTER), snap))
    st = s.status(snap)
    cluster = st.types[0]  # type: ignore[attr-defined]
    assert (cluster.sent_version, cluster.acked_version, cluster.awaiting_ack) == (
        cds.version_info,
        "",
        True,
    )
    assert not st.synced  # type: ignore[attr-defined]
    s.ack(CLUSTER, snap)
    cluster = s.status(snap).types[0]  # type: ignore[attr-defined]
    assert cluster.acked_version == cds.version_info and not cluster.awaiting_ack


# ---- NACK -------------------------------------------------------------------------------


def test_nack_is_recorded_the_acked_version_resent_and_the_bad_one_never_again() -> None:
    good = snapshot({"A": 100})
    s = Script()
    s.connect(good)
    acked = s.last[CLUSTER].version_info
    bad = snapshot({"A": 100}, extra_clusters=("C",), config_version="v2")
    bad_cds = only(s.update(bad), CLUSTER)
    out = s.send(nack(bad_cds, acked, "cluster C: bad lb policy"), bad)
    [event] = events_of(out, Nack)
    assert event == Nack(
        CLUSTER,
        bad_cds.version_info,
        bad_cds.nonce,
        "cluster C: bad lb policy",
        "test",
        "v2",
        acked,
    )
    # The node is put back on its last ACKed clusters, under a new nonce.
    restore = only(out, CLUSTER)
    assert restore.version_info == acked and restore.nonce != bad_cds.nonce
    assert [r.value for r in restore.resources] == [good.of_type(CLUSTER)["A"].payload]
    assert s.ack(CLUSTER, bad).responses == ()
    # The NACKed version is not sent again, however often we are woken.
    assert s.update(bad).responses == ()
    assert s.update(bad).responses == ()
    status = s.status(bad)
    cluster = status.types[0]  # type: ignore[attr-defined]
    assert cluster.nack.error_detail == "cluster C: bad lb policy"
    assert (cluster.nack.origin, cluster.nack.config_version) == ("test", "v2")
    assert cluster.acked_version == acked and not status.synced  # type: ignore[attr-defined]
    assert "NACKed" in status.problems()[0]  # type: ignore[attr-defined]
    # A different target is sent.
    fixed = snapshot({"A": 100}, lb={"A": 1}, config_version="v3")
    assert s.update(fixed).responses[0].version_info == fixed.versions[CLUSTER]


def test_nack_of_the_first_response_sends_nothing_until_a_new_target() -> None:
    bad = snapshot({"A": 100}, lb={"A": 2})
    s = Script()
    cds = only(s.send(request(CLUSTER), bad))
    out = s.send(nack(cds, "", "no"), bad)
    assert len(events_of(out, Nack)) == 1
    assert out.responses == ()  # nothing ACKed to go back to
    assert s.update(bad).responses == ()
    assert only(s.update(snapshot({"A": 100})), CLUSTER)


def test_a_nacked_route_update_keeps_the_old_routes_and_their_clusters() -> None:
    s = Script()
    s.connect(snapshot({"A": 90, "B": 10}))
    old_rds = s.last[ROUTE]
    target = snapshot({"B": 100}, config_version="v2")
    rds = only(s.update(target), ROUTE)
    out = s.send(nack(rds, old_rds.version_info, "bad route", (ROUTE_NAME,)), target)
    restore = only(out, ROUTE)
    assert route_weights(restore) == {"A": 90, "B": 10}
    # The node kept routes that use A: A must not leave CDS.
    assert s.ack(ROUTE, target).responses == ()
    assert s.update(target).responses == ()
    assert "A" in names_of(s.last[CLUSTER])


# ---- nonces and subscriptions -----------------------------------------------------------


def test_a_stale_nonce_is_ignored_and_its_names_not_applied() -> None:
    snap = snapshot({"A": 90, "B": 10})
    s = Script()
    s.connect(snap)
    old_eds = s.last[ENDPOINT]
    newer = snapshot({"A": 90, "B": 10}, ports={"A": (1, 2)})
    new_eds = only(s.update(newer), ENDPOINT)
    out = s.send(request(ENDPOINT, names=("A",), nonce=old_eds.nonce, node=None), newer)
    assert out.responses == ()
    assert events_of(out, StaleNonce) == [StaleNonce(ENDPOINT, old_eds.nonce, new_eds.nonce)]
    # The ACK of the newest response (with both names) is what counts.
    assert events_of(s.ack(ENDPOINT, newer), Ack)


def test_eds_names_follow_the_subscription_and_only_existing_names_are_sent() -> None:
    snap = snapshot({"A": 50, "B": 50}, extra_clusters=("C",))
    s = Script()
    eds = only(s.send(request(ENDPOINT, names=("A", "ghost")), snap))
    assert names_of(eds) == ["A"]
    out = s.send(ack(eds, ("A", "B", "ghost")), snap)
    assert [e for e in out.events if isinstance(e, Subscribed)] == [
        Subscribed(ENDPOINT, ("B",), False)
    ]
    assert names_of(only(out)) == ["A", "B"]
    out = s.send(ack(s.last[ENDPOINT], ("B",)), snap)
    assert events_of(out, Unsubscribed) == [Unsubscribed(ENDPOINT, ("A", "ghost"), False)]
    assert names_of(only(out)) == ["B"]
    # Unsubscribing a name that does not exist changes nothing to send.
    assert s.send(ack(s.last[ENDPOINT], ("B", "other")), snap).responses == ()


def test_wildcard_for_cds_empty_or_star_but_explicit_names_select() -> None:
    snap = snapshot({"A": 50, "B": 50})
    star = Script()
    assert names_of(only(star.send(request(CLUSTER, names=("*",)), snap))) == ["A", "B"]
    named = Script()
    assert names_of(only(named.send(request(CLUSTER, names=("B",)), snap))) == ["B"]
    # After explicit names, an empty list is "nothing", not wildcard again.
    out = named.send(ack(named.last[CLUSTER], ()), snap)
    assert names_of(only(out)) == []


def test_resubscribe_with_an_empty_nonce_restarts_from_the_reported_version() -> None:
    snap = snapshot({"A": 100})
    s = Script()
    s.connect(snap)
    acked = s.last[CLUSTER].version_info
    assert s.send(request(CLUSTER, version=acked, node=None), snap).responses == ()
    # A client that lost everything (version "") gets everything again.
    assert names_of(only(s.send(request(CLUSTER, node=None), snap))) == ["A"]


def test_coalescing_jumps_to_the_newest_snapshot() -> None:
    first = snapshot({"A": 100})
    s = Script()
    cds = only(s.send(request(CLUSTER), first))
    second = snapshot({"A": 50, "B": 50})
    third = snapshot({"A": 50, "C": 50})
    assert s.update(second).responses == ()  # waiting for the ACK of the first response
    assert s.update(third).responses == ()
    out = s.send(ack(cds), third)
    assert names_of(only(out, CLUSTER)) == ["A", "C"]


def test_an_updated_cluster_gets_its_endpoints_resent_right_after_it() -> None:
    # Envoy warms an updated EDS cluster until endpoints arrive and ACKs CDS only then.
    snap = snapshot({"A": 100})
    s = Script()
    s.connect(snap)
    eds_before = s.last[ENDPOINT]
    changed = snapshot({"A": 100}, lb={"A": 1})
    out = s.update(changed)
    assert [r.type_url for r in out.responses] == [CLUSTER, ENDPOINT]
    eds = out.responses[1]
    assert eds.version_info == eds_before.version_info and eds.nonce != eds_before.nonce
    assert s.ack(ENDPOINT, changed).responses == ()
    assert s.ack(CLUSTER, changed).responses == ()
    assert s.update(changed).responses == ()


def test_restoring_an_updated_cluster_after_a_nack_rewarms_it_too() -> None:
    snap = snapshot({"A": 100})
    s = Script()
    s.connect(snap)
    acked = s.last[CLUSTER].version_info
    changed = snapshot({"A": 100}, lb={"A": 1})
    cds = s.update(changed).responses[0]
    s.ack(ENDPOINT, changed)
    out = s.send(nack(cds, acked, "no"), changed)
    assert [r.type_url for r in out.responses] == [CLUSTER, ENDPOINT]
    assert out.responses[0].version_info == acked


# ---- make-before-break through the stream -----------------------------------------------


def test_adding_a_cluster_and_shifting_weight_sends_rds_only_after_the_acks() -> None:
    s = Script()
    s.connect(snapshot({"A": 100}))
    target = snapshot({"A": 90, "B": 10})
    out = s.update(target)
    assert [r.type_url for r in out.responses] == [CLUSTER]
    assert names_of(out.responses[0]) == ["A", "B"]
    assert s.ack(CLUSTER, target).responses == ()
    eds = only(s.send(ack(s.last[ENDPOINT], ("A", "B")), target), ENDPOINT)
    assert names_of(eds) == ["A", "B"]
    rds = only(s.ack(ENDPOINT, target), ROUTE)
    assert route_weights(rds) == {"A": 90, "B": 10}
    s.ack(ROUTE, target)
    assert s.status(target).synced  # type: ignore[attr-defined]


def test_removing_a_cluster_sends_rds_first_and_cds_without_it_after_the_rds_ack() -> None:
    s = Script()
    s.connect(snapshot({"A": 90, "B": 10}))
    target = snapshot({"B": 100})
    rds = only(s.update(target), ROUTE)
    assert route_weights(rds) == {"B": 100}
    assert not s.status(target).synced  # type: ignore[attr-defined]
    cds = only(s.ack(ROUTE, target), CLUSTER)
    assert names_of(cds) == ["B"]
    # Endpoints follow: once A is gone from CDS, EDS drops it too.
    eds = only(s.ack(CLUSTER, target), ENDPOINT)
    assert names_of(eds) == ["B"]
    assert s.send(ack(eds, ("B",)), target).responses == ()
    assert s.status(target).synced  # type: ignore[attr-defined]


def test_per_type_streams_of_one_node_share_state_for_gating() -> None:
    registry = NodeRegistry(clock=lambda: 1.0)
    cds, eds, rds = (Script(registry, t) for t in (CLUSTER, ENDPOINT, ROUTE))
    snap = snapshot({"A": 100})
    only(cds.send(request(CLUSTER), snap))
    assert rds.send(request(ROUTE, names=(ROUTE_NAME,)), snap).responses == ()
    cds.ack(CLUSTER, snap)
    only(eds.send(request(ENDPOINT, names=("A",)), snap))
    assert rds.update(snap).responses == ()  # endpoints not ACKed yet
    eds.ack(ENDPOINT, snap)
    assert route_weights(only(rds.update(snap), ROUTE)) == {"A": 100}
    node = registry.get(NODE)
    assert node is not None and len(node.streams) == 3


# ---- errors, reconnects -----------------------------------------------------------------


def test_protocol_errors_name_what_is_wrong() -> None:
    snap = snapshot({"A": 100})
    with pytest.raises(MissingNode, match=r"node\.id"):
        Script().send(request(CLUSTER, node=None), snap)
    with pytest.raises(UnknownTypeUrl, match=r"type\.googleapis\.com/envoy\.Bogus"):
        Script().send(request("type.googleapis.com/envoy.Bogus"), snap)
    with pytest.raises(UnknownTypeUrl, match="required"):
        Script().send(request(""), snap)
    with pytest.raises(UnknownTypeUrl, match="Cluster discovery service"):
        Script(type_url=CLUSTER).send(request(ROUTE), snap)
    s = Script()
    s.send(request(CLUSTER), snap)
    with pytest.raises(NodeChanged, match="other"):
        s.send(request(LISTENER, node="other"), snap)


def test_per_type_stream_accepts_an_empty_type_url() -> None:
    snap = snapshot({"A": 100})
    out = Script(type_url=CLUSTER).send(request(""), snap)
    assert names_of(only(out, CLUSTER)) == ["A"]


def test_reconnect_with_the_acked_versions_resends_nothing() -> None:
    snap = snapshot({"A": 90, "B": 10})
    first = Script()
    first.connect(snap)
    closed = first.stream.close()
    assert isinstance(closed.events[0], Disconnected)
    assert not first.status(snap).connected  # type: ignore[attr-defined]
    again = Script(first.registry)
    for t, names in ((CLUSTER, ()), (LISTENER, ()), (ENDPOINT, ("A", "B")), (ROUTE, (ROUTE_NAME,))):
        out = again.send(request(t, names=names, version=first.last[t].version_info), snap)
        assert out.responses == (), t
    assert again.status(snap).synced  # type: ignore[attr-defined]


def test_a_restarted_control_plane_recognizes_versions_it_did_not_send() -> None:
    snap = snapshot({"A": 100})
    old = Script()
    old.connect(snap)
    fresh = Script()  # new registry: nothing known about the node
    out = fresh.send(request(CLUSTER, version=old.last[CLUSTER].version_info), snap)
    assert out.responses == ()
    assert fresh.status(snap).types[0].in_sync  # type: ignore[attr-defined]


def test_an_older_stream_of_the_node_is_superseded() -> None:
    snap = snapshot({"A": 100})
    registry = NodeRegistry(clock=lambda: 1.0)
    old = Script(registry)
    cds = only(old.send(request(CLUSTER), snap))
    new = Script(registry)
    only(new.send(request(CLUSTER), snap))
    out = old.send(ack(cds), snap)
    assert events_of(out, Superseded) == [Superseded(CLUSTER)] and out.responses == ()
    assert old.update(snapshot({"B": 100})).responses == ()


def test_the_core_imports_neither_grpc_nor_asyncio() -> None:
    code = (
        "import sys, junction.xds.protocol_sotw, junction.xds.protocol_delta, junction.xds.view;"
        "print(sorted(m for m in ('grpc', 'asyncio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
