"""Incremental (delta) protocol core, driven by scripts of DeltaDiscoveryRequests (no I/O)."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from xds_snapshots import (
    NODE,
    ROUTE_NAME,
    delta_ack,
    delta_request,
    route_weights,
    snapshot,
)

from junction.xds.protocol import Ack, Nack, Output, StaleNonce, Subscribed, Unsubscribed
from junction.xds.protocol_delta import DeltaStream
from junction.xds.protocol_state import NodeRegistry, digest_versions
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

Response = discovery_pb2.DeltaDiscoveryResponse


def only(out: Output[Response], type_url: str | None = None) -> Response:
    assert len(out.responses) == 1, [r.type_url for r in out.responses]
    response = out.responses[0]
    if type_url is not None:
        assert response.type_url == type_url
    return response


def updated(response: Response) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


class Script:
    def __init__(self, registry: NodeRegistry | None = None, type_url: str | None = None):
        self.registry = registry or NodeRegistry(clock=lambda: 1000.0)
        self.stream = DeltaStream(self.registry, type_url, nonce_prefix="d")
        self.last: dict[str, Response] = {}

    def send(
        self, req: discovery_pb2.DeltaDiscoveryRequest, snap: Snapshot | None
    ) -> Output[Response]:
        out = self.stream.receive(req, snap)
        self._keep(out)
        return out

    def update(self, snap: Snapshot | None) -> Output[Response]:
        out = self.stream.update(snap)
        self._keep(out)
        return out

    def ack(self, type_url: str, snap: Snapshot, error: str | None = None) -> Output[Response]:
        return self.send(delta_ack(self.last[type_url], error), snap)

    def _keep(self, out: Output[Response]) -> None:
        for r in out.responses:
            self.last[r.type_url] = r

    def connect(self, snap: Snapshot) -> None:
        only(self.send(delta_request(CLUSTER), snap), CLUSTER)
        assert self.send(delta_request(LISTENER), snap).responses == ()
        self.ack(CLUSTER, snap)
        only(self.send(delta_request(ENDPOINT, subscribe=tuple(snap.of_type(ENDPOINT))), snap))
        only(self.ack(ENDPOINT, snap), LISTENER)
        self.ack(LISTENER, snap)
        only(self.send(delta_request(ROUTE, subscribe=(ROUTE_NAME,)), snap), ROUTE)
        assert self.ack(ROUTE, snap).responses == ()

    def synced(self, snap: Snapshot) -> bool:
        node = self.registry.get(NODE)
        assert node is not None
        return node.status(snap.version).synced

    def holds(self, type_url: str) -> dict[str, str]:
        node = self.registry.get(NODE)
        assert node is not None
        return dict(node.types[type_url].acked_versions)


def test_wildcard_cds_sends_every_cluster_with_its_own_version() -> None:
    snap = snapshot({"A": 50, "B": 50})
    s = Script()
    out = s.send(delta_request(CLUSTER), snap)
    assert Subscribed(CLUSTER, (), True) in out.events
    cds = only(out)
    assert updated(cds) == {n: r.version for n, r in snap.of_type(CLUSTER).items()}
    assert list(cds.removed_resources) == []
    assert cds.system_version_info == snap.versions[CLUSTER]
    assert s.ack(CLUSTER, snap).events == (Ack(CLUSTER, cds.system_version_info, cds.nonce),)


def test_only_changed_resources_and_removals_are_sent() -> None:
    s = Script()
    s.connect(snapshot({"A": 50, "B": 50}, extra_clusters=("C",)))
    target = snapshot({"A": 50, "B": 50}, lb={"B": 1})  # B changed, C gone
    out = s.update(target)
    cds, eds = out.responses
    assert updated(cds) == {"B": target.of_type(CLUSTER)["B"].version}
    assert list(cds.removed_resources) == ["C"]
    assert cds.system_version_info == target.versions[CLUSTER]
    # B's unchanged endpoints follow at once: Envoy warms the updated cluster until then.
    assert eds.type_url == ENDPOINT and set(updated(eds)) == {"B"}
    s.ack(ENDPOINT, target)
    s.ack(CLUSTER, target)
    assert s.holds(CLUSTER) == {n: r.version for n, r in target.of_type(CLUSTER).items()}


def test_initial_resource_versions_are_not_resent() -> None:
    snap = snapshot({"A": 50, "B": 50})
    have = {n: r.version for n, r in snap.of_type(CLUSTER).items()}
    s = Script()
    cds = only(s.send(delta_request(CLUSTER, initial=have), snap))
    assert updated(cds) == {} and list(cds.removed_resources) == []  # an empty first answer
    # One outdated, one unknown to the server: resend the first, remove the second.
    other = Script()
    stale = {"A": "old", "B": have["B"], "Z": "zzz"}
    cds = only(other.send(delta_request(CLUSTER, initial=stale), snap))
    assert updated(cds) == {"A": have["A"]}
    assert list(cds.removed_resources) == ["Z"]


def test_subscribe_unsubscribe_and_resubscribe_by_name() -> None:
    snap = snapshot({"A": 50, "B": 50})
    s = Script()
    eds = only(s.send(delta_request(ENDPOINT, subscribe=("A",)), snap))
    assert set(updated(eds)) == {"A"}
    s.ack(ENDPOINT, snap)
    eds = only(s.send(delta_request(ENDPOINT, subscribe=("B",), node=None), snap))
    assert set(updated(eds)) == {"B"}  # A is not resent
    s.ack(ENDPOINT, snap)
    out = s.send(delta_request(ENDPOINT, unsubscribe=("A",), node=None), snap)
    assert out.responses == ()  # no answer needed to a plain unsubscribe
    assert Unsubscribed(ENDPOINT, ("A",), False) in out.events
    assert set(s.holds(ENDPOINT)) == {"B"}
    # Re-subscribing resends A although unchanged: the client may have forgotten it.
    eds = only(s.send(delta_request(ENDPOINT, subscribe=("A",), node=None), snap))
    assert set(updated(eds)) == {"A"}


def test_a_subscribed_name_that_does_not_exist_is_reported_removed_once() -> None:
    snap = snapshot({"A": 100})
    s = Script()
    eds = only(s.send(delta_request(ENDPOINT, subscribe=("A", "ghost")), snap))
    assert set(updated(eds)) == {"A"} and list(eds.removed_resources) == ["ghost"]
    s.ack(ENDPOINT, snap)
    assert s.update(snapshot({"A": 100}, ports={"A": (1,)})).responses[0].removed_resources == []


def test_unsubscribing_a_name_covered_by_the_wildcard_answers_it() -> None:
    snap = snapshot({"A": 50, "B": 50})
    s = Script()
    s.send(delta_request(CLUSTER, subscribe=("*", "A")), snap)
    s.ack(CLUSTER, snap)
    cds = only(s.send(delta_request(CLUSTER, unsubscribe=("A",), node=None), snap))
    assert set(updated(cds)) == {"A"}  # still wanted through "*"
    s.ack(CLUSTER, snap)
    out = s.send(delta_request(CLUSTER, unsubscribe=("*",), subscribe=("B",), node=None), snap)
    # No longer wildcard: the client drops what it got through "*" by itself; B is
    # (re)subscribed, so it is resent.
    cds = only(out)
    assert set(updated(cds)) == {"B"} and list(cds.removed_resources) == []
    s.ack(CLUSTER, snap)
    assert set(s.holds(CLUSTER)) == {"B"}


def test_legacy_wildcard_is_for_cds_and_lds_only() -> None:
    snap = snapshot({"A": 100})
    s = Script()
    eds = only(s.send(delta_request(ENDPOINT), snap))
    assert updated(eds) == {}


def test_stale_nonce_is_not_an_ack_but_its_subscription_counts() -> None:
    snap = snapshot({"A": 50, "B": 50})
    s = Script()
    first = only(s.send(delta_request(ENDPOINT, subscribe=("A",)), snap))
    out = s.send(delta_request(ENDPOINT, subscribe=("B",), nonce="not-ours", node=None), snap)
    assert StaleNonce(ENDPOINT, "not-ours", first.nonce) in out.events
    assert not [e for e in out.events if isinstance(e, Ack)]
    assert out.responses == ()  # still waiting for the ACK of the first response
    eds = only(s.ack(ENDPOINT, snap))
    assert set(updated(eds)) == {"B"}


def test_nack_keeps_the_previous_versions_and_never_resends_the_rejected_ones() -> None:
    good = snapshot({"A": 50, "B": 50})
    s = Script()
    s.connect(good)
    bad = snapshot({"A": 50, "B": 50}, extra_clusters=("C",), lb={"B": 2}, config_version="v2")
    cds, eds = s.update(bad).responses
    assert set(updated(cds)) == {"B", "C"} and set(updated(eds)) == {"B"}
    s.ack(ENDPOINT, bad)
    out = s.ack(CLUSTER, bad, error="cluster B: bad")
    [nack] = [e for e in out.events if isinstance(e, Nack)]
    assert (nack.version, nack.error_detail, nack.origin, nack.config_version) == (
        cds.system_version_info,
        "cluster B: bad",
        "test",
        "v2",
    )
    # Back to the ACKed B, and C (never ACKed) removed in case it was half applied; B's
    # endpoints follow for the rewarm.
    restore, eds = out.responses
    assert updated(restore) == {"B": good.of_type(CLUSTER)["B"].version}
    assert list(restore.removed_resources) == ["C"]
    assert set(updated(eds)) == {"B"}
    assert s.ack(ENDPOINT, bad).responses == ()
    assert s.ack(CLUSTER, bad).responses == ()
    assert s.update(bad).responses == ()
    assert s.holds(CLUSTER) == {n: r.version for n, r in good.of_type(CLUSTER).items()}
    assert not s.synced(bad)
    # A new version of B is a different target.
    fixed = snapshot({"A": 50, "B": 50}, lb={"B": 1}, config_version="v3")
    assert set(updated(s.update(fixed).responses[0])) == {"B"}


def test_make_before_break_add_then_remove() -> None:
    s = Script()
    s.connect(snapshot({"A": 100}))
    add = snapshot({"A": 90, "B": 10})
    cds = only(s.update(add), CLUSTER)
    assert set(updated(cds)) == {"B"}
    s.ack(CLUSTER, add)
    eds = only(s.send(delta_request(ENDPOINT, subscribe=("B",), node=None), add), ENDPOINT)
    assert set(updated(eds)) == {"B"}
    rds = only(s.ack(ENDPOINT, add), ROUTE)
    assert route_weights(rds) == {"A": 90, "B": 10}
    s.ack(ROUTE, add)
    assert s.synced(add)

    remove = snapshot({"B": 100})
    rds = only(s.update(remove), ROUTE)
    assert route_weights(rds) == {"B": 100}
    cds = only(s.ack(ROUTE, remove), CLUSTER)
    assert list(cds.removed_resources) == ["A"] and updated(cds) == {}
    eds = only(s.ack(CLUSTER, remove), ENDPOINT)  # A's endpoints go after A
    assert list(eds.removed_resources) == ["A"]
    s.ack(ENDPOINT, remove)
    assert s.synced(remove)


def test_reconnect_with_initial_versions_of_a_route_the_server_knows() -> None:
    snap = snapshot({"A": 100})
    first = Script()
    first.connect(snap)
    first.stream.close()
    again = Script(first.registry)
    for t, names in ((CLUSTER, ()), (LISTENER, ()), (ENDPOINT, ("A",)), (ROUTE, (ROUTE_NAME,))):
        have = first.holds(t)
        out = again.send(delta_request(t, subscribe=names, initial=have), snap)
        response = only(out, t)  # the first answer of each type: empty
        assert updated(response) == {} and list(response.removed_resources) == [], t
        assert response.system_version_info == digest_versions(have)
        again.ack(t, snap)
    assert again.synced(snap)


def test_unsubscribing_endpoints_of_a_removed_cluster_needs_no_answer() -> None:
    # What Envoy does: on a CDS removal it drops the EDS subscription before ACKing CDS.
    s = Script()
    s.connect(snapshot({"A": 90, "B": 10}))
    remove = snapshot({"B": 100})
    only(s.update(remove), ROUTE)
    cds = only(s.ack(ROUTE, remove), CLUSTER)
    assert list(cds.removed_resources) == ["A"]
    out = s.send(delta_request(ENDPOINT, unsubscribe=("A",), node=None), remove)
    assert out.responses == ()
    assert s.ack(CLUSTER, remove).responses == ()
    assert s.synced(remove)
