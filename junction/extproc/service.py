"""The decision service: a supervisor, N worker processes, and the same sources as the
control plane.

The supervisor watches the config (file or Consul KV) and the health of every version
cluster (instances file or the Consul catalog) with the control plane's own sources, so
it needs nothing from a control-plane replica and holds nothing another replica needs.
On every change it validates the config (the last good one keeps serving), works out
which version clusters have no healthy host, and sends both to the workers, which
compile and swap their tables. It restarts a worker that dies, and serves
``GET /stats`` (counters summed over workers, and each worker's table version) and
``GET /healthz`` (200 once every worker runs the latest table) on its stats port.

Canary weights: with a ``canary_store`` the supervisor also watches the canary states the
ALS controller writes (:class:`junction.canary.source.CanaryStateSource`) and sends the
workers ``apply_canary(config, states)``, so the sticky canary buckets follow the ramp
exactly as Envoy's route weights do.

Ports: the supervisor reserves the HTTP and gRPC ports itself (a bound, never-listening
SO_REUSEPORT socket), so port 0 can pick one free port that every worker then shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from junction.canary.desired import DesiredState
from junction.canary.source import CanaryStateSource
from junction.canary.state import CanaryState
from junction.canary.store import StateStore
from junction.catalog.model import Health, Instance
from junction.catalog.source import CatalogSource, ConfigSource
from junction.config.model import Config
from junction.extproc.counters import COUNTER_NAMES, ROW_NAMES, SharedCounters, answer_json
from junction.extproc.errors import ExtProcError
from junction.extproc.http_adapter import HttpLimits
from junction.extproc.metrics import ExtprocMetrics
from junction.extproc.plan import uses_decisions
from junction.extproc.table import DecisionTable
from junction.extproc.worker import TableInputs, WorkerOptions, worker_main
from junction.metrics import add_metrics_route
from junction.tasks import cancel_all

__all__ = [
    "ExtProcError",
    "ExtProcService",
    "ServiceSettings",
    "SidecarSettings",
    "run_until_signalled",
]

log = logging.getLogger("junction.extproc")

_USABLE = (Health.HEALTHY, Health.DEGRADED)


@dataclass(frozen=True)
class ServiceSettings:
    """What ``junction extproc serve`` runs with. A port of None turns that transport off."""

    config_source: ConfigSource
    catalog_source: CatalogSource
    host: str = "127.0.0.1"
    http_port: int | None = 9003
    grpc_port: int | None = 9002
    stats_port: int = 9004
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    limits: HttpLimits = field(default_factory=HttpLimits)
    log_level: str = "warning"
    #: Start the workers only once a config needs decisions (``junction up`` runs the
    #: service beside every control plane; most configs in tests never use it).
    lazy: bool = False
    #: Where the ALS controller keeps canary states (None: the config's weights only).
    canary_store: StateStore | None = None
    #: Time every answer for the junction_extproc_answer_seconds histogram (off only to
    #: measure what the timing costs: loadtest/extproc/bench.py --metrics-cost).
    answer_times: bool = True


@dataclass(frozen=True)
class SidecarSettings:
    """How ``junction up`` runs the decision service beside its Envoy (ports 0: free ones;
    the bootstrap then names the ports actually bound)."""

    workers: int
    http_port: int = 0
    grpc_port: int = 0
    stats_port: int = 0


class _Inputs:
    """The source sink: the desired state (last good config, with the canary applied: the
    same reducer as the xDS publisher's) and the health of version clusters."""

    def __init__(self, catalog: CatalogSource, changed: Any) -> None:
        self._catalog = catalog
        self._changed = changed
        self.desired = DesiredState()
        self.usable: dict[str, bool] = {}
        self._failing: set[str] = set()

    @property
    def config(self) -> Config | None:
        return self.desired.config

    @property
    def error(self) -> str | None:
        error = self.desired.error
        return None if error is None else str(error["message"])

    def config_text(self, origin: str, text: str) -> None:
        offer = self.desired.offer(origin, text)
        if offer.outcome == "rejected":
            log.error("config rejected; the last good one keeps serving:\n%s", offer.message)
            return
        config = self.desired.config
        if offer.outcome == "unchanged" or config is None:
            return
        clusters = {c for sv in config.versions.values() for c in sv.clusters.values()}
        self._catalog.watch(frozenset(clusters))
        self._changed()

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        usable = any(i.health in _USABLE for i in instances)
        if self.usable.get(service) != usable:
            self.usable[service] = usable
            self._changed()

    def canary_states(self, origin: str, states: Mapping[str, CanaryState]) -> None:
        self.desired.set_canary(states)
        self._changed()

    def source_error(self, origin: str, message: str) -> None:
        self._failing.add(origin)
        log.warning("%s: %s", origin, message)

    def source_ok(self, origin: str) -> None:
        if origin in self._failing:
            self._failing.discard(origin)
            log.info("%s: readable again", origin)

    def table_inputs(self) -> TableInputs | None:
        good, desired = self.desired.good, self.desired.desired()
        if good is None or desired is None:
            return None
        unavailable = frozenset(c for c, ok in self.usable.items() if not ok)
        health = ",".join(sorted(unavailable))
        weights = self.desired.canary_weights()
        canary = ",".join(f"{k}={v}" for k, v in sorted(weights.items()))
        return TableInputs(desired, f"{good.version}/{health}/{canary}", unavailable)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    version: str = ""
    restarts: int = 0


class ExtProcService:
    """The supervisor. ``await start()`` binds and spawns; ``await stop()`` undoes it."""

    def __init__(self, settings: ServiceSettings) -> None:
        if settings.workers < 1:
            raise ExtProcError(f"workers must be at least 1, not {settings.workers}")
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self.shared = SharedCounters(settings.workers)
        self._retired = dict.fromkeys(ROW_NAMES, 0)
        self._inputs = _Inputs(settings.catalog_source, self._schedule_push)
        self._latest: TableInputs | None = None
        self._workers: list[_Worker] = []
        self._reserved: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._push_pending = False
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.stats_port: int | None = None

    # ---- life cycle

    async def start(self) -> None:
        s = self.settings
        self.http_port = self._reserve(s.http_port) if s.http_port is not None else None
        self.grpc_port = self._reserve(s.grpc_port) if s.grpc_port is not None else None
        self._options = WorkerOptions(
            s.host, self.http_port, self.grpc_port, s.limits, s.log_level, s.answer_times
        )
        if not s.lazy:
            self._spawn_all()
        loop = asyncio.get_running_loop()
        for coro in (
            s.catalog_source.run(self._inputs),
            s.config_source.run(self._inputs),
            self._watch_workers(),
        ):
            self._tasks.append(loop.create_task(coro))
        if s.canary_store is not None:
            source = CanaryStateSource(s.canary_store)
            self._tasks.append(loop.create_task(source.run(self._inputs)))
        await self._serve_stats()
        log.info(
            "decision service up: %d workers%s, http port %s, grpc port %s, "
            "stats on http://%s:%d/stats",
            s.workers, " (started once the config needs decisions)" if s.lazy else "",
            self.http_port, self.grpc_port, s.host, self.stats_port,
        )  # fmt: skip

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        for w in self._workers:
            self._forget(w)
            if w.process.is_alive():
                w.process.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        for w in self._workers:
            while w.process.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if w.process.is_alive():
                w.process.kill()
            w.process.join(1.0)
            w.conn.close()
        self._workers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()

    def _reserve(self, port: int) -> int:
        """Bind (never listen) a SO_REUSEPORT socket on ``port``: the workers share it."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from before
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.settings.host, port))
        except OSError as exc:
            sock.close()
            raise ExtProcError(f"cannot bind {self.settings.host}:{port}: {exc.strerror}") from None
        self._reserved.append(sock)
        return int(sock.getsockname()[1])

    # ---- workers

    def _spawn_all(self) -> None:
        for index in range(self.settings.workers):
            self._workers.append(self._spawn(index))

    def _spawn(self, index: int, restarts: int = 0) -> _Worker:
        ours, theirs = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(index, self._options, theirs, self.shared),
            name=f"junction-extproc-{index}",
            daemon=True,
        )
        process.start()
        theirs.close()
        worker = _Worker(index, process, ours, restarts=restarts)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_worker_message, worker)
        if self._latest is not None:
            ours.send(self._latest)
        return worker

    def _forget(self, worker: _Worker) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())

    def _on_worker_message(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                kind, _, version = worker.conn.recv()
                if kind == "ready":
                    worker.version = version
        except (EOFError, OSError):
            self._forget(worker)  # it died; _watch_workers restarts it

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            for i, w in enumerate(self._workers):
                if w.process.is_alive():
                    continue
                log.error("worker %d (pid %s) exited with %s; restarting", i, w.process.pid,
                          w.process.exitcode)  # fmt: skip
                self._forget(w)
                w.conn.close()
                # Keep its counts: the new worker's row starts from zero.
                for name, value in self.shared.row(i).items():
                    self._retired[name] += value
                self.shared.clear(i)
                if w.restarts >= 3:
                    await asyncio.sleep(min(5.0, 0.2 * 2**w.restarts))  # a crash loop
                self._workers[i] = self._spawn(i, w.restarts + 1)

    def _schedule_push(self) -> None:
        # Coalesce: a config change and the health reports it triggers make one push.
        if not self._push_pending:
            self._push_pending = True
            asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        self._push_pending = False
        inputs = self._inputs.table_inputs()
        if inputs is None or inputs == self._latest:
            return
        # Compile once here too: a missing HMAC key is said once, not once per worker.
        for problem in DecisionTable(inputs.config, inputs.unavailable).problems:
            log.error("%s", problem)
        self._latest = inputs
        log.info("decision table %s (clusters without a healthy host: %s)", inputs.version,
                 ", ".join(sorted(inputs.unavailable)) or "none")  # fmt: skip
        if not self._workers:
            if uses_decisions(inputs.config):
                self._spawn_all()  # lazy, and now needed; each worker gets _latest at spawn
            return
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(inputs)

    # ---- stats

    def status(self) -> dict[str, Any]:
        """Counters summed over workers (including ones that were restarted), per worker
        its pid and table version, and whether every worker runs the latest table."""
        totals = dict(self._retired)
        for name, value in self.shared.total().items():
            totals[name] += value
        latest = self._latest.version if self._latest else ""
        workers = [
            {
                "index": w.index,
                "pid": w.process.pid,
                "alive": w.process.is_alive(),
                "table": w.version,
                "restarts": w.restarts,
                "requests": self.shared.row(w.index)["requests"],
            }
            for w in self._workers
        ]
        ready = bool(latest) and all(w["alive"] and w["table"] == latest for w in workers)
        if self.settings.lazy and not workers and self._latest is not None:
            ready = True  # nothing to decide yet, so nothing to wait for
        return {
            "ready": ready,
            "table": latest,
            "config_error": self._inputs.error,
            "workers": workers,
            "counters": {name: totals[name] for name in COUNTER_NAMES},
            "answer_seconds": answer_json(totals),
        }

    async def _serve_stats(self) -> None:
        async def stats(request: web.Request) -> web.Response:
            return web.Response(
                body=orjson.dumps(self.status(), option=orjson.OPT_INDENT_2),
                content_type="application/json",
            )

        async def healthz(request: web.Request) -> web.Response:
            if self.status()["ready"]:
                return web.Response(text="OK\n")
            return web.Response(status=503, text="workers are not all on the latest table\n")

        app = web.Application()
        app.router.add_get("/stats", stats)
        app.router.add_get("/healthz", healthz)
        registry = CollectorRegistry()
        ExtprocMetrics(registry, self.status)
        add_metrics_route(app, registry)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.stats_port)
        await site.start()
        server = site._server
        assert server is not None
        self.stats_port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


async def run_until_signalled(settings: ServiceSettings) -> int:
    """Run the decision service until SIGINT/SIGTERM; stop every worker."""
    service = ExtProcService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
        await stop.wait()
        log.info("signal received; stopping")
        return 0
    finally:
        await service.stop()
