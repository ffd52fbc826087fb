"""The sans-IO xDS protocol core: what both variants share.

No grpc, no asyncio. A stream core (:class:`~junction.xds.protocol_sotw.SotwStream`,
:class:`~junction.xds.protocol_delta.DeltaStream`) takes request messages and the newest
:class:`~junction.xds.resources.Snapshot` and returns an :class:`Output`: the responses to
send, in order, and typed events (:class:`Ack`, :class:`Nack`, :class:`StaleNonce`, ...).
The gRPC adapter (``junction.xds.server``) only moves messages and logs events.

State is kept per node, not per stream (:class:`NodeState`, in a :class:`NodeRegistry`):
what the node ACKed per type URL, what was sent since, the last NACK. Per-type (non-ADS)
streams of one node therefore share it, so make-before-break gating
(:mod:`junction.xds.view`) works across the separate CDS/EDS/LDS/RDS streams of one Envoy.
One node id is assumed to be one Envoy: the newest stream to request a type owns that type
(:class:`Superseded` is reported to the older one), which is what a reconnect looks like.

Every response of a type waits for the ACK/NACK of the previous one (one in flight per
type): ACK bookkeeping is then exact, and snapshots that arrive meanwhile coalesce: the
next response is computed from the newest snapshot, never from a queue of old ones.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

from envoy.config.core.v3 import base_pb2
from google.protobuf.message import Message

from junction.xds.errors import XdsError
from junction.xds.events import (
    Ack,
    Connected,
    Disconnected,
    Event,
    Nack,
    Sent,
    StaleNonce,
    StreamKind,
    Subscribed,
    Superseded,
    Unsubscribed,
)
from junction.xds.protocol_state import (
    NackInfo,
    NodeRegistry,
    NodeState,
    NodeStatus,
    TypeStatus,
    nonce_prefix,
    selection,
)
from junction.xds.records import Inflight
from junction.xds.resources import (
    ADS_ORDER,
    CLUSTER,
    ENDPOINT,
    TYPE_URLS,
    Resource,
    Snapshot,
    short_type,
)
from junction.xds.type_state import StreamTypeState, TypeState
from junction.xds.view import View, compute_view

__all__ = [
    "Ack",
    "Connected",
    "Disconnected",
    "Event",
    "MalformedRequest",
    "MissingNode",
    "Nack",
    "NackInfo",
    "NodeChanged",
    "NodeRegistry",
    "NodeState",
    "NodeStatus",
    "Output",
    "Sent",
    "StaleNonce",
    "StreamCore",
    "StreamKind",
    "Subscribed",
    "Superseded",
    "TypeStatus",
    "UnknownTypeUrl",
    "Unsubscribed",
    "XdsProtocolError",
]


# ---- errors -----------------------------------------------------------------------------


class XdsProtocolError(XdsError):
    """The client broke the xDS protocol; the stream must end. Always the remote's fault."""


class MissingNode(XdsProtocolError):
    """The first request of a stream carried no ``node.id``."""


class NodeChanged(XdsProtocolError):
    """A later request named a different node than the first one."""


class UnknownTypeUrl(XdsProtocolError):
    """A type URL this server does not serve (or not on this per-type service)."""

    def __init__(self, type_url: str, message: str) -> None:
        self.type_url = type_url
        super().__init__(message)


class MalformedRequest(XdsProtocolError):
    """Bytes that do not decode as the request message of the method."""


R = TypeVar("R")
Q = TypeVar("Q", bound=Message)


@dataclass(frozen=True, slots=True)
class Output(Generic[R]):
    """What the core wants done: send ``responses`` in order; ``events`` are for logs/status."""

    responses: tuple[R, ...] = ()
    events: tuple[Event, ...] = ()

    @property
    def node_changed(self) -> bool:
        """Did this change what the node holds, was sent or subscribes to? Then the node's
        other streams must look again (make-before-break reads that state)."""
        return any(e.changes_node for e in self.events)


# ---- the stream core ----------------------------------------------------------------------


class _Request(Protocol):
    """What both DiscoveryRequest and DeltaDiscoveryRequest have."""

    @property
    def node(self) -> base_pb2.Node: ...
    @property
    def type_url(self) -> str: ...
    def HasField(self, field_name: str) -> bool: ...


