"""State-of-the-world xDS on the sans-IO core: DiscoveryRequest in, DiscoveryResponse out.

Rules followed (Envoy's *xDS REST and gRPC protocol*):

- ACK/NACK: a request whose ``response_nonce`` is the latest one sent for its type answers
  that response; ``error_detail`` makes it a NACK. A request with any other non-empty
  nonce is stale and ignored (:class:`~junction.xds.protocol.StaleNonce`). An empty nonce
  is the first request of a type, or a re-subscription.
- ``resource_names``: every request carries the full set. Empty on CDS/LDS before any name
  was given means wildcard (as does ``"*"``); EDS/RDS get only the requested names that
  exist.
- A response is sent only when the version of what the node would get differs from what it
  has. Versions are hashes of the names and content of exactly the resources sent, so an
  equal version proves the node has them: this is also what lets a reconnecting node
  (``version_info`` of its last accepted response) skip the resend.
- After a NACK the node is sent its last ACKed resources again (it may have applied part of
  a CDS/LDS update), and the rejected version is never sent again for that type.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from junction.xds.protocol import (
    Event,
    Output,
    StaleNonce,
    StreamCore,
    Superseded,
)
from junction.xds.protocol_state import selection, version_of
from junction.xds.resources import ENDPOINT, Resource, Snapshot
from junction.xds.type_state import Inflight, StreamTypeState, TypeState
from junction.xds.view import View

__all__ = ["SotwStream"]


class SotwStream(StreamCore[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]):
    """One state-of-the-world stream (ADS when ``type_url`` is None)."""

    delta = False
    request_type = discovery_pb2.DiscoveryRequest

    def receive(
        self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot | None
    ) -> Output[discovery_pb2.DiscoveryResponse]:
        events: list[Event] = []
        ts = self._begin(request, events)
        t = ts.type_url
        nonce = request.response_nonce
        first = not nonce
        if first:
            st = self._claim(ts)
            ts.adopt(request.version_info)
        else:
            owned = self._owned(t)
            if owned is None:
                events.append(Superseded(t) if self._lost(t) else StaleNonce(t, nonce, ""))
                return Output((), tuple(events))
            st = owned
            if nonce != st.nonce:
                # xDS protocol: "The management server should not send a DiscoveryResponse
                # for any DiscoveryRequest that has a stale nonce."
                events.append(StaleNonce(t, nonce, st.nonce))
                return Output((), tuple(events))
            if st.awaiting:
                error = _error(request)
                self._answer(ts, nonce, error, request.version_info, events)
        events.extend(ts.subscribe_sotw(list(request.resource_names), first))
        return Output(tuple(self._pump(snapshot, events)), tuple(events))

    # ---- responses ----------------------------------------------------------------------

    def _respond(
        self,
        ts: TypeState,
        st: StreamTypeState,
        view: View,
        snapshot: Snapshot,
        events: list[Event],
    ) -> discovery_pb2.DiscoveryResponse | None:
        t = ts.type_url
        if st.take_restore() is not None and ts.acked_known and ts.acked_version:
            content = st.sub.select(ts.acked)
            version = version_of(content)
            if version not in ts.poisoned_versions:
                origin = (ts.acked_origin, ts.acked_config_version)
                inflight = self._record_send(ts, version, content, (), origin, events, restore=True)
                return _response(t, inflight)
        available = view.of_type(t)
        # Unchanged by make-before-break, the view's mapping is the snapshot's own, whose
        # type version is known (no rehash of the whole type per response).
        known = snapshot.versions[t] if snapshot.owns(t, available) else ""
        wanted, version = selection(st.sub, available, known)
        if not ts.acked_known and version == ts.acked_version:
            # The node reported exactly this version: it holds exactly these resources.
            ts.learn(wanted)
        forced = t == ENDPOINT and bool(ts.rewarm_due(wanted.keys()))
        if version in ts.poisoned_versions:
            return None  # NACKed before: wait for a different target
        if version == ts.acked_version and not forced:
            return None
        if not ts.acked_version and not wanted and view.waiting_of(t):
            # First connect and nothing of this type is ready yet: an empty answer would let
            # Envoy finish initializing without it.
            return None
        ts.rewarmed(wanted.keys())
        origin = (snapshot.origin, snapshot.config_version)
        return _response(t, self._record_send(ts, version, dict(wanted), (), origin, events))


def _error(request: discovery_pb2.DiscoveryRequest) -> str | None:
    if not request.HasField("error_detail"):
        return None
    detail = request.error_detail
    return detail.message or f"rejected (code {detail.code}, no message)"


def _response(type_url: str, inflight: Inflight) -> discovery_pb2.DiscoveryResponse:
    return discovery_pb2.DiscoveryResponse(
        version_info=inflight.version,
        type_url=type_url,
        nonce=inflight.nonce,
        resources=[_any(type_url, r) for r in inflight.resources.values()],
    )


def _any(type_url: str, resource: Resource) -> any_pb2.Any:
    # The payload is already the deterministic serialization: no re-encoding per stream.
    return any_pb2.Any(type_url=type_url, value=resource.payload)
