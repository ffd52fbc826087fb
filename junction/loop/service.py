"""The access-log service as one unit: receiver, pipeline, windows, sinks and (optionally) the
canary controller. ``junction up`` runs it inside the control plane's process;
``junction als serve`` runs it alone (:mod:`junction.loop.standalone`).

It reads the config through a callable (the control plane's last good config, or the
standalone process's own source) and writes canary states only through the
:class:`~junction.canary.store.StateStore`, so it holds nothing another replica needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from junction.als.envoy_drops import EnvoyDrops
from junction.als.errors import AlsError
from junction.als.metrics import AlsMetrics
from junction.als.pipeline import Pipeline
from junction.als.receiver import DEFAULT_MAX_MESSAGE_BYTES, create_server
from junction.als.sinks import JsonLinesSink, RotatingFile, SinkRunner
from junction.als.windows import Windows
from junction.canary.controller import CanaryController
from junction.canary.coordinator import FleetCoordinator, FleetSettings, make_coordinator
from junction.canary.metrics import CanaryMetrics
from junction.canary.state import CanaryState
from junction.canary.store import ConsulStateStore, StateStore
from junction.config.model import Config
from junction.tasks import cancel_all

__all__ = ["AlsService", "AlsSettings"]

log = logging.getLogger("junction.als")


@dataclass(frozen=True, kw_only=True)
class AlsSettings:
    """The receiver's flags. ``log_path``: JSON-lines sink ("-": stdout; None: none).
    ``events_path``: the canary events log. ``controller``: run the canary controller."""

    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queue_bytes: int = 64 << 20
    log_path: str | None = None
    log_max_bytes: int = 100 << 20
    log_backups: int = 5
    events_path: str | None = None
    slot_seconds: float = 1.0
    #: How far back the windows reach. A DDSketch per key and slot is ~5 KB, so 300 1-s
    #: slots cost ~1.5 MB per active (route, cluster, arm, source); a canary step longer
    #: than this is judged on its last ``horizon`` seconds.
    horizon: float = 300.0
    controller: bool = True
    tick: float = 0.5
    #: The window /als summarizes, in seconds.
    status_window: float = 60.0
    #: With Consul: how the replicas elect the one that decides and share their evidence.
    fleet: FleetSettings = field(default_factory=FleetSettings)

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024 or self.max_queue_bytes < self.max_message_bytes:
            raise AlsError("als limits: need max_message_bytes >= 1024 and max_queue_bytes >= it")
        if not 0 < self.slot_seconds <= self.horizon:
            raise AlsError("als windows: need 0 < slot seconds <= horizon")


class AlsService:
    """``await start()`` binds the receiver (returns its port); ``await stop()`` undoes it."""

    def __init__(
        self,
        settings: AlsSettings,
        *,
        store: StateStore | None = None,
        config: Callable[[], Config | None] = lambda: None,
        envoy_admin: Callable[[], str | None] = lambda: None,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        """``credentials``: the receiver's TLS (None: plaintext, for loopback)."""
        self.settings = settings
        self._credentials = credentials
        s = settings
        self.windows = Windows(slot_seconds=s.slot_seconds, horizon=s.horizon)
        sinks = []
        if s.log_path:
            sinks.append(
                JsonLinesSink(s.log_path, max_bytes=s.log_max_bytes, backups=s.log_backups)
            )
        self.sinks = SinkRunner(sinks)
        self.pipeline = Pipeline(self.windows, self.sinks, max_queue_bytes=s.max_queue_bytes)
        self.drops = EnvoyDrops(self.windows, envoy_admin)
        self.controller: CanaryController | None = None
        #: With Consul (not in file mode): only the elected replica decides, on everyone's
        #: evidence (junction.canary.coordinator).
        self.coordinator: FleetCoordinator | None = None
        self._events: RotatingFile | None = None
        if s.controller and store is not None:
            if s.events_path:
                self._events = RotatingFile(s.events_path, max_bytes=s.log_max_bytes)
            if isinstance(store, ConsulStateStore):
                self.coordinator = make_coordinator(store, s.fleet)
            self.controller = CanaryController(
                store,
                self.windows,
                config,
                tick=s.tick,
                drops=self.drops,
                events_file=self._events,
                coordinator=self.coordinator,
            )
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port: int | None = None

    async def start(self) -> int:
        s = self.settings
        self.sinks.start()
        self._server, self.port = await create_server(
            self.pipeline,
            f"{s.host}:{s.port}",
            max_message_bytes=s.max_message_bytes,
            credentials=self._credentials,
        )
        self._tasks.append(asyncio.create_task(self.pipeline.run(), name="als-pipeline"))
        if self.coordinator is not None:
            self._tasks.append(asyncio.create_task(self.coordinator.run(), name="canary-leader"))
        if self.controller is not None:
            self._tasks.append(asyncio.create_task(self.controller.run(), name="canary"))
        else:
            self._tasks.append(asyncio.create_task(self._poll_drops(), name="als-drops"))
        return self.port

    async def _poll_drops(self) -> None:
        while True:
            await self.drops.poll()
            await asyncio.sleep(self.settings.tick)

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        if self.coordinator is not None:
            await self.coordinator.close()  # the next leader need not wait out the TTL
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None
        # Records already queued are worth keeping: process them before closing the sinks.
        while self.pipeline.process_one():
            pass
        await asyncio.to_thread(self.sinks.close)
        if self._events is not None:
            self._events.close()

    def status(self) -> dict[str, Any]:
        """The receiver's counters, the sinks, and the last minute's windows (``GET /als``)."""
        return {
            "port": self.port,
            "receiver": self.pipeline.status(),
            "envoy": self.drops.status(),
            "controller": self.controller.status() if self.controller is not None else None,
            "window_seconds": self.settings.status_window,
            "windows": self.windows.summary(self.settings.status_window),
        }

    def register_metrics(
        self, registry: CollectorRegistry, states: Callable[[], Mapping[str, CanaryState]]
    ) -> None:
        """Register the receiver's and the canary's collectors (``states``: the stored canary
        states this process watches)."""
        pipeline, controller = self.pipeline, self.controller
        AlsMetrics(registry, self.status, lambda: pipeline.decisions.by_cluster)
        CanaryMetrics(
            registry,
            states=states,
            decisions=(lambda: controller.decisions) if controller is not None else None,
        )

    def add_routes(self, app: web.Application) -> None:
        async def als(request: web.Request) -> web.Response:
            return web.Response(
                body=orjson.dumps(self.status(), option=orjson.OPT_INDENT_2),
                content_type="application/json",
            )

        app.router.add_get("/als", als)
