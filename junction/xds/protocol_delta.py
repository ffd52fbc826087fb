"""Incremental (delta) xDS on the sans-IO core: DeltaDiscoveryRequest in, DeltaDiscoveryResponse
out.

Rules followed (Envoy's *xDS REST and gRPC protocol*, "Incremental xDS"):

- The first request of a type may carry ``initial_resource_versions``: what the node
  already has. Those are not resent at the same version.
- ``resource_names_subscribe``/``_unsubscribe`` change the subscription; ``"*"`` is the
  wildcard, and an empty first subscription of CDS/LDS is the legacy wildcard.
  Subscription changes are honoured even on a request with a stale nonce ("the server must
  honor changes to the subscription state even if the nonce is stale"); such a request is
  just not an ACK/NACK.
- Re-subscribing to a name resends it even if unchanged (the client "may have forgotten").
  Unsubscribing a name while also subscribed to the wildcard answers it: resent if the
  wildcard covers it, else listed in ``removed_resources``.
- Responses carry only what changed: updated resources, each with its own version
  (``Resource.version``), and ``removed_resources``; a subscribed name that does not exist
  is reported in ``removed_resources`` once. ``system_version_info`` is the version of
  everything the node holds of the type after applying the response.
- A NACK is a request with ``error_detail`` answering the latest nonce. The rejected
  resource versions are never sent again; the node gets the ACKed versions of the rejected
  names back (it may have applied part of the update).
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
from junction.xds.resources import ENDPOINT, Resource, Snapshot, digest_versions
from junction.xds.type_state import Inflight, StreamTypeState, TypeState
from junction.xds.view import View

__all__ = ["DeltaStream"]


class DeltaStream(
    StreamCore[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse]
):
    """One incremental stream (ADS when ``type_url`` is None)."""

    delta = True
    request_type = discovery_pb2.DeltaDiscoveryRequest

    def receive(
        self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot | None
    ) -> Output[discovery_pb2.DeltaDiscoveryResponse]:
        events: list[Event] = []
        ts = self._begin(request, events)
        t = ts.type_url
        if self._lost(t):
            # A newer stream of this node serves the type now; this one is on its way out.
            events.append(Superseded(t))
            return Output((), tuple(events))
        owned = self._owned(t)
        first = owned is None
        st = self._claim(ts) if owned is None else owned
        if first:
            ts.adopt_initial(dict(request.initial_resource_versions), _known(ts, snapshot))
        nonce = request.response_nonce
        if nonce:
            if first or nonce != st.nonce:
                # Not an ACK/NACK of the latest response; its subscription changes still
                # count (below).
                events.append(StaleNonce(t, nonce, st.nonce))
            elif st.awaiting:
                self._answer(ts, nonce, _error(request), ts.acked_version, events)
        subscribe = list(request.resource_names_subscribe)
        unsubscribe = list(request.resource_names_unsubscribe)
        events.extend(ts.subscribe_delta(subscribe, unsubscribe, first))
        return Output(tuple(self._pump(snapshot, events)), tuple(events))

    # ---- responses ----------------------------------------------------------------------

    def _respond(
        self,
        ts: TypeState,
        st: StreamTypeState,
        view: View,
        snapshot: Snapshot,
        events: list[Event],
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        t = ts.type_url
        ts.expire_poisoned_removals(snapshot.version)
        restore = st.take_restore()
        if restore is not None:
            response = self._restore(ts, st, restore, events)
            if response is not None:
                return response
        available = view.of_type(t)
        wanted = available if st.sub.covers(available) else st.sub.select(available)
        kept = view.kept_of(t)
        if t == ENDPOINT:
            st.resend(ts.rewarm_due(wanted.keys()))
            ts.rewarmed(wanted.keys())
        # The target's own (immutable) mapping, unchanged by make-before-break: compare it
        # with what the node has in C (dict equality, subset test) before any per-resource
        # work; for all but the changed type that is the whole answer.
        own = snapshot.owns(t, wanted)
        if (
            own
            and st.sent_any
            and st.sub.names <= wanted.keys()
            and st.client == st.versions_of(wanted)
        ):
            return None  # the node has, or is being sent, exactly the target
        updated = {
            n: r
            for n, r in wanted.items()
            if st.client.get(n) != r.version and (n, r.version) not in ts.poisoned_resources
        }
        removed = {
            n
            for n in st.client
            if n not in wanted and n not in kept and n not in ts.poisoned_removals
        }
        waiting = view.waiting_of(t)
        missing = {
            n
            for n in st.sub.names
            if n not in wanted
            and n not in st.client
            and n not in kept
            and n not in waiting
            and n not in st.reported_missing
        }
        if st.sent_any and not (updated or removed or missing):
            return None
        if not st.sent_any and not st.client and not wanted and waiting:
            # First connect and nothing of this type is ready yet: an empty answer would let
            # Envoy finish initializing without it.
            return None
        st.record_delta(updated, removed, missing)
        origin = (snapshot.origin, snapshot.config_version)
        if own and st.client == st.versions_of(wanted):
            version = snapshot.versions[t]  # the same digest, already computed
        else:
            version = digest_versions(st.client)
        removals = tuple(sorted(removed | missing))
        inflight = self._record_send(ts, version, updated, removals, origin, events)
        return _response(t, inflight)

    def _restore(
        self, ts: TypeState, st: StreamTypeState, names: set[str], events: list[Event]
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        resend = {
            n: ts.acked[n]
            for n in sorted(names)
            if n in ts.acked and (n, ts.acked[n].version) not in ts.poisoned_resources
        }
        remove = tuple(sorted(n for n in names if n not in ts.acked_versions))
        if not resend and not remove:
            return None
        st.record_restore(resend, remove)
        origin = (ts.acked_origin, ts.acked_config_version)
        inflight = self._record_send(
            ts, digest_versions(st.client), resend, remove, origin, events, restore=True
        )
        return _response(ts.type_url, inflight)


def _known(ts: TypeState, snapshot: Snapshot | None) -> dict[str, Resource]:
    """Every content this process has for ``ts``'s names: last sent, ACKed, the target."""
    known: dict[str, Resource] = {}
    if ts.last_sent is not None:
        known.update(ts.last_sent.resources)
    known.update(ts.acked)
    if snapshot is not None:
        known.update(snapshot.of_type(ts.type_url))
    return known


def _error(request: discovery_pb2.DeltaDiscoveryRequest) -> str | None:
    if not request.HasField("error_detail"):
        return None
    detail = request.error_detail
    return detail.message or f"rejected (code {detail.code}, no message)"


def _response(type_url: str, inflight: Inflight) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=inflight.version,
        type_url=type_url,
        nonce=inflight.nonce,
        resources=[
            discovery_pb2.Resource(
                name=name,
                version=r.version,
                resource=any_pb2.Any(type_url=type_url, value=r.payload),
            )
            for name, r in inflight.resources.items()
        ],
        removed_resources=list(inflight.removed),
    )
