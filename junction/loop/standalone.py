"""``junction als serve``: the access-log receiver and canary controller as their own process.

For Envoys whose control plane runs elsewhere, for a central receiver several Envoys log
to, or to keep ALS work off the control plane's CPU. It reads the same config (file or
Consul KV) as the control plane, for the canary policies, and the same state store; it
serves ``/als``, ``/canary`` and ``/healthz`` on its own HTTP port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry

from junction.admin import admin_token, token_middleware
from junction.canary.api import CanaryApi
from junction.canary.source import CanaryBoard, CanaryStateSource
from junction.canary.store import StateStore
from junction.catalog.model import Instance
from junction.catalog.source import ConfigSource
from junction.config.errors import ConfigError
from junction.config.load import load_config
from junction.config.model import Config
from junction.loop.service import AlsService, AlsSettings
from junction.metrics import add_metrics_route
from junction.tasks import cancel_all

__all__ = ["LastGoodConfig", "run_als"]

log = logging.getLogger("junction.als")


class LastGoodConfig:
    """A :class:`~junction.catalog.source.SourceSink` keeping the last valid config (the
    policies); a bad document is logged and ignored, as the publisher does."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.error: str | None = None

    def config_text(self, origin: str, text: str) -> None:
        try:
            self.config = load_config(text, origin)
            self.error = None
        except ConfigError as exc:
            self.error = exc.render()
            log.error("config rejected, the last good one stays:\n%s", self.error)

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        pass  # the receiver needs no instances

    def source_error(self, origin: str, message: str) -> None:
        if message != self.error:
            log.warning("config source %s: %s", origin, message)
        self.error = message

    def source_ok(self, origin: str) -> None:
        self.error = None


async def run_als(
    settings: AlsSettings,
    config_source: ConfigSource,
    store: StateStore,
    *,
    http_host: str,
    http_port: int,
    envoy_admin: str | None = None,
) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code."""
    holder = LastGoodConfig()
    board = CanaryBoard()
    service = AlsService(
        settings, store=store, config=lambda: holder.config, envoy_admin=lambda: envoy_admin
    )
    api = CanaryApi(store, board, lambda: holder.config)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    app = web.Application(middlewares=[token_middleware(admin_token())])
    app.router.add_get("/healthz", healthz)
    service.add_routes(app)
    api.add_routes(app)
    registry = CollectorRegistry()
    service.register_metrics(registry, lambda: board.states)
    add_metrics_route(app, registry)
    runner = web.AppRunner(app, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(config_source.run(holder)),
        asyncio.create_task(CanaryStateSource(store).run(board)),
    ]
    try:
        port = await service.start()
        await runner.setup()
        await web.TCPSite(runner, http_host, http_port).start()
        log.info(
            "ALS receiver on %s:%d, status on http://%s:%d (/als, /canary), states in %s",
            settings.host, port, http_host, http_port, store.origin,
        )  # fmt: skip
        await stop.wait()
        log.info("signal received; stopping")
        return 0
    finally:
        await cancel_all(tasks)
        await runner.cleanup()
        await service.stop()
        await store.close()
