"""One worker process of the decision service: both transports on uvloop, one table.

Workers are started by :class:`junction.extproc.service.ExtProcService` (multiprocessing,
``spawn``). Each binds the shared HTTP and gRPC ports with SO_REUSEPORT, so the kernel
spreads Envoy's connections across the workers. The supervisor sends :class:`TableInputs`
(a validated config and the clusters without a healthy host) over a pipe; the worker
compiles its own :class:`~junction.extproc.table.DecisionTable`, swaps it in, and answers
``("ready", index, version)``. Counters go to the worker's row of shared memory a few
times a second. SIGTERM stops the worker gracefully; it also dies with its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection

from junction.config.model import Config
from junction.extproc.counters import AnswerTimes, Counters, SharedCounters
from junction.extproc.grpc_adapter import GrpcProcessor, serve_grpc
from junction.extproc.http_adapter import HttpLimits, HttpProcessor, serve_http
from junction.extproc.table import DecisionTable

__all__ = ["TableInputs", "WorkerOptions", "worker_main"]

log = logging.getLogger("junction.extproc")

#: How often a worker copies its counters to shared memory.
PUBLISH_INTERVAL = 0.2


@dataclass(frozen=True)
class TableInputs:
    """What a table is compiled from (pickled to every worker on each change)."""

    config: Config
    version: str
    unavailable: frozenset[str]


@dataclass(frozen=True)
class WorkerOptions:
    """Where a worker listens and how it bounds clients. A port of None: not served."""

    host: str
    http_port: int | None
    grpc_port: int | None
    limits: HttpLimits
    log_level: str = "warning"
    answer_times: bool = True


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_main(
    index: int, options: WorkerOptions, conn: Connection, shared: SharedCounters
) -> None:
    """Process entry point (runs in the spawned child)."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the supervisor decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=options.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
        stream=sys.stderr,
    )
    import uvloop

    uvloop.run(_run(index, options, conn, shared))


async def _run(
    index: int, options: WorkerOptions, conn: Connection, shared: SharedCounters
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    counters = Counters()
    times = AnswerTimes() if options.answer_times else None
    http = HttpProcessor(counters, times=times)
    grpc_ = GrpcProcessor(counters, times=times)
    http_server = grpc_server = None
    if options.http_port is not None:
        http_server, _ = await serve_http(
            http, options.host, options.http_port, limits=options.limits, reuse_port=True
        )
    if options.grpc_port is not None:
        grpc_server, _ = await serve_grpc(grpc_, options.host, options.grpc_port, reuse_port=True)

    def on_message() -> None:
        try:
            while conn.poll():
                inputs: TableInputs = conn.recv()
                table = DecisionTable(inputs.config, inputs.unavailable, version=inputs.version)
                http.set_table(table)
                grpc_.set_table(table)
                conn.send(("ready", index, inputs.version))
        except (EOFError, OSError):
            stop.set()  # the supervisor is gone

    loop.add_reader(conn.fileno(), on_message)

    async def publish() -> None:
        while True:
            shared.publish(index, counters, times)
            await asyncio.sleep(PUBLISH_INTERVAL)

    publisher = asyncio.create_task(publish())
    conn.send(("started", index, ""))
    try:
        await stop.wait()
    finally:
        loop.remove_reader(conn.fileno())
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        shared.publish(index, counters, times)
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        if http_server is not None:
            await http_server.close()