class StreamCore(ABC, Generic[Q, R]):
    """The protocol logic of one xDS stream (SotW or delta, ADS or one type URL).

    Drive it with :meth:`receive` (a request arrived) and
    :meth:`update` (the snapshot, or this node's state through another stream, changed),
    and :meth:`close` when the stream ends. Each returns an :class:`Output`. Protocol
    violations raise :class:`XdsProtocolError`; the stream must then end.
    """

    delta: ClassVar[bool]
    request_type: ClassVar[type[Message]]

    def __init__(
        self,
        registry: NodeRegistry,
        type_url: str | None = None,
        *,
        nonce_prefix: str | None = None,
    ) -> None:
        """``type_url`` None is ADS; else the one type URL of a per-type service."""
        if type_url is not None and type_url not in TYPE_URLS:
            raise ValueError(f"not a served type URL: {type_url!r}")
        self.registry = registry
        self.kind = StreamKind(self.delta, type_url)
        self.id = registry.new_stream_id()
        self.node: NodeState | None = None
        self._prefix = _default_prefix() if nonce_prefix is None else nonce_prefix
        self._nonces = itertools.count(1)
        self._claimed: set[str] = set()
        #: This stream's own type state per type, kept while a newer stream holds the
        #: type, so the type can come back here when that stream closes (_reclaim).
        self._mine: dict[str, StreamTypeState] = {}
        self._closed = False

    @property
    def node_id(self) -> str | None:
        return None if self.node is None else self.node.node_id

    @abstractmethod
    def receive(self, request: Q, snapshot: Snapshot | None) -> Output[R]:
        """Handle one request against the newest ``snapshot`` (None: nothing to serve yet)."""

    def update(self, snapshot: Snapshot | None) -> Output[R]:
        """Something changed: send whatever is due for the newest ``snapshot``."""
        events: list[Event] = []
        responses = self._pump(snapshot, events)
        return Output(tuple(responses), tuple(events))

    def close(self) -> Output[R]:
        """The stream ended: release its types; the node's state stays for a reconnect."""
        if self._closed or self.node is None:
            self._closed = True
            return Output()
        self._closed = True
        for t in self._claimed:
            self.node.types[t].release(self.id)
        self.registry.detach(self.node, self.id)
        return Output((), (Disconnected(self.node.node_id, self.kind),))

    # ---- for the variants -------------------------------------------------------------

    def _begin(self, request: _Request, events: list[Event]) -> TypeState:
        """Check node and type URL; attach the node on the first request."""
        node_id = request.node.id if request.HasField("node") else ""
        if self.node is None and not node_id:
            # xDS protocol: "Only the first request on a stream is guaranteed to carry the
            # node identifier" -- so it must.
            raise MissingNode("the first request on a stream must carry node.id; it has none")
        if self.node is not None and node_id and node_id != self.node.node_id:
            raise NodeChanged(
                f"node.id changed within one stream: {self.node.node_id!r} then {node_id!r}"
            )
        type_url = self._check_type(request.type_url)
        if self.node is None:
            self.node = self.registry.attach(node_id, self.id, self.kind)
            events.append(Connected(node_id, self.kind))
        self.registry.seen(self.node)
        return self.node.types[type_url]

    def _check_type(self, type_url: str) -> str:
        served = self.kind.type_url
        if served is None:
            if not type_url:
                raise UnknownTypeUrl("", "type_url is required on ADS requests; it is empty")
            if type_url not in TYPE_URLS:
                raise UnknownTypeUrl(
                    type_url,
                    f"unknown type_url {type_url!r}; this server serves " + ", ".join(ADS_ORDER),
                )
            return type_url
        if type_url and type_url != served:
            raise UnknownTypeUrl(
                type_url,
                f"type_url {type_url!r} on the {short_type(served)} discovery service, "
                f"which serves only {served}",
            )
        return served

    def _owned(self, type_url: str) -> StreamTypeState | None:
        assert self.node is not None
        return self.node.types[type_url].owned_by(self.id)

    def _claim(self, ts: TypeState) -> StreamTypeState:
        """This stream now serves ``ts``'s type for the node (a fresh subscription)."""
        self._claimed.add(ts.type_url)
        st = self._mine[ts.type_url] = ts.claim(self.id)
        return st

    def _reclaim(self, type_url: str) -> StreamTypeState | None:
        """Take ``type_url`` back if the newer stream that took it has closed and this is
        now the newest open stream of the node that subscribed to it (see
        :meth:`TypeState.reclaim`)."""
        assert self.node is not None
        mine = self._mine.get(type_url)
        if mine is None or not self.node.types[type_url].reclaim(
            self.id, mine, delta=self.kind.delta
        ):
            return None
        return mine

    def _lost(self, type_url: str) -> bool:
        """True if this stream served the type once but a newer stream took it."""
        return type_url in self._claimed and self._owned(type_url) is None

    def _types(self) -> tuple[str, ...]:
        # ADS sends in ADS_ORDER: CDS, EDS, LDS, RDS (xDS protocol, "Eventual consistency
        # considerations").
        return ADS_ORDER if self.kind.type_url is None else (self.kind.type_url,)

    def _pump(self, snapshot: Snapshot | None, events: list[Event]) -> list[R]:
        """Build every response due now, type by type, from the newest snapshot."""
        node = self.node
        if snapshot is None or node is None or self._closed:
            return []
        out: list[R] = []
        view: View | None = None
        for t in self._types():
            st = self._owned(t) or self._reclaim(t)
            if st is None:
                continue
            ts = node.types[t]
            if view is None:
                view = compute_view(snapshot, node.holdings(), self.registry.view_memo)
            ts.retarget(
                snapshot.version,
                selection(st.sub, snapshot.of_type(t), snapshot.versions[t])[1],
                frozenset(n for n in view.waiting_of(t) if st.sub.wildcard or n in st.sub.names),
            )
            if st.awaiting:
                continue  # one response in flight per type; the ACK brings the next one
            held = ts.held_token()
            response = self._respond(ts, st, view, snapshot, events)
            if response is not None or ts.held_token() != held:
                # What the node may hold changed (a response just built, or an adopted
                # version): the next type needs a fresh view. Otherwise the view stands.
                view = None
            if response is not None:
                out.append(response)
        return out

    @abstractmethod
    def _respond(
        self,
        ts: TypeState,
        st: StreamTypeState,
        view: View,
        snapshot: Snapshot,
        events: list[Event],
    ) -> R | None:
        """The response due for one type (None: nothing to send); a send adds its event."""

    def _record_send(
        self,
        ts: TypeState,
        version: str,
        resources: dict[str, Resource],
        removed: tuple[str, ...],
        origin: tuple[str, str],
        events: list[Event],
        *,
        restore: bool = False,
    ) -> Inflight:
        """Bookkeeping of a response about to go out; returns it with its fresh nonce."""
        inflight = Inflight(
            nonce=f"{self._prefix}{next(self._nonces)}",
            version=version,
            resources=resources,
            removed=removed,
            origin=origin[0],
            config_version=origin[1],
            restore=restore,
        )
        if ts.type_url == CLUSTER:
            # Resend, right after this CDS response, the endpoints of every EDS cluster it
            # changes: Envoy warms an updated cluster until a ClusterLoadAssignment
            # arrives, even an unchanged one (xDS protocol, "Resource warming"), and does
            # not ACK the CDS update before that, so waiting for the ACK would stall until
            # Envoy's initial fetch timeout.
            assert self.node is not None
            self.node.types[ENDPOINT].request_rewarm(ts.changed_eds_names(resources))
        events.append(ts.record_send(inflight, self.registry.clock()))
        return inflight

    def _answer(
        self,
        ts: TypeState,
        nonce: str,
        error: str | None,
        kept_version: str,
        events: list[Event],
    ) -> None:
        """An ACK (``error`` None) or NACK of the response in flight with ``nonce``."""
        if error is None:
            events.append(ts.on_ack(nonce, delta=self.delta))
        else:
            at = self.registry.clock()
            events.append(ts.on_nack(nonce, error, at, kept_version, delta=self.delta))


def _default_prefix() -> str:
    return nonce_prefix()
