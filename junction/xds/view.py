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
    "ViewMemo",
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


# ---- references ---------------------------------------------------------------------


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


_Needs = tuple[frozenset[str], frozenset[str]]


class ViewMemo:
    """What resources reference, remembered across views: explicit state, owned by whoever
    computes views over time (the xDS node registry), never a module global.

    Resources are immutable and named by a content hash, so what one references is
    computed once per (kind, name, version). What a route needs before it may go out (the
    clusters it names ACKed in CDS and, for EDS clusters, their ClusterLoadAssignments
    ACKed in EDS) depends only on the route and the target's clusters, so it is computed
    once per (route version, target CDS version) and then checked with set operations:
    cluster by cluster on every view it cost ~1.5 ms at 1000 clusters, and a one-instance
    change computes eight views (loadtest/xds_bench.py). Each table is bounded by
    clearing it when full.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._refs: dict[tuple[str, str, str], frozenset[str]] = {}
        self._needs: dict[tuple[str, str, str], _Needs | None] = {}

    def route_refs(self, route: Resource) -> frozenset[str]:
        return self._refs_of("route", route, route_clusters)

    def listener_refs(self, listener: Resource) -> frozenset[str]:
        return self._refs_of("listener", listener, listener_routes)

    def eds_of(self, cluster: Resource) -> str | None:
        refs = self._refs_of("eds", cluster, lambda m: frozenset(filter(None, [eds_name(m)])))
        return next(iter(refs), None)

    def route_needs(
        self, route: Resource, t_clusters: Mapping[str, Resource], clusters_version: str
    ) -> _Needs | None:
        """(clusters, EDS names) ``route`` needs ACKed; None if it names a cluster the
        target (``t_clusters``, whose type version is ``clusters_version``) lacks."""
        key = (route.name, route.version, clusters_version)
        if key in self._needs:
            return self._needs[key]
        refs = self.route_refs(route)
        needs: _Needs | None = None
        if t_clusters.keys() >= refs:
            eds = (self.eds_of(t_clusters[c]) for c in refs)
            needs = (refs, frozenset(n for n in eds if n is not None))
        if len(self._needs) >= self._limit:
            self._needs.clear()
        self._needs[key] = needs
        return needs

    def _refs_of(
        self, kind: str, resource: Resource, compute: Callable[[Message], frozenset[str]]
    ) -> frozenset[str]:
        key = (kind, resource.name, resource.version)
        hit = self._refs.get(key)
        if hit is None:
            if len(self._refs) >= self._limit:
                self._refs.clear()
            hit = self._refs[key] = compute(resource.message)
        return hit


# ---- the view ---------------------------------------------------------------------------


def compute_view(
    target: Snapshot, held: Mapping[str, Holding], memo: ViewMemo | None = None
) -> View:
    """The resources ``target`` allows sending to a node that holds ``held`` (see module doc).

    Pure and deterministic; ``held`` maps type URLs to :class:`Holding` (missing = nothing).
    ``memo`` only saves work (a fresh one gives the same view): pass the same one across
    views. The steps run in the order the rules depend on each other.
    """
    draft = _Draft.start(target, held, memo or ViewMemo())
    _gate_routes(draft)
    _retain_clusters(draft, held.get(ROUTE, Holding()))
    _follow_endpoints(draft)
    _gate_listeners(draft)
    return draft.freeze()


@dataclass
class _Draft:
    """A view under construction. Clusters and endpoints start as the target's own
    (read-only) mappings and are copied only on the first retained resource, so a view
    without retention hands out the snapshot's mappings (callers recognize them by
    identity, see :meth:`Snapshot.owns`) and copies nothing."""

    target: Snapshot
    memo: ViewMemo
    acked: dict[str, Mapping[str, Resource | None]]
    #: What the node may have (ACKed overlaid with pending), CDS and EDS only.
    has: dict[str, Mapping[str, Resource | None]]
    resources: dict[str, Mapping[str, Resource]]
    kept: dict[str, set[str]]
    waiting: dict[str, set[str]]
    retained: dict[str, set[str]]

    @classmethod
    def start(cls, target: Snapshot, held: Mapping[str, Holding], memo: ViewMemo) -> _Draft:
        empty = Holding()
        return cls(
            target=target,
            memo=memo,
            acked={t: held.get(t, empty).acked for t in ADS_ORDER},
            # The ACKed mapping itself when nothing is pending, as for most views (no copy
            # of 1000 entries per view).
            has={t: _has(held.get(t, empty)) for t in (CLUSTER, ENDPOINT)},
            resources={
                CLUSTER: target.of_type(CLUSTER),
                ENDPOINT: target.of_type(ENDPOINT),
                LISTENER: {},
                ROUTE: {},
            },
            kept={t: set() for t in ADS_ORDER},
            waiting={t: set() for t in ADS_ORDER},
            retained={t: set() for t in ADS_ORDER},
        )

    def admit(self, type_url: str, name: str, resource: Resource) -> None:
        """A target resource goes out as it is (routes, listeners)."""
        into = self.resources[type_url]
        assert isinstance(into, dict)
        into[name] = resource

    def hold_back(self, type_url: str, name: str) -> None:
        """A target resource waits; the node keeps the version it has, if any."""
        self.waiting[type_url].add(name)
        into = self.resources[type_url]
        assert isinstance(into, dict)
        _hold(name, self.acked[type_url], into, self.kept[type_url])

    def retain(self, type_url: str, name: str) -> None:
        """Keep the node's own ``name`` beyond the target (CDS, EDS): copy-on-first-retain."""
        if not self.retained[type_url]:
            self.resources[type_url] = dict(self.target.of_type(type_url))
        self.retained[type_url].add(name)
        into = self.resources[type_url]
        assert isinstance(into, dict)
        into.pop(name, None)
        _hold(name, self.has[type_url], into, self.kept[type_url])

    def freeze(self) -> View:
        def final(t: str) -> Mapping[str, Resource]:
            if t in (CLUSTER, ENDPOINT) and not self.retained[t]:
                return self.target.of_type(t)  # the target's own, by identity
            return MappingProxyType(dict(sorted(self.resources[t].items())))

        return View(
            resources=MappingProxyType({t: final(t) for t in ADS_ORDER}),
            kept=_freeze(self.kept),
            waiting=_freeze(self.waiting),
            retained=_freeze(self.retained),
        )


