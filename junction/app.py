"""Wiring: sources -> publisher -> snapshot cache -> xDS server, the status port, and
(for ``junction up``) a real Envoy bootstrapped to talk to this control plane.

The access-log loop (:mod:`junction.als`, :mod:`junction.canary`) plugs in beside them:
Envoy's listener gets the gRPC access logger, the receiver and canary controller run in
this process (``up``: on a free port the bootstrap names; ``--no-als``: elsewhere), and the
canary states in the store are one more input of the publisher and are served on
``/canary`` (and in ``/status``).

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

from junction.als.logger import AccessLogOptions, with_access_log
from junction.als.service import AlsService, AlsSettings
from junction.canary.api import CanaryApi
from junction.canary.source import CanaryBoard, CanaryStateSource
from junction.canary.store import make_store
from junction.catalog.file import FileCatalog, FileConfig
from junction.catalog.source import CatalogSource, ConfigSource
from junction.config.model import Config
from junction.drain.api import DrainApi
from junction.drain.source import DrainingCatalog, DrainSource
from junction.drain.store import make_drain_store
from junction.envoy_admin import fetch_clusters, host_states
from junction.envoy_process import EnvoyProcess
from junction.errors import JunctionError
from junction.extproc.service import ExtProcService, ServiceSettings, SidecarSettings
from junction.status import StatusServer
from junction.tasks import cancel_all
from junction.xds.bootstrap import BootstrapOptions, bootstrap
from junction.xds.cache import SnapshotCache
from junction.xds.publisher import Publisher
from junction.xds.server import create_server
from junction.xds.translate import DEFAULT_OPTIONS

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
        if self.consul_key and not self.consul_addr:
            raise SettingsError("--consul-key needs --consul-addr")
        if not self.consul_key and not self.config_path:
            raise SettingsError("give -c CONFIG (a file) or --consul-addr with --consul-key")
        if not self.instances_path and not self.consul_addr:
            raise SettingsError(
                "give --instances FILE or --consul-addr (instances come from the catalog)"
            )
        if self.run_envoy and self.access_log and self.als is None and not self.als_port:
            raise SettingsError("--no-als needs --als-port N (where Envoy sends access logs)")

    def config_source(self) -> ConfigSource:
        if self.consul_key:
            from junction.catalog.consul import ConsulConfig

            assert self.consul_addr
            return ConsulConfig(self.consul_addr, self.consul_key, wait=self.consul_wait)
        assert self.config_path
        return FileConfig(self.config_path)

    def catalog_source(self) -> CatalogSource:
        if self.instances_path:
            return FileCatalog(self.instances_path)
        from junction.catalog.consul import ConsulCatalog

        assert self.consul_addr
        return ConsulCatalog(self.consul_addr, wait=self.consul_wait)


class ControlPlane:
    """One replica: start() binds everything, stop() undoes it in reverse order."""

    def __init__(self, settings: Settings) -> None:
        settings.check()
        self.settings = settings
        self.cache = SnapshotCache()
        self.catalog_source = settings.catalog_source()
        self.config_source = settings.config_source()
        options = (
            with_access_log(DEFAULT_OPTIONS, settings.access_log) if settings.access_log else None
        )
        self.publisher = Publisher(self.cache, self.catalog_source, options=options)
        # Drains (junction.drain): shared state in the same store as the canary's; the
        # catalog's reports pass through DrainingCatalog, which marks drained instances.
        self.drain_store = make_drain_store(
            consul_addr=settings.consul_addr, state_dir=settings.state_dir
        )
        self.draining = DrainingCatalog(self.publisher)
        self.drain_api = DrainApi(self.drain_store, self.draining, envoy_hosts=self._envoy_hosts)
        self.envoy: EnvoyProcess | None = None
        # Canary states: read by the publisher (route weights) and /canary; written by the
        # controller (in self.als) and the operator's commands, always through the store.
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
            )
            if settings.als is not None
            else None
        )
        sections = {"canary": self.canary.status, "drains": self.draining.status}
        routes = [self.canary.add_routes, self.drain_api.add_routes]
        if self.als is not None:
            sections["als"] = self.als.status
            routes.append(self.als.add_routes)
        self.status = StatusServer(
            self.publisher,
            self.cache,
            maintenance_file=settings.maintenance_file,
            envoy_admin=self._envoy_admin,
            sections=sections,
            routes=routes,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc = None
        self.xds_port: int | None = None
        self.extproc: ExtProcService | None = None

    def _config(self) -> Config | None:
        return self.publisher.config

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
        self._grpc, self.xds_port = await create_server(self.cache, f"{s.host}:{s.xds_port}")
        await self.status.start(s.host, s.http_port)
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
            "control plane up: xDS on %s:%d, status on http://%s:%d",
            s.host, self.xds_port, s.host, self.status.port,
        )  # fmt: skip
        if s.run_envoy:
            opts = BootstrapOptions(
                node_id=s.node_id or f"junction-{socket.gethostname()}",
                zone=s.zone,
                region=s.region,
                xds_host=s.host,
                xds_port=self.xds_port,
                admin_port=s.envoy_admin_port,
                delta=s.delta,
                als_port=self.als.port if self.als is not None else s.als_port,
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
