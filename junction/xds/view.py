"""Make-before-break: what one node may be sent now, given the target snapshot and what it holds.

The xDS protocol leaves ordering to the server ("Eventual consistency considerations" in
Envoy's *xDS REST and gRPC protocol*): routes are not warmed, so "the management plane must
ensure that clusters referenced by a route are in place, before pushing the updates for a
route", and stale clusters may only be removed once nothing references them. ADS ordering
(CDS, EDS, LDS, RDS) alone is not enough: Envoy may still be applying CDS when RDS arrives,
and a removed cluster must outlive every route the node still holds that points to it.

:func:`compute_view` is the pure rule, per node:

- clusters(view) = clusters(target) plus every cluster still referenced by a route
  configuration the node holds (ACKed, or sent and not yet replaced by an ACKed newer one);
  a retained cluster keeps the content the node has.
- endpoints(view) follow the clusters: target ClusterLoadAssignments, plus the node's own
  for clusters that are retained or that the node still holds (EDS must not drop a
  cluster's endpoints before CDS has dropped the cluster).
- routes(view): a target RouteConfiguration goes out only when every cluster it references
  is ACKed by the node in CDS and, for EDS clusters, its endpoints are ACKed in EDS;
  otherwise the node keeps the version it has (or gets none yet).
- listeners(view): a target Listener goes out only when every RouteConfiguration it names
  (through an HttpConnectionManager's ``rds``) is in the view.

So adding cluster B and shifting weight to it sends CDS+EDS with A and B first and RDS
only after B's ACKs; removing A sends RDS first and CDS without A only after the RDS ACK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import DecodeError, Message

from junction.xds.resources import ADS_ORDER, CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, Snapshot

__all__ = [
    "Holding",
    "View",
    "compute_view",
    "eds_name",
    "listener_routes",
    "route_clusters",
]

_EMPTY: Mapping[str, Resource] = MappingProxyType({})
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Holding:
    """What one node has of one resource type.

    ``acked`` maps every name the node has ACKed to its content, or to ``None`` when only
    the name and version are known (delta ``initial_resource_versions`` of a version this
    process never built). ``pending`` is what was sent since the last ACK and may already be
    applied (Envoy can apply part of a NACKed CDS/LDS update).
    """

    acked: Mapping[str, Resource | None] = field(default_factory=dict)
    pending: Mapping[str, Resource] = field(default_factory=dict)

    def has(self) -> dict[str, Resource | None]:
        """Everything the node may have: ACKed, overlaid with the newer pending content."""
        out = dict(self.acked)
        out.update(self.pending)
        return out

    def contents(self) -> list[Resource | None]:
        """Every version the node may be using: ACKed and pending (same name: both)."""
        return [*self.acked.values(), *self.pending.values()]


@dataclass(frozen=True)
class View:
    """The resources one node may be sent now, by type URL and name.

    ``kept`` names resources the node holds and must keep though their content is unknown
    here (only delta can express "keep"); ``waiting`` names target resources held back;
    ``retained`` names resources sent beyond the target (make-before-break).
    """

    resources: Mapping[str, Mapping[str, Resource]]
    kept: Mapping[str, frozenset[str]]
    waiting: Mapping[str, frozenset[str]]
    retained: Mapping[str, frozenset[str]]

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    def kept_of(self, type_url: str) -> frozenset[str]:
        return self.kept.get(type_url, _NONE)

    def waiting_of(self, type_url: str) -> frozenset[str]:
        return self.waiting.get(type_url, _NONE)

    @property
    def converged(self) -> bool:
        """True when the view is the target: nothing held back, retained or kept."""
        return not any(
            self.kept_of(t) or self.waiting_of(t) or self.retained.get(t) for t in ADS_ORDER
        )


# ---- references -----------------------------------------------------------------------

# Resources are immutable and named by a content hash, so what they reference is computed
# once per (type, version) and remembered; the memo is bounded by clearing when full.
_MEMO: dict[tuple[str, str, str], frozenset[str]] = {}
_MEMO_MAX = 4096


def _memo(
    kind: str, resource: Resource, compute: Callable[[Message], frozenset[str]]
) -> frozenset[str]:
    key = (kind, resource.name, resource.version)
    hit = _MEMO.get(key)
    if hit is None:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        hit = compute(resource.message)
        _MEMO[key] = hit
    return hit


def route_clusters(route_config: Message) -> frozenset[str]:
    """Cluster names a RouteConfiguration sends traffic to.

    Walks virtual_hosts -> routes -> route action: ``cluster``, ``weighted_clusters``
    and request mirror policies (a mirror to a missing cluster is an error too).
    ``cluster_header`` and cluster specifier plugins name clusters only at request time and
    cannot be checked here.
    """
    assert isinstance(route_config, route_pb2.RouteConfiguration)
    names: set[str] = set()
    for vhost in route_config.virtual_hosts:
        names.update(m.cluster for m in vhost.request_mirror_policies if m.cluster)
        for route in vhost.routes:
            if route.WhichOneof("action") != "route":
                continue
            action = route.route
            which = action.WhichOneof("cluster_specifier")
            if which == "cluster":
                names.add(action.cluster)
            elif which == "weighted_clusters":
                names.update(c.name for c in action.weighted_clusters.clusters if c.name)
            names.update(m.cluster for m in action.request_mirror_policies if m.cluster)
    return frozenset(names)


def listener_routes(listener: Message) -> frozenset[str]:
    """RouteConfiguration names a Listener fetches over RDS (HttpConnectionManager ``rds``)."""
    assert isinstance(listener, listener_pb2.Listener)
    names: set[str] = set()
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            if not network_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            try:
                network_filter.typed_config.Unpack(hcm)
            except DecodeError:  # Envoy will NACK it; nothing to wait for
                continue
            if hcm.HasField("rds"):
                names.add(hcm.rds.route_config_name)
    return frozenset(names)


def eds_name(cluster: Message) -> str | None:
    """The ClusterLoadAssignment name an EDS cluster asks for; None for other clusters.

    Envoy requests ``eds_cluster_config.service_name`` when set, else the cluster's name.
    """
    assert isinstance(cluster, cluster_pb2.Cluster)
    if cluster.WhichOneof("cluster_discovery_type") != "type":
        return None
    if cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def _route_refs(resource: Resource) -> frozenset[str]:
    return _memo("route", resource, route_clusters)


def _listener_refs(resource: Resource) -> frozenset[str]:
    return _memo("listener", resource, listener_routes)


def _eds_of(resource: Resource) -> str | None:
    refs = _memo("eds", resource, lambda m: frozenset(filter(None, [eds_name(m)])))
    return next(iter(refs), None)


# What a route needs before it may go out: the clusters it names ACKed in CDS and, for EDS
# clusters the target has endpoints for, their ClusterLoadAssignments ACKed in EDS. That
# depends only on the route and the target's clusters, both named by content hashes, so it
# is computed once per (route version, target CDS version) and then checked with set
# operations; cluster by cluster on every view it cost ~1.5 ms at 1000 clusters, and a
# one-instance change computes eight views (loadtest/xds_bench.py).
_Needs = tuple[frozenset[str], frozenset[str]]
_NEEDS: dict[tuple[str, str, str], _Needs | None] = {}


def _route_needs(
    route: Resource, t_clusters: Mapping[str, Resource], clusters_version: str
) -> _Needs | None:
    """(clusters, EDS names) ``route`` needs ACKed; None if it names a cluster the target
    (``t_clusters``, whose type version is ``clusters_version``) does not have."""
    key = (route.name, route.version, clusters_version)
    if key in _NEEDS:
        return _NEEDS[key]
    refs = _route_refs(route)
    needs: _Needs | None = None
    if t_clusters.keys() >= refs:
        eds = (_eds_of(t_clusters[c]) for c in refs)
        needs = (refs, frozenset(n for n in eds if n is not None))
    if len(_NEEDS) >= _MEMO_MAX:
        _NEEDS.clear()
    _NEEDS[key] = needs
    return needs


# ---- the view ---------------------------------------------------------------------------


def compute_view(target: Snapshot, held: Mapping[str, Holding]) -> View:
    """The resources ``target`` allows sending to a node that holds ``held`` (see module doc).

    Pure and deterministic; ``held`` maps type URLs to :class:`Holding` (missing = nothing).
    """
    empty = Holding()
    acked = {t: held.get(t, empty).acked for t in ADS_ORDER}
    # What the node may have (ACKed, overlaid with pending): the ACKed mapping itself when
    # nothing is pending, as for most views (no copy of 1000 entries per view).
    has = {t: _has(held.get(t, empty)) for t in (CLUSTER, ENDPOINT)}
    kept: dict[str, set[str]] = {t: set() for t in ADS_ORDER}
    waiting: dict[str, set[str]] = {t: set() for t in ADS_ORDER}
    retained: dict[str, set[str]] = {t: set() for t in ADS_ORDER}

    t_clusters = target.of_type(CLUSTER)
    t_endpoints = target.of_type(ENDPOINT)
    acked_clusters = acked[CLUSTER].keys()
    acked_endpoints = acked[ENDPOINT].keys()

    # Routes: only when every cluster they reference is ACKed (and its endpoints, for EDS
    # clusters the target has endpoints for).
    def ready(route: Resource) -> bool:
        needs = _route_needs(route, t_clusters, target.versions[CLUSTER])
        if needs is None or not acked_clusters >= needs[0]:
            return False
        return acked_endpoints >= needs[1] or not any(
            n in t_endpoints for n in needs[1] - acked_endpoints
        )

    routes: dict[str, Resource] = {}
    for name, route in target.of_type(ROUTE).items():
        if ready(route):
            routes[name] = route
            continue
        waiting[ROUTE].add(name)
        _hold(name, acked[ROUTE], routes, kept[ROUTE])

    # Clusters: the target's, plus every cluster a route the node holds (or will) uses.
    held_routes = held.get(ROUTE, empty).contents() + list(routes.values())
    if any(r is None for r in held_routes):
        # A route of unknown content may use any cluster the node has: keep them all.
        beyond = set(has[CLUSTER]) - t_clusters.keys()
    else:
        beyond = set()
        for r in filter(None, held_routes):
            refs = _route_refs(r)
            if not t_clusters.keys() >= refs:
                beyond |= refs - t_clusters.keys()
    clusters: dict[str, Resource] = {}  # filled (a copy of the target's) only if retaining
    for name in sorted(beyond):
        if name in has[CLUSTER]:
            if not retained[CLUSTER]:
                clusters = dict(t_clusters)
            retained[CLUSTER].add(name)
            _hold(name, has[CLUSTER], clusters, kept[CLUSTER])

    # Endpoints follow the clusters in the view and the clusters the node still holds:
    # those beyond the target's are the node's own (retained ones included).
    endpoints: dict[str, Resource] = {}  # likewise
    for name in sorted(_beyond(has[CLUSTER], t_clusters)):
        resource = has[CLUSTER].get(name)
        cla = _eds_of(resource) if resource is not None else name
        if cla is None:
            continue
        if cla in has[ENDPOINT]:
            if not retained[ENDPOINT]:
                endpoints = dict(t_endpoints)
            retained[ENDPOINT].add(cla)
            endpoints.pop(cla, None)
            _hold(cla, has[ENDPOINT], endpoints, kept[ENDPOINT])

    # Listeners: only when every RouteConfiguration they name is in the view.
    available = routes.keys() | kept[ROUTE]
    listeners: dict[str, Resource] = {}
    for name, listener in target.of_type(LISTENER).items():
        if _listener_refs(listener) <= available:
            listeners[name] = listener
            continue
        waiting[LISTENER].add(name)
        _hold(name, acked[LISTENER], listeners, kept[LISTENER])

    by_type = {CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: listeners, ROUTE: routes}
    # Clusters and endpoints only grow by retained resources: without any, they are the
    # target's own (sorted, read-only) mappings, which callers may recognize by identity.
    same = {t for t in (CLUSTER, ENDPOINT) if not retained[t]}
    return View(
        resources=MappingProxyType(
            {
                t: target.of_type(t)
                if t in same
                else MappingProxyType(dict(sorted(by_type[t].items())))
                for t in ADS_ORDER
            }
        ),
        kept=_freeze(kept),
        waiting=_freeze(waiting),
        retained=_freeze(retained),
    )


def _has(holding: Holding) -> Mapping[str, Resource | None]:
    return holding.has() if holding.pending else holding.acked


def _beyond(names: Mapping[str, object], target: Mapping[str, Resource]) -> set[str]:
    """The keys of ``names`` that ``target`` lacks (a C-level subset test first: usually none)."""
    return set() if target.keys() >= names.keys() else set(names.keys() - target.keys())


def _hold(
    name: str,
    source: Mapping[str, Resource | None],
    into: dict[str, Resource],
    kept: set[str],
) -> None:
    """Put the node's own copy of ``name`` in the view (or mark it kept if unknown)."""
    if name not in source:
        return
    resource = source[name]
    if resource is None:
        kept.add(name)
    else:
        into[name] = resource


def _freeze(sets: Mapping[str, Iterable[str]]) -> Mapping[str, frozenset[str]]:
    return MappingProxyType({t: frozenset(names) for t, names in sets.items() if names})
