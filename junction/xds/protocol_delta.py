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
    Subscribed,
    Superseded,
    Unsubscribed,
)
from junction.xds.protocol_state import (
    WILDCARD,
    WILDCARD_TYPES,
    Inflight,
    StreamTypeState,
    TypeState,
    digest_versions,
)
from junction.xds.resources import ENDPOINT, Resource, Snapshot
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
            self._adopt(ts, st, dict(request.initial_resource_versions), snapshot)
        nonce = request.response_nonce
        if nonce:
            if first or nonce != st.nonce:
                # Not an ACK/NACK of the latest response; its subscription changes still
                # count (below).
                events.append(StaleNonce(t, nonce, st.nonce))
            elif st.awaiting:
                self._answer(ts, st, nonce, _error(request), ts.acked_version, events)
        self._subscribe(
            ts,
            st,
            list(request.resource_names_subscribe),
            list(request.resource_names_unsubscribe),
            first,
            events,
        )
        return Output(tuple(self._pump(snapshot, events)), tuple(events))

    # ---- requests -----------------------------------------------------------------------

    def _adopt(
        self,
        ts: TypeState,
        st: StreamTypeState,
        initial: dict[str, str],
        snapshot: Snapshot | None,
    ) -> None:
        """A new stream: the node holds ``initial`` (name -> version), nothing else."""
        known: dict[str, Resource] = {}
        if ts.last_sent is not None:
            known.update(ts.last_sent.resources)
        known.update(ts.acked)
        if snapshot is not None:
            known.update(snapshot.of_type(ts.type_url))
        content: dict[str, Resource | None] = {}
        for name, version in initial.items():
            resource = known.get(name)
            content[name] = (
                resource if resource is not None and resource.version == version else None
            )
        ts.pending.clear()
        ts.set_acked(content, initial)
        ts.acked_version = digest_versions(initial) if initial else ""
        st.client = dict(initial)

    def _subscribe(
        self,
        ts: TypeState,
        st: StreamTypeState,
        subscribe: list[str],
        unsubscribe: list[str],
        first: bool,
        events: list[Event],
    ) -> None:
        sub = st.sub
        t = ts.type_url
        if first:
            sub.wildcard = not subscribe and t in WILDCARD_TYPES
        if subscribe:
            # Legacy wildcard ends with the first explicit name; the wildcard stays
            # until "*" is unsubscribed (xDS protocol, incremental example).
            sub.legacy = False
        added: list[str] = []
        for name in subscribe:
            if name == WILDCARD:
                sub.wildcard = True
                continue
            if name not in sub.names:
                sub.names.add(name)
                added.append(name)
            st.reported_missing.discard(name)
            if not first:
                st.client.pop(name, None)  # resend even if unchanged: it may be forgotten
        dropped: list[str] = []
        dropped_wildcard = False
        for name in unsubscribe:
            if name == WILDCARD:
                dropped_wildcard = sub.wildcard
                sub.wildcard = False
                continue
            if name in sub.names:
                sub.names.discard(name)
                dropped.append(name)
            st.reported_missing.discard(name)
            if sub.wildcard:
                # Still wildcard: answer whether it exists (resend or remove).
                st.client[name] = ""
            else:
                st.client.pop(name, None)
                ts.forget([name])
        if dropped_wildcard:
            gone = [n for n in st.client if n not in sub.names]
            for name in gone:
                del st.client[name]
            ts.forget(gone)
        if (dropped or dropped_wildcard) and ts.acked_known and not first:
            # Nothing is sent for a plain unsubscribe: what the node holds shrank anyway.
            ts.acked_version = digest_versions(ts.acked_versions)
        if first or added or "*" in subscribe:
            events.append(Subscribed(t, tuple(sorted(added)), sub.wildcard))
        if dropped or dropped_wildcard:
            events.append(Unsubscribed(t, tuple(sorted(dropped)), dropped_wildcard))

    # ---- responses ----------------------------------------------------------------------

    def _respond(
        self, ts: TypeState, st: StreamTypeState, view: View, snapshot: Snapshot
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        t = ts.type_url
        if ts.poison_snapshot != snapshot.version:
            ts.poisoned_removals.clear()  # a new target may remove them again
        if st.restore is not None:
            response = self._restore(ts, st)
            if response is not None:
                return response
        available = view.of_type(t)
        wanted = available if st.sub.covers(available) else st.sub.select(available)
        kept = view.kept_of(t)
        if t == ENDPOINT:
            for name in ts.rewarm & wanted.keys():
                if name in st.client:
                    st.client[name] = ""
            ts.rewarm -= wanted.keys()
        # The target's own (immutable) mapping, unchanged by make-before-break: compare it
        # with what the node has in C (dict equality, subset test) before any per-resource
        # work; for all but the changed type that is the whole answer.
        own = wanted is snapshot.of_type(t)
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
        # Report a subscribed name's absence once, not on every response.
        st.reported_missing |= missing | (removed & st.sub.names)
        st.reported_missing -= updated.keys()
        for name, resource in updated.items():
            st.client[name] = resource.version
        for name in removed:
            del st.client[name]
        origin = (snapshot.origin, snapshot.config_version)
        if own and st.client == st.versions_of(wanted):
            version = snapshot.versions[t]  # the same digest, already computed
        else:
            version = digest_versions(st.client)
        removals = tuple(sorted(removed | missing))
        inflight = self._record_send(ts, st, version, updated, removals, origin)
        return _response(t, inflight)

    def _restore(
        self, ts: TypeState, st: StreamTypeState
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        names, st.restore = st.restore or set(), None
        resend = {
            n: ts.acked[n]
            for n in sorted(names)
            if n in ts.acked and (n, ts.acked[n].version) not in ts.poisoned_resources
        }
        remove = tuple(sorted(n for n in names if n not in ts.acked_versions))
        if not resend and not remove:
            return None
        for name, resource in resend.items():
            st.client[name] = resource.version
        for name in remove:
            st.client.pop(name, None)
        origin = (ts.acked_origin, ts.acked_config_version)
        inflight = self._record_send(
            ts, st, digest_versions(st.client), resend, remove, origin, restore=True
        )
        return _response(ts.type_url, inflight)

    def _resend_all(self, st: StreamTypeState) -> None:
        # Every name the node may hold stays known (so what left the target is removed),
        # but none of their versions: each is sent again.
        st.client = dict.fromkeys(st.client, "")
        st.target_versions = None

    def _apply_ack(self, ts: TypeState, inflight: Inflight) -> None:
        # Delta: the response changed only what it named.
        for name, resource in inflight.resources.items():
            ts.acked[name] = resource
            ts.acked_versions[name] = resource.version
        for name in inflight.removed:
            ts.acked.pop(name, None)
            ts.acked_versions.pop(name, None)
        ts.acked_known = True
        ts.acked_version = digest_versions(ts.acked_versions)

    def _nacked(self, ts: TypeState, st: StreamTypeState, inflight: Inflight) -> None:
        ts.poisoned_resources |= {(n, r.version) for n, r in inflight.resources.items()}
        ts.poisoned_removals |= set(inflight.removed)
        ts.poison_snapshot = ts.snapshot_version
        # The node kept its previous versions of every name in the rejected response.
        for name in [*inflight.resources, *inflight.removed]:
            if name in ts.acked_versions:
                st.client[name] = ts.acked_versions[name]
            else:
                st.client.pop(name, None)
        st.restore = set(inflight.resources) | set(inflight.removed)


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