def _gate_routes(d: _Draft) -> None:
    """Routes: only when every cluster they reference is ACKed (and its endpoints, for
    EDS clusters the target has endpoints for)."""
    t_clusters = d.target.of_type(CLUSTER)
    t_endpoints = d.target.of_type(ENDPOINT)
    acked_clusters = d.acked[CLUSTER].keys()
    acked_endpoints = d.acked[ENDPOINT].keys()
    clusters_version = d.target.versions[CLUSTER]
    for name, route in d.target.of_type(ROUTE).items():
        needs = d.memo.route_needs(route, t_clusters, clusters_version)
        ready = (
            needs is not None
            and acked_clusters >= needs[0]
            and (
                acked_endpoints >= needs[1]
                or not any(n in t_endpoints for n in needs[1] - acked_endpoints)
            )
        )
        if ready:
            d.admit(ROUTE, name, route)
        else:
            d.hold_back(ROUTE, name)


def _retain_clusters(d: _Draft, held_routes: Holding) -> None:
    """Clusters: the target's, plus every cluster a route the node holds (or will) uses."""
    t_clusters = d.target.of_type(CLUSTER)
    routes = held_routes.contents() + list(d.resources[ROUTE].values())
    if any(r is None for r in routes):
        # A route of unknown content may use any cluster the node has: keep them all.
        beyond = set(d.has[CLUSTER]) - t_clusters.keys()
    else:
        beyond = set()
        for r in filter(None, routes):
            refs = d.memo.route_refs(r)
            if not t_clusters.keys() >= refs:
                beyond |= refs - t_clusters.keys()
    for name in sorted(beyond):
        if name in d.has[CLUSTER]:
            d.retain(CLUSTER, name)


def _follow_endpoints(d: _Draft) -> None:
    """Endpoints follow the clusters in the view and the clusters the node still holds:
    those beyond the target's are the node's own (retained ones included)."""
    has = d.has
    for name in sorted(_beyond(has[CLUSTER], d.target.of_type(CLUSTER))):
        resource = has[CLUSTER].get(name)
        cla = d.memo.eds_of(resource) if resource is not None else name
        if cla is not None and cla in has[ENDPOINT]:
            d.retain(ENDPOINT, cla)


def _gate_listeners(d: _Draft) -> None:
    """Listeners: only when every RouteConfiguration they name is in the view."""
    available = d.resources[ROUTE].keys() | d.kept[ROUTE]
    for name, listener in d.target.of_type(LISTENER).items():
        if d.memo.listener_refs(listener) <= available:
            d.admit(LISTENER, name, listener)
        else:
            d.hold_back(LISTENER, name)


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
