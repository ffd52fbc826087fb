"""The control plane's HTTP port: ``GET /healthz`` for the cloud load balancer, ``GET /status``.

``/healthz`` answers, in this order (SPEC.md section 3):

- 599 ``MAINTENANCE`` while the maintenance file exists;
- 503 when there is no good config yet, when a managed Envoy (``--node-id``; ``up``: its own
  Envoy; none given: every connected Envoy, at least one) is not connected, has not ACKed
  the latest snapshot or NACKed it (other xDS clients never count here), or when a
  configured cluster has no healthy host according to Envoy's admin API (the catalog's
  view when no admin address is known);
- 200 ``OK`` otherwise.

The body of a non-200 answer says why, one reason a line, so an operator reading the load
balancer's log knows what to fix. ``/status`` is the same facts and more, as JSON.

Features add to both without reshaping this module: ``sections`` (name -> a callable giving
plain data) become extra keys of ``/status``, and ``routes`` add endpoints to the app (the
canary's ``/canary``, the access-log receiver's ``/als``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from junction.admin import health_app, token_middleware
from junction.envoy_admin import fetch_clusters, healthy_hosts, host_states
from junction.xds.cache import SnapshotCache
from junction.xds.publisher import Publisher

__all__ = ["StatusServer", "Verdict"]

log = logging.getLogger("junction.status")

MAINTENANCE_STATUS = 599


@dataclass(frozen=True)
class Verdict:
    status: int
    reasons: tuple[str, ...]

    @property
    def body(self) -> str:
        if self.status == 200:
            return "OK\n"
        if self.status == MAINTENANCE_STATUS:
            return "MAINTENANCE\n"
        return "".join(f"{r}\n" for r in self.reasons)


class StatusServer:
    """Serves /healthz and /status for one control plane (and the Envoy it manages, if any)."""

    def __init__(
        self,
        publisher: Publisher,
        cache: SnapshotCache,
        *,
        maintenance_file: str | None = None,
        envoy_admin: Callable[[], str | None] | None = None,
        sections: Mapping[str, Callable[[], Any]] | None = None,
        routes: Sequence[Callable[[web.Application], None]] = (),
        health_nodes: Sequence[str] = (),
        admin_token: str | None = None,
    ) -> None:
        """``health_nodes``: the node ids of the Envoys this control plane answers for;
        only they count in /healthz (other xDS clients appear in /status only). Empty:
        every connected node counts. ``admin_token``: mutating calls need it
        (:func:`junction.admin.token_middleware`)."""
        self._publisher = publisher
        self._admin_token = admin_token
        self._health_runner: web.AppRunner | None = None
        self.health_port: int | None = None
        self.health_nodes = tuple(sorted(set(health_nodes)))
        self._cache = cache
        self._maintenance_file = maintenance_file
        self._envoy_admin = envoy_admin or (lambda: None)
        self._sections = dict(sections or {})
        self._routes = tuple(routes)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        #: Envoy's view of every host at the last verdict (None: the catalog's was used).
        self._envoy_hosts: dict[str, Any] | None = None

    # ---- the verdict ----------------------------------------------------------------

    async def verdict(self) -> Verdict:
        if self._maintenance_file and os.path.exists(self._maintenance_file):
            return Verdict(MAINTENANCE_STATUS, ("maintenance file exists",))
        reasons: list[str] = []
        snapshot = self._publisher.snapshot
        if snapshot is None:
            return Verdict(503, ("no good config published yet",))
        reasons.extend(self._cache.health_problems(snapshot.version, self.health_nodes))
        config = self._publisher.config
        if config is not None:
            healthy = await self._healthy_hosts()
            for cluster in config.cluster_names():
                if healthy.get(cluster, 0) == 0:
                    reasons.append(f"cluster {cluster} has no healthy host")
        return Verdict(503 if reasons else 200, tuple(reasons))

    async def _healthy_hosts(self) -> dict[str, int]:
        admin = self._envoy_admin()
        if admin:
            try:
                clusters = await fetch_clusters(admin)
                self._envoy_hosts = host_states(clusters)
                return healthy_hosts(clusters)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("Envoy admin %s unreadable (%s); using the catalog", admin, exc)
        self._envoy_hosts = None
        counts = self._publisher.status()["instances"]
        return {
            name: info["by_health"].get("HEALTHY", 0) + info["by_health"].get("DEGRADED", 0)
            for name, info in counts.items()
        }

    # ---- HTTP -----------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        verdict = await self.verdict()
        return web.Response(status=verdict.status, text=verdict.body)

    async def _status(self, request: web.Request) -> web.Response:
        verdict = await self.verdict()
        body = {
            **self._publisher.status(),
            "nodes": self._cache.node_status(),
            "health_nodes": list(self.health_nodes) or "every connected node",
            "healthz": {"status": verdict.status, "reasons": list(verdict.reasons)},
            "maintenance_file": self._maintenance_file,
            "envoy_admin": self._envoy_admin(),
            # Hosts as Envoy sees them (outlier ejections, failed checks, DRAINING).
            "envoy_hosts": self._envoy_hosts,
            **{name: section() for name, section in self._sections.items()},
        }
        return web.Response(
            body=orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
            content_type="application/json",
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port); returns the bound port."""
        app = web.Application(middlewares=[token_middleware(self._admin_token)])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/status", self._status)
        for add_routes in self._routes:
            add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.port

    async def start_health(self, host: str, port: int = 0) -> int:
        """The load balancer's listener on ``host:port``: /healthz only
        (:func:`junction.admin.health_app`); returns the bound port."""
        self._health_runner = web.AppRunner(health_app(self._healthz), access_log=None)
        await self._health_runner.setup()
        site = web.TCPSite(self._health_runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        self.health_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.health_port

    async def stop(self) -> None:
        if self._health_runner is not None:
            await self._health_runner.cleanup()
            self._health_runner = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
