"""The xDS gRPC server (grpc.aio): thin adapters around the sans-IO protocol core.

Serves ``envoy.service.discovery.v3.AggregatedDiscoveryService`` (StreamAggregatedResources,
DeltaAggregatedResources) and the per-type CDS/EDS/LDS/RDS services (Stream*/Delta*). Each
RPC is one :class:`~junction.xds.protocol_sotw.SotwStream` or
:class:`~junction.xds.protocol_delta.DeltaStream`; this module only moves messages
between gRPC and the core, wakes the core when the :class:`SnapshotCache` changes, logs
one line per connect/disconnect/ACK/NACK (logger ``junction.xds``), and maps protocol
errors to gRPC status codes (only here): a request that breaks the protocol (no node on
the first message, an unknown type URL, bytes that are not a request) ends its stream
with INVALID_ARGUMENT and a message naming what is wrong; the server keeps running.

Per-type streams of one node share that node's state (by node id, in the cache), so
make-before-break gating holds across the separate CDS/EDS/LDS/RDS streams of one Envoy;
an ACK on one stream wakes the node's other streams.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError, Message

from junction.xds.cache import SnapshotCache, Watch
from junction.xds.errors import XdsError
from junction.xds.limits import LimitExceeded, XdsLimits, check_request, check_subscriptions
from junction.xds.protocol import (
    Ack,
    Connected,
    Disconnected,
    Event,
    MalformedRequest,
    Nack,
    Output,
    Sent,
    StaleNonce,
    StreamCore,
    StreamKind,
    Subscribed,
    Superseded,
    Unsubscribed,
    XdsProtocolError,
)
from junction.xds.protocol_delta import DeltaStream
from junction.xds.protocol_sotw import SotwStream
from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, short_type
from junction.xds.tls import Impersonation, TlsFiles, check_identity, peer_identities

__all__ = ["OnEvents", "OnSend", "XdsServer", "XdsServerError", "XdsServicer", "create_server"]

log = logging.getLogger("junction.xds")

#: (gRPC service, SotW method, delta method, type URL; None = ADS)
SERVICES: tuple[tuple[str, str, str, str | None], ...] = (
    (
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        "StreamAggregatedResources",
        "DeltaAggregatedResources",
        None,
    ),
    (
        "envoy.service.cluster.v3.ClusterDiscoveryService",
        "StreamClusters",
        "DeltaClusters",
        CLUSTER,
    ),
    (
        "envoy.service.endpoint.v3.EndpointDiscoveryService",
        "StreamEndpoints",
        "DeltaEndpoints",
        ENDPOINT,
    ),
    (
        "envoy.service.listener.v3.ListenerDiscoveryService",
        "StreamListeners",
        "DeltaListeners",
        LISTENER,
    ),
    ("envoy.service.route.v3.RouteDiscoveryService", "StreamRoutes", "DeltaRoutes", ROUTE),
)


class XdsServerError(XdsError):
    """The xDS server could not start (e.g. the address cannot be bound)."""


@dataclass(frozen=True)
class _Garbage:
    """Stands in for a request whose bytes did not decode (or that was too large)."""

    error: str
    too_large: bool = False


class _Tick:
    """Wake-up marker: the snapshot or the node's state changed."""


_TICK = _Tick()
_EOF = object()
_STOP = object()


def _lenient(message: type[Message], max_bytes: int) -> Callable[[bytes], object]:
    """A deserializer that turns undecodable bytes into a clear protocol error later,
    instead of grpc's generic "Exception deserializing request!"; and a request over
    ``max_bytes`` into a named, counted refusal (gRPC's own cap, above it, is the backstop
    that nothing can count)."""

    def parse(data: bytes) -> object:
        if len(data) > max_bytes:
            return _Garbage(
                f"request is {len(data):,} bytes; the limit is {max_bytes:,}", too_large=True
            )
        try:
            return message.FromString(data)
        except (DecodeError, ValueError) as exc:
            return _Garbage(f"request is not a valid {message.DESCRIPTOR.full_name}: {exc}")

    return parse


