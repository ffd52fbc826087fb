"""Wiring: sources -> publisher -> snapshot cache -> xDS server, the status port, and
(for ``junction up``) a real Envoy bootstrapped to talk to this control plane.

The access-log loop (:mod:`junction.loop`: :mod:`junction.als` feeding
:mod:`junction.canary`) plugs in beside them: Envoy's listener gets the gRPC access
logger, the receiver and canary controller run in this process (``up``: on a free port
the bootstrap names; ``--no-als``: elsewhere), and the canary states in the store are one
more input of the publisher and are served on ``/canary`` (and in ``/status``).

Everything a control-plane replica holds can be rebuilt from its sources (files or Consul),
so replicas run side by side with no state of their own that the others need.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from junction.admin import ExposureError, exposure_problems
from junction.canary.api import CanaryApi
from junction.canary.metrics import CanaryMetrics
from junction.canary.source import CanaryBoard, CanaryStateSource
from junction.canary.store import make_store
from junction.catalog.choose import SourceChoice
from junction.catalog.source import CatalogSource, ConfigSource
from junction.config.model import Config
from junction.drain.api import DrainApi
from junction.drain.source import DrainingCatalog, DrainSource
from junction.drain.store import make_drain_store
from junction.envoy_admin import fetch_clusters, host_states
from junction.envoy_process import EnvoyProcess
from junction.errors import JunctionError
from junction.extproc.service import ExtProcService, ServiceSettings, SidecarSettings
from junction.extproc.tiers import tier_summary
from junction.loop.service import AlsService, AlsSettings
from junction.metrics import metrics_route
from junction.status import StatusServer
from junction.tasks import cancel_all
from junction.xds.bootstrap import BootstrapOptions, bootstrap
from junction.xds.cache import SnapshotCache
from junction.xds.metrics import XdsMetrics
from junction.xds.publisher import Publisher
from junction.xds.server import create_server
from junction.xds.tls import TlsFiles
from junction.xds.translate import DEFAULT_OPTIONS
from junction.xds.translate_als import AccessLogOptions, with_access_log

__all__ = ["ControlPlane", "Settings", "SettingsError", "run_until_signalled"]

log = logging.getLogger("junction")


class SettingsError(JunctionError):
    """Flags that do not fit together (named in the message)."""


@dataclass(frozen=True)
class Settings:
    """What ``junction up`` and ``junction serve`` run with (the CLI flags, validated)."""

    config_path: str | None = None
    instances_path: str | None = None
    consul_addr: str | None = None
    consul_key: str | None = None
    consul_wait: str = "30s"
    host: str = "127.0.0.1"
    http_port: int = 8081
    #: Where the admin API (/status, /canary, commands) listens: loopback by default.
    admin_host: str = "127.0.0.1"
    #: The load balancer's health-only listener, ``(host, port)`` (None: not opened).
    health_addr: tuple[str, int] | None = None
    #: ``JUNCTION_ADMIN_TOKEN``: mutating admin calls need it (None: no token).
    admin_token: str | None = None
    #: Listen beyond loopback for Envoy (xDS, access logs) without TLS, knowingly.
    insecure: bool = False
    #: mTLS for xDS and the ALS receiver (client certificates required); None: plaintext.
    tls: TlsFiles | None = None
    #: A node id must be one of its client certificate's SANs (needs ``tls``).
    require_node_identity: bool = False
    xds_port: int = 18000
    run_envoy: bool = False
    envoy_admin_port: int = 9901
    envoy_admin: str | None = None  # serve: where the managed-elsewhere Envoy's admin is
    envoy_log_level: str = "warning"
    maintenance_file: str | None = None
    delta: bool = False
    #: The decision service beside the Envoy of ``junction up`` (None: not run).
    extproc: SidecarSettings | None = None
    node_id: str = ""
    #: ``serve --node-id``: the Envoys judged by /healthz (``up``: its own Envoy).
    health_nodes: tuple[str, ...] = ()
    zone: str = ""
    region: str = ""
    #: The ALS receiver and canary controller in this process (None: not run here).
    als: AlsSettings | None = None
    #: With ``als`` None: the port of an external receiver, for Envoy's bootstrap (``up``).
    als_port: int | None = None
    #: Envoy's gRPC access logger on the listener (None: Envoy sends no access logs).
    access_log: AccessLogOptions | None = None
    #: Canary states in files here; None: Consul KV with ``consul_addr``, else the default
    #: directory (:func:`junction.canary.store.default_state_dir`).
    state_dir: str | None = None

    def check(self) -> None:
        problem = self.sources().problem()
        if problem is not None:
            raise SettingsError(problem)
        if self.run_envoy and self.access_log and self.als is None and not self.als_port:
            raise SettingsError("--no-als needs --als-port N (where Envoy sends access logs)")
        if self.require_node_identity and self.tls is None:
            raise SettingsError("--require-node-identity needs --tls-cert, --tls-key, --tls-ca")
        problems = exposure_problems(
            admin_host=self.admin_host,
            token=self.admin_token,
            envoy_host=self.host,
            tls=self.tls is not None,
            insecure=self.insecure,
        )
        if problems:
            raise ExposureError("refusing to start:\n  " + "\n  ".join(problems))

    def sources(self) -> SourceChoice:
        return SourceChoice(
            self.config_path,
            self.instances_path,
            self.consul_addr,
            self.consul_key,
            self.consul_wait,
        )

    def config_source(self) -> ConfigSource:
        return self.sources().config_source()

    def catalog_source(self) -> CatalogSource:
        return self.sources().catalog_source()


class ControlPlane:
    """One replica: start() binds everything, stop() undoes it in reverse order."""

    def __init__(self, settings: Settings) -> None:
        settings.check()
        self.settings = settings
        self.cache = SnapshotCache()
        # GET /metrics on the admin port (junction.metrics): one registry per process.
        self.metrics = CollectorRegistry()
        self.xds_metrics = XdsMetrics(
            self.metrics, status=lambda: self.publisher.status(), nodes=self.cache.nodes
        )
        self.catalog_source = settings.catalog_source()
        self.config_source = settings.config_source()
        options = (
            with_access_log(DEFAULT_OPTIONS, settings.access_log) if settings.access_log else None
        )
        self.publisher = Publisher(
            self.cache,
            self.catalog_source,
            options=options,
            on_publish=self.xds_metrics.observe_publish,
        )
        # Drains (junction.drain): shared state in the same store as the canary's; the
        # catalog's reports pass through DrainingCatalog, which marks drained instances.
        self.drain_store = make_drain_store(
            consul_addr=settings.consul_addr, state_dir=settings.state_dir
        )
        self.draining = DrainingCatalog(self.publisher)
        self.drain_api = DrainApi(self.drain_store, self.draining, envoy_hosts=self._envoy_hosts)
        self.envoy: EnvoyProcess | None = None
        self._build_feedback(settings)
        self.node_id = settings.node_id or f"junction-{socket.gethostname()}"
        self.status = self._build_status(settings)
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc = None
        self.xds_port: int | None = None
        self.extproc: ExtProcService | None = None

    def _build_feedback(self, settings: Settings) -> None:
        """The canary's states and commands, and the access-log receiver when it runs here.
        States are read by the publisher (route weights) and /canary; written by the
        controller (in self.als) and the operator's commands, always through the store."""
        self.canary_store = make_store(
            consul_addr=settings.consul_addr, state_dir=settings.state_dir
        )
        self.canary_board = CanaryBoard(self.publisher)
        self.canary = CanaryApi(self.canary_store, self.canary_board, self._config)
        self.als = (
            AlsService(
                settings.als,
                store=self.canary_store,
                config=self._config,
                envoy_admin=self._envoy_admin,
                credentials=None if settings.tls is None else settings.tls.server_credentials(),
            )
            if settings.als is not None
            else None
        )

    def _build_status(self, settings: Settings) -> StatusServer:
        """The admin API (/status, /canary, /drain, /metrics) and the health listener."""
        sections = {
            "canary": self.canary.status,
            "decisions": self._decision_tiers,
            "xds_refused": self.xds_refused,
            "drains": self.draining.status,
        }
        routes = [self.canary.add_routes, self.drain_api.add_routes, metrics_route(self.metrics)]
        if self.als is not None:
            sections["als"] = self.als.status
            routes.append(self.als.add_routes)
            self.als.register_metrics(self.metrics, lambda: self.canary_board.states)
        else:
            CanaryMetrics(self.metrics, states=lambda: self.canary_board.states)
        return StatusServer(
            self.publisher,
            self.cache,
            maintenance_file=settings.maintenance_file,
            envoy_admin=self._envoy_admin,
            sections=sections,
            routes=routes,
            health_nodes=(self.node_id,) if settings.run_envoy else settings.health_nodes,
            admin_token=settings.admin_token,
        )

    def xds_refused(self) -> dict[str, int]:
        """What hostile or broken xDS clients tried, by reason (junction.xds.limits)."""
        servicer = getattr(self._grpc, "servicer", None)
        return {} if servicer is None else dict(sorted(servicer.refused.items()))

    def _config(self) -> Config | None:
        return self.publisher.config

    def _decision_tiers(self) -> list[dict[str, object]]:
        """/status ``decisions``: per route, whether Envoy or the service decides, and why."""
        config = self.publisher.config
        return tier_summary(config) if config is not None else []

    async def _envoy_hosts(self) -> dict[str, dict[str, Any]] | None:
        """Envoy's view of every host (for drain checks); None when it cannot be read."""
        admin = self._envoy_admin()
        if not admin:
            return None
        try:
            return host_states(await fetch_clusters(admin))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("Envoy admin %s unreadable (%s); drain checks use the catalog", admin, exc)
            return None

    def _envoy_admin(self) -> str | None:
        if self.envoy is not None:
            return self.envoy.admin_address
        return self.settings.envoy_admin

    async def start(self) -> None:
        s = self.settings
        self._grpc, self.xds_port = await create_server(
            self.cache,
            f"{s.host}:{s.xds_port}",
            on_events=self.xds_metrics.observe,
            tls=s.tls,
            require_node_identity=s.require_node_identity,
        )
        await self.status.start(s.admin_host, s.http_port)
        if s.health_addr is not None:
            await self.status.start_health(*s.health_addr)
        if self.als is not None:
            await self.als.start()
        for coro in (
            self.publisher.run(),
            self.catalog_source.run(self.draining),
            self.config_source.run(self.publisher),
            CanaryStateSource(self.canary_store).run(self.canary_board),
            DrainSource(self.drain_store).run(self.draining),
        ):
            self._tasks.append(asyncio.create_task(coro))
        # Within the publisher's catalog_grace: serve without drains rather than nothing
        # if the drain store cannot be read at start.
        asyncio.get_running_loop().call_later(1.0, self.draining.release)
        log.info(
            "control plane up: xDS on %s:%d, admin API on http://%s:%d%s",
            s.host, self.xds_port, s.admin_host, self.status.port,
            f", /healthz on {s.health_addr[0]}:{self.status.health_port}"
            if s.health_addr else "",
        )  # fmt: skip
        if s.run_envoy:
            opts = BootstrapOptions(
                node_id=self.node_id,
                zone=s.zone,
                region=s.region,
                xds_host=s.host,
                xds_port=self.xds_port,
                admin_port=s.envoy_admin_port,
                delta=s.delta,
                als_port=self.als.port if self.als is not None else s.als_port,
                # With TLS, this Envoy presents the control plane's own certificate.
                tls=s.tls,
            )
            if s.extproc is not None:
                self.extproc = await self._start_extproc(s.extproc)
                opts = dataclasses.replace(
                    opts,
                    extproc_port=self.extproc.grpc_port,
                    extproc_http_port=self.extproc.http_port,
                )
            self.envoy = EnvoyProcess(bootstrap(opts), log_level=s.envoy_log_level)
            await self.envoy.start()
            log.info("Envoy pid %s, admin on %s", self.envoy.pid, self.envoy.admin_address)

    async def _start_extproc(self, sidecar: SidecarSettings) -> ExtProcService:
        """The decision service, with its own reading of the same sources (it shares no
        state with the control plane); workers start once the config needs decisions."""
        s = self.settings
        service = ExtProcService(
            ServiceSettings(
                config_source=s.config_source(),
                catalog_source=s.catalog_source(),
                host=s.host,
                http_port=sidecar.http_port,
                grpc_port=sidecar.grpc_port,
                stats_port=sidecar.stats_port,
                workers=sidecar.workers,
                lazy=True,
                canary_store=self.canary_store,
            )
        )
        await service.start()
        return service

    async def stop(self) -> None:
        if self.envoy is not None:
            await self.envoy.stop()
        if self.extproc is not None:
            await self.extproc.stop()
            self.extproc = None
        await cancel_all(self._tasks)
        if self.als is not None:
            await self.als.stop()
        await self.canary_store.close()
        await self.drain_store.close()
        await self.status.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
            self._grpc = None

    async def wait_envoy_exit(self) -> int:
        """Returns Envoy's exit code (never returns when no Envoy is managed)."""
        if self.envoy is None:
            await asyncio.Event().wait()
        assert self.envoy is not None
        return await self.envoy.wait()


async def run_until_signalled(settings: Settings) -> int:
    """Run one control plane until SIGINT/SIGTERM (or Envoy dies); stop every child."""
    plane = ControlPlane(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
        stopped = asyncio.create_task(stop.wait())
        envoy_exit = asyncio.create_task(plane.wait_envoy_exit())
        done, _ = await asyncio.wait({stopped, envoy_exit}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, envoy_exit):
            task.cancel()
        if envoy_exit in done and not envoy_exit.cancelled():
            log.error("Envoy exited with %s; stopping", envoy_exit.result())
            return 1
        log.info("signal received; stopping")
        return 0
    finally:
        await plane.stop()
