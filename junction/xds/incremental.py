""":func:`~junction.xds.translate.translate` with a memory, for the publisher's hot path.

A one-instance change at 1000 clusters should cost one ClusterLoadAssignment, not a
rebuild and re-serialization of 2000 resources. :class:`IncrementalTranslator` keeps, for
the current config object, every built :class:`Resource`; endpoints are rebuilt only for
services whose instance tuple changed, everything else only when the config changes.
The result is the same snapshot :func:`translate` would build (a test checks that), so
translation stays a pure function and this is only a cache in front of it.
"""

from __future__ import annotations

from junction.catalog.model import Catalog, Instance
from junction.config.model import Config
from junction.xds.names import LISTENER_NAME, ROUTE_CONFIG_NAME
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, Snapshot
from junction.xds.translate import (
    DEFAULT_OPTIONS,
    TranslateOptions,
    build_listener,
    build_route_configuration,
)
from junction.xds.translate_cluster import build_cluster, build_load_assignment
from junction.xds.translate_egress import egress_resources
from junction.xds.translate_native import unavailable_versions

__all__ = ["IncrementalTranslator"]


class IncrementalTranslator:
    """Translates like :func:`translate`, reusing resources whose inputs did not change."""

    def __init__(self, options: TranslateOptions = DEFAULT_OPTIONS) -> None:
        self._options = options
        self._config: Config | None = None
        self._static: dict[str, dict[str, Resource]] = {}
        self._endpoints: dict[str, tuple[tuple[Instance, ...], Resource]] = {}
        self._snapshot: Snapshot | None = None  # the last one, for the current config
        #: Version clusters without a usable host when the routes were built (native pin
        #: routes depend on it: translate_native).
        self._unavailable: frozenset[str] = frozenset()

    def translate(
        self, config: Config, catalog: Catalog, *, origin: str = "", config_version: str = ""
    ) -> Snapshot:
        unavailable = unavailable_versions(config, catalog)
        if config is not self._config:
            self._rebuild_static(config, unavailable)
        elif unavailable != self._unavailable:
            # A version lost (or regained) its last usable host: re-point its pin routes
            # (the egress route configurations do not depend on it).
            self._unavailable = unavailable
            routes = {**self._static[ROUTE], **self._routes(config, unavailable)}
            self._static = {**self._static, ROUTE: routes}
            self._snapshot = None
        endpoints, changed = self._endpoint_resources(config, catalog)
        if self._snapshot is None:
            snapshot = Snapshot(
                {**self._static, ENDPOINT: endpoints}, origin=origin, config_version=config_version
            )
        else:
            # Same config: clusters, listener and routes are the previous snapshot's own.
            snapshot = self._snapshot.replace(
                {ENDPOINT: endpoints} if changed else {},
                origin=origin,
                config_version=config_version,
            )
        self._snapshot = snapshot
        return snapshot

    def _rebuild_static(self, config: Config, unavailable: frozenset[str]) -> None:
        """A new config: rebuild what depends on it alone; endpoints too, since their port
        override and locality weighting come from the config."""
        self._unavailable = unavailable
        names = config.cluster_names()
        self._static = {
            CLUSTER: {n: Resource.of(n, build_cluster(config, n)) for n in names},
            LISTENER: {
                LISTENER_NAME: Resource.of(LISTENER_NAME, build_listener(config, self._options))
            },
            ROUTE: self._routes(config, unavailable),
        }
        # The egress listener and its routes (translate_egress), when configured.
        listeners, route_configs = egress_resources(config, self._options.access_log)
        self._static[LISTENER].update((n, Resource.of(n, m)) for n, m in listeners)
        self._static[ROUTE].update((n, Resource.of(n, m)) for n, m in route_configs)
        self._endpoints = {}
        self._snapshot = None
        self._config = config

    @staticmethod
    def _routes(config: Config, unavailable: frozenset[str]) -> dict[str, Resource]:
        route = build_route_configuration(config, unavailable)
        return {ROUTE_CONFIG_NAME: Resource.of(ROUTE_CONFIG_NAME, route)}

    def _endpoint_resources(
        self, config: Config, catalog: Catalog
    ) -> tuple[dict[str, Resource], bool]:
        """Every cluster's load assignment, rebuilt only where its instances changed; and
        whether any was rebuilt (or there is no previous snapshot)."""
        endpoints: dict[str, Resource] = {}
        changed = self._snapshot is None
        for name in self._static[CLUSTER]:
            instances = catalog.instances(name)
            cached = self._endpoints.get(name)
            if cached is None or (cached[0] is not instances and cached[0] != instances):
                cached = (
                    instances,
                    Resource.of(name, build_load_assignment(config, name, instances)),
                )
                self._endpoints[name] = cached
                changed = True
            endpoints[name] = cached[1]
        return endpoints, changed