#: Told each response as grpc serializes it for the wire, and its size in bytes.
OnSend = Callable[[Message, int], None]
#: Told every protocol event of every stream: (node id or "?", stream kind, stream id,
#: events). Metrics count with it; it must be cheap and must not raise.
OnEvents = Callable[[str, StreamKind, int, Sequence[Event]], None]


class XdsServicer:
    """The handlers of every xDS method, serving from one :class:`SnapshotCache`.

    ``on_send``, when given, is called with every response and the length of its
    serialization, from grpc's serializer (so the bytes are counted without serializing
    twice); it must be cheap and must not raise. Without it, nothing is wrapped.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        on_send: OnSend | None = None,
        on_events: OnEvents | None = None,
        require_node_identity: bool = False,
        limits: XdsLimits | None = None,
    ) -> None:
        """``require_node_identity``: a stream's node id must be one of its client
        certificate's subject alternative names (mTLS), else PERMISSION_DENIED.
        ``limits``: what one client may cost (:class:`~junction.xds.limits.XdsLimits`)."""
        self.limits = limits or XdsLimits()
        self.cache = cache
        self._on_send = on_send
        self._on_events = on_events
        self._require_identity = require_node_identity
        #: Streams refused, by reason (for /status): what hostile clients tried.
        self.refused: collections.Counter[str] = collections.Counter()
        self._aborts: set[asyncio.Task[None]] = set()
        self._queues: set[asyncio.Queue[object]] = set()

    @property
    def open_streams(self) -> int:
        """xDS streams being served now (bounded by ``limits.max_streams``)."""
        return len(self._queues)

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        handlers = []
        for service, sotw, delta, type_url in SERVICES:
            methods = {
                sotw: grpc.stream_stream_rpc_method_handler(
                    self._behaviour(False, type_url),
                    request_deserializer=_lenient(
                        discovery_pb2.DiscoveryRequest, self.limits.max_request_bytes
                    ),
                    response_serializer=self._serializer(discovery_pb2.DiscoveryResponse),
                ),
                delta: grpc.stream_stream_rpc_method_handler(
                    self._behaviour(True, type_url),
                    request_deserializer=_lenient(
                        discovery_pb2.DeltaDiscoveryRequest, self.limits.max_request_bytes
                    ),
                    response_serializer=self._serializer(discovery_pb2.DeltaDiscoveryResponse),
                ),
            }
            handlers.append(grpc.method_handlers_generic_handler(service, methods))
        return handlers

    def _serializer(self, message: type[Message]) -> Callable[[Message], bytes]:
        serialize: Callable[[Message], bytes] = message.SerializeToString
        on_send = self._on_send
        if on_send is None:
            return serialize

        def counted(response: Message) -> bytes:
            data = serialize(response)
            on_send(response, len(data))
            return data

        return counted

    def close_streams(self) -> None:
        """End every open stream (its RPC returns OK; Envoy reconnects elsewhere/later)."""
        for queue in list(self._queues):
            queue.put_nowait(_STOP)

    def _behaviour(
        self, delta: bool, type_url: str | None
    ) -> Callable[[AsyncIterator[object], grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        # grpc.aio recognizes streaming handlers with inspect.isasyncgenfunction, which
        # sees through functools.partial (a plain function returning a generator would not do).
        return functools.partial(self._serve, delta, type_url)

    async def _serve(
        self,
        delta: bool,
        type_url: str | None,
        requests: AsyncIterator[object],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Any]:
        """One xDS RPC: requests and wake-ups in, the core's responses out.

        Longer than 60 lines on purpose: the stream's queue, reader task, cache watch and
        core are created, used and released in one try/finally, which splitting would
        spread over functions that each hold half of that lifetime.
        """
        core: StreamCore[Any, Any] = (
            DeltaStream(self.cache.registry, type_url)
            if delta
            else SotwStream(self.cache.registry, type_url)
        )
        limits = self.limits
        if len(self._queues) >= limits.max_streams:
            self.refused["too_many_streams"] += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(self._queues):,} xDS streams are open; the limit is {limits.max_streams:,}",
            )
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._queues.add(queue)  # at once, before any await: the count above stays exact
        # Requests read ahead are bounded: past it the reader waits, and HTTP/2 flow
        # control pushes back on the client. (Wake-ups are not requests: at most one.)
        slots = asyncio.Semaphore(limits.max_pending_requests)
        ticked = False

        def tick() -> None:
            nonlocal ticked
            if not ticked:  # one pending wake-up is enough: the core reads the newest state
                ticked = True
                queue.put_nowait(_TICK)

        async def read() -> None:
            try:
                async for request in requests:
                    await slots.acquire()
                    queue.put_nowait(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client went away mid-read
                log.debug("stream %d: read ended: %r", core.id, exc)
            queue.put_nowait(_EOF)

        reader = asyncio.create_task(read())
        watch: Watch | None = None
        peer = context.peer()
        identities = (
            peer_identities(context.auth_context()) if self._require_identity else None
        )
        try:
            # Headers first, on their own: a later abort (a client that never reads, see
            # _stalled) then reaches the client even while the first response is stuck.
            await context.send_initial_metadata(())
            while True:
                item = await queue.get()
                if item is _EOF or item is _STOP:
                    return
                if item is _TICK:
                    ticked = False
                    out = core.update(self.cache.snapshot)
                elif isinstance(item, _Garbage):
                    if item.too_large:
                        raise LimitExceeded("request_too_large", item.error)
                    raise MalformedRequest(item.error)
                elif isinstance(item, core.request_type):
                    slots.release()
                    if identities is not None:
                        check_identity(item, identities)
                    if check_request(item, limits):
                        self.refused["error_detail_truncated"] += 1
                    out = core.receive(item, self.cache.snapshot)
                    check_subscriptions(core, limits)
                else:  # pragma: no cover - the deserializer decides the type
                    raise MalformedRequest(f"unexpected request type {type(item).__name__}")
                if watch is None and core.node_id is not None:
                    watch = self.cache.watch(core.node_id, tick)
                self._after(core, out, watch, peer)
                for response in out.responses:
                    # A client that never reads fills its flow-control window and this
                    # send waits; past send_timeout the stream is ended from outside.
                    stalled = asyncio.get_running_loop().call_later(
                        limits.send_timeout, self._stalled, context, core
                    )
                    try:
                        yield response
                    finally:
                        stalled.cancel()
        except LimitExceeded as exc:
            self.refused[exc.reason] += 1
            log.warning("node %s (%s): stream refused: %s", core.node_id or "?", peer, exc)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Impersonation as exc:
            self.refused["impersonation"] += 1
            log.warning("stream %d (%s): refused: %s", core.id, peer, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except XdsProtocolError as exc:
            self.refused[_REASONS.get(type(exc).__name__, "protocol_error")] += 1
            node = core.node_id or "?"
            log.warning("node %s (%s, %s): stream rejected: %s", node, core.kind, peer, exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:  # a bug: end this stream, keep the server
            log.exception("node %s (%s): internal error", core.node_id or "?", core.kind)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the xDS server")
        finally:
            self._queues.discard(queue)
            reader.cancel()
            if watch is not None:
                watch.close()
            self._after(core, core.close(), None, peer)

    def _stalled(self, context: grpc.aio.ServicerContext[Any, Any], core: Any) -> None:
        """A response waited ``send_timeout`` for the client to read: end the stream (an
        abort from another task reaches the client once it reads what was buffered)."""
        self.refused["not_reading"] += 1
        message = (
            f"responses not read for {self.limits.send_timeout:g} s "
            "(the client's flow-control window stayed full); stream ended"
        )
        log.warning("node %s: %s", core.node_id or "?", message)

        async def abort() -> None:
            with contextlib.suppress(Exception):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        self._aborts.add(task := asyncio.get_running_loop().create_task(abort()))
        task.add_done_callback(self._aborts.discard)

    def _after(
        self, core: StreamCore[Any, Any], out: Output[Any], watch: Watch | None, peer: str
    ) -> None:
        """Log the events; wake the node's other streams if the core says its state changed."""
        node = core.node_id or "?"
        if self._on_events is not None and out.events:
            self._on_events(node, core.kind, core.id, out.events)
        for event in out.events:
            _log_event(node, core, event, peer)
        if out.node_changed and core.node_id is not None:
            self.cache.notify_node(core.node_id, watch)


