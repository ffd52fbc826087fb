"""Make-before-break view: a pure function of the target snapshot and what the node holds."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from xds_snapshots import LISTENER_NAME, ROUTE_NAME, cla, cluster, listener, routes, snapshot

from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, Snapshot
from junction.xds.view import (
    Holding,
    ViewMemo,
    compute_view,
    eds_name,
    listener_routes,
    route_clusters,
)


def holding_of(snap: Snapshot, type_url: str, names: tuple[str, ...] | None = None) -> Holding:
    """The node ACKed ``names`` (default: all) of ``type_url`` as in ``snap``."""
    res = snap.of_type(type_url)
    return Holding(acked={n: r for n, r in res.items() if names is None or n in names})


def all_acked(snap: Snapshot) -> dict[str, Holding]:
    return {t: holding_of(snap, t) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}


def test_route_clusters_walks_weighted_single_and_mirror() -> None:
    rc = routes("r", {"a": 50, "b": 50})
    rc.virtual_hosts[0].routes.append(
        route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/x"),
            route=route_components_pb2.RouteAction(
                cluster="c",
                request_mirror_policies=[
                    route_components_pb2.RouteAction.RequestMirrorPolicy(cluster="shadow")
                ],
            ),
        )
    )
    rc.virtual_hosts[0].routes.append(
        route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/r"),
            redirect=route_components_pb2.RedirectAction(host_redirect="elsewhere"),
        )
    )
    assert route_clusters(rc) == {"a", "b", "c", "shadow"}
    assert route_clusters(route_pb2.RouteConfiguration(name="empty")) == frozenset()


def test_listener_routes_and_eds_name() -> None:
    assert listener_routes(listener("l", "rc-1")) == {"rc-1"}
    c = cluster("web")
    assert eds_name(c) == "web"
    c.eds_cluster_config.service_name = "web-svc"
    assert eds_name(c) == "web-svc"
    assert eds_name(cluster_pb2.Cluster(name="static", type=cluster_pb2.Cluster.STATIC)) is None


def test_first_connect_sends_clusters_and_endpoints_but_holds_routes_and_listeners() -> None:
    target = snapshot({"A": 100})
    view = compute_view(target, {})
    assert set(view.of_type(CLUSTER)) == {"A"}
    assert set(view.of_type(ENDPOINT)) == {"A"}
    assert dict(view.of_type(ROUTE)) == {}
    assert dict(view.of_type(LISTENER)) == {}
    assert view.waiting_of(ROUTE) == {ROUTE_NAME}
    assert view.waiting_of(LISTENER) == {LISTENER_NAME}
    assert not view.converged


def test_routes_need_cluster_ack_and_endpoint_ack() -> None:
    target = snapshot({"A": 100})
    only_cds = {CLUSTER: holding_of(target, CLUSTER)}
    assert dict(compute_view(target, only_cds).of_type(ROUTE)) == {}
    # Pending (sent, not ACKed) endpoints do not count.
    pending_eds = {**only_cds, ENDPOINT: Holding(pending=dict(target.of_type(ENDPOINT)))}
    assert dict(compute_view(target, pending_eds).of_type(ROUTE)) == {}
    both = {**only_cds, ENDPOINT: holding_of(target, ENDPOINT)}
    view = compute_view(target, both)
    assert set(view.of_type(ROUTE)) == {ROUTE_NAME}
    assert set(view.of_type(LISTENER)) == {LISTENER_NAME}


def test_a_static_cluster_needs_only_its_cds_ack() -> None:
    static = cluster_pb2.Cluster(name="S", type=cluster_pb2.Cluster.STATIC)
    target = Snapshot.build(
        {CLUSTER: [("S", static)], ROUTE: [(ROUTE_NAME, routes(ROUTE_NAME, {"S": 1}))]}
    )
    view = compute_view(target, {CLUSTER: holding_of(target, CLUSTER)})
    assert set(view.of_type(ROUTE)) == {ROUTE_NAME}


def test_everything_acked_is_the_target() -> None:
    target = snapshot({"A": 90, "B": 10})
    view = compute_view(target, all_acked(target))
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert dict(view.of_type(t)) == dict(target.of_type(t))
    assert view.converged


def test_adding_a_cluster_holds_the_new_weights_until_its_cds_and_eds_acks() -> None:
    before = snapshot({"A": 100})
    target = snapshot({"A": 90, "B": 10})
    held = all_acked(before)
    view = compute_view(target, held)
    # CDS and EDS carry A and B at once; RDS keeps the node's old route (A only).
    assert set(view.of_type(CLUSTER)) == {"A", "B"}
    assert set(view.of_type(ENDPOINT)) == {"A", "B"}
    assert view.of_type(ROUTE)[ROUTE_NAME] == before.of_type(ROUTE)[ROUTE_NAME]
    assert view.waiting_of(ROUTE) == {ROUTE_NAME}

    held[CLUSTER] = holding_of(target, CLUSTER)  # B ACKed in CDS, endpoints not yet
    assert (
        compute_view(target, held).of_type(ROUTE)[ROUTE_NAME] == before.of_type(ROUTE)[ROUTE_NAME]
    )
    held[ENDPOINT] = holding_of(target, ENDPOINT)
    view = compute_view(target, held)
    assert view.of_type(ROUTE)[ROUTE_NAME] == target.of_type(ROUTE)[ROUTE_NAME]
    assert view.converged


def test_removing_a_cluster_keeps_it_until_no_held_route_uses_it() -> None:
    before = snapshot({"A": 90, "B": 10})
    target = snapshot({"B": 100})
    held = all_acked(before)
    view = compute_view(target, held)
    # RDS goes first (B is ready); A stays in CDS and EDS, with the node's own content.
    assert view.of_type(ROUTE)[ROUTE_NAME] == target.of_type(ROUTE)[ROUTE_NAME]
    assert set(view.of_type(CLUSTER)) == {"A", "B"}
    assert view.of_type(CLUSTER)["A"] == before.of_type(CLUSTER)["A"]
    assert view.of_type(ENDPOINT)["A"] == before.of_type(ENDPOINT)["A"]
    assert view.retained[CLUSTER] == {"A"}

    # The new route is only sent (pending): the node may still use the old one.
    held[ROUTE] = Holding(acked=dict(before.of_type(ROUTE)), pending=dict(target.of_type(ROUTE)))
    assert set(compute_view(target, held).of_type(CLUSTER)) == {"A", "B"}

    held[ROUTE] = holding_of(target, ROUTE)  # RDS ACKed: nothing the node holds uses A
    view = compute_view(target, held)
    assert set(view.of_type(CLUSTER)) == {"B"}
    # EDS keeps A's endpoints while the node still has cluster A (CDS not ACKed yet).
    assert set(view.of_type(ENDPOINT)) == {"A", "B"}

    held[CLUSTER] = holding_of(target, CLUSTER)
    view = compute_view(target, held)
    assert set(view.of_type(ENDPOINT)) == {"B"}
    assert view.converged


def test_a_retained_cluster_keeps_its_last_endpoints_not_the_targets() -> None:
    before = snapshot({"A": 90, "B": 10}, ports={"A": (1,)})
    # A left the config but the catalog still lists it with other ports.
    target = Snapshot.build(
        {
            CLUSTER: [("B", cluster("B"))],
            ENDPOINT: [("A", cla("A", 2)), ("B", cla("B", 9000))],
            ROUTE: [(ROUTE_NAME, routes(ROUTE_NAME, {"B": 100}))],
            LISTENER: [(LISTENER_NAME, listener(LISTENER_NAME, ROUTE_NAME))],
        }
    )
    view = compute_view(target, all_acked(before))
    assert view.of_type(ENDPOINT)["A"] == before.of_type(ENDPOINT)["A"]


def test_route_of_unknown_content_keeps_every_cluster_the_node_has() -> None:
    target = snapshot({"B": 100})
    before = snapshot({"A": 90, "B": 10})
    held = all_acked(before)
    held[ROUTE] = Holding(acked={ROUTE_NAME: None})  # known by name and version only
    held[CLUSTER] = Holding(acked={"A": None, "B": before.of_type(CLUSTER)["B"]})
    view = compute_view(target, held)
    assert view.kept_of(CLUSTER) == {"A"}  # cannot resend it, but must not remove it


def test_a_new_listener_waits_for_its_route_config() -> None:
    before = snapshot({"A": 100})
    new_route = routes("second", {"B": 100})
    target = Snapshot.build(
        {
            CLUSTER: [("A", cluster("A")), ("B", cluster("B"))],
            ENDPOINT: [("A", cla("A", 1)), ("B", cla("B", 2))],
            ROUTE: [(ROUTE_NAME, routes(ROUTE_NAME, {"A": 100})), ("second", new_route)],
            LISTENER: [
                (LISTENER_NAME, listener(LISTENER_NAME, ROUTE_NAME)),
                ("second", listener("second", "second", port=8001)),
            ],
        }
    )
    view = compute_view(target, all_acked(before))
    assert set(view.of_type(LISTENER)) == {LISTENER_NAME}
    assert view.waiting_of(LISTENER) == {"second"}
    held = all_acked(before)
    held[CLUSTER] = holding_of(target, CLUSTER)
    held[ENDPOINT] = holding_of(target, ENDPOINT)
    view = compute_view(target, held)
    assert set(view.of_type(LISTENER)) == {LISTENER_NAME, "second"}
    assert set(view.of_type(ROUTE)) == {ROUTE_NAME, "second"}


def test_view_is_deterministic_and_sorted() -> None:
    target = snapshot({"B": 10, "A": 90}, extra_clusters=("C",))
    first = compute_view(target, {})
    second = compute_view(target, {})
    assert list(first.of_type(CLUSTER)) == ["A", "B", "C"]
    assert first == second
    assert isinstance(next(iter(first.of_type(CLUSTER).values())), Resource)


def test_a_shared_memo_gives_the_same_views_as_a_fresh_one() -> None:
    before = snapshot({"A": 100})
    target = snapshot({"B": 100})  # A removed: retained while the node's route uses it
    held = all_acked(before)
    memo = ViewMemo(limit=3)  # small: the tables are cleared on the way
    for _ in range(3):
        for snap, holding in ((target, held), (before, held), (target, {})):
            assert compute_view(snap, holding, memo) == compute_view(snap, holding)
    shared = compute_view(target, held, memo)
    assert shared.retained[CLUSTER] == {"A"} and "A" in shared.of_type(CLUSTER)