#: /status counter keys of the protocol errors (by exception class name).
_REASONS = {
    "UnknownTypeUrl": "unknown_type_url",
    "MalformedRequest": "malformed_request",
    "MissingNode": "missing_node",
    "NodeChanged": "node_changed",
}


def _log_event(node: str, core: StreamCore[Any, Any], event: Event, peer: str) -> None:
    match event:
        case Connected(kind=kind):
            log.info("node %s connected (%s, stream %d, %s)", node, kind, core.id, peer)
        case Disconnected(kind=kind):
            log.info("node %s disconnected (%s, stream %d)", node, kind, core.id)
        case Ack(type_url=t, version=version):
            log.info("node %s ACK %s version %s", node, short_type(t), version)
        case Nack() as nack:
            log.warning(
                "node %s NACK %s version %s (config %s %s), staying on %s: %s",
                node,
                short_type(nack.type_url),
                nack.version,
                nack.origin or "?",
                nack.config_version or "?",
                nack.kept_version or "nothing",
                nack.error_detail,
            )
        case StaleNonce(type_url=t, nonce=nonce, latest=latest):
            log.debug(
                "node %s stale nonce %s for %s (latest %s)", node, nonce, short_type(t), latest
            )
        case Superseded(type_url=t):
            log.debug("node %s: stream %d superseded for %s", node, core.id, short_type(t))
        case Sent() as sent:
            log.debug(
                "node %s sent %s version %s nonce %s (%d resources, %d removed%s)",
                node,
                short_type(sent.type_url),
                sent.version,
                sent.nonce,
                sent.resources,
                sent.removed,
                ", restore" if sent.restore else "",
            )
        case Subscribed() | Unsubscribed():
            log.debug("node %s %s", node, event)


class XdsServer(grpc.aio.Server):  # type: ignore[misc]
    """A ``grpc.aio.Server`` whose :meth:`stop` first ends the xDS streams, so a graceful
    stop does not wait out ``grace`` on streams that never end by themselves."""

    def __init__(self, server: grpc.aio.Server, servicer: XdsServicer) -> None:
        self._server = server
        self.servicer = servicer

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_insecure_port(self, address: str) -> int:
        port: int = self._server.add_insecure_port(address)
        return port

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        port: int = self._server.add_secure_port(address, server_credentials)
        return port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        self.servicer.close_streams()
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        done: bool = await self._server.wait_for_termination(timeout)
        return done


async def create_server(
    cache: SnapshotCache,
    address: str = "127.0.0.1:0",
    *,
    on_send: OnSend | None = None,
    on_events: OnEvents | None = None,
    tls: TlsFiles | None = None,
    require_node_identity: bool = False,
    limits: XdsLimits | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start an xDS server for ``cache`` on ``address``; returns it and the bound port.

    Stop it with ``await server.stop(grace)``: open streams end at once (Envoy reconnects),
    in-flight sends get ``grace`` seconds. ``on_send``, ``on_events``: see
    :class:`XdsServicer`. ``tls``: mutual TLS, client certificates required (None:
    plaintext, for loopback); ``require_node_identity``: see :class:`XdsServicer` (needs
    ``tls``).
    """
    if require_node_identity and tls is None:
        raise XdsServerError("--require-node-identity needs TLS (--tls-cert/--tls-key/--tls-ca)")
    servicer = XdsServicer(
        cache,
        on_send=on_send,
        on_events=on_events,
        require_node_identity=require_node_identity,
        limits=limits,
    )
    options = servicer.limits.grpc_options()
    server = XdsServer(grpc.aio.server(options=options), servicer)
    server.add_generic_rpc_handlers(tuple(servicer.generic_handlers()))
    try:
        port = (
            server.add_insecure_port(address)
            if tls is None
            else server.add_secure_port(address, tls.server_credentials())
        )
    except RuntimeError as exc:
        raise XdsServerError(f"cannot listen for xDS on {address}: {exc}") from exc
    if port == 0:
        raise XdsServerError(f"cannot listen for xDS on {address}")
    await server.start()
    log.info("xDS server listening on %s (port %d)", address, port)
    return server, port
