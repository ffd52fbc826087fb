"""The xDS state of one type URL for one node, and the only code that changes it.

h11's style: :class:`TypeState` (node-scoped: survives reconnects) and
:class:`StreamTypeState` (stream-scoped: what the stream owning the type asked for and
was sent) change only through their named transitions below (:meth:`TypeState.claim`,
:meth:`~TypeState.adopt`, :meth:`~TypeState.subscribe_sotw`,
:meth:`~TypeState.record_send`, :meth:`~TypeState.on_ack`, :meth:`~TypeState.on_nack`,
...), which return the typed events of :mod:`junction.xds.events` where there is one. The
protocol cores (``protocol*.py``) read the fields and call the transitions; they never
write a field (``tests/unit/test_xds_type_state.py`` checks their source for that).

The hot path's shortcuts are explicit here (and tested there):

- :meth:`TypeState.held_token` is a generation number bumped by every transition that
  changes what the node holds (:meth:`TypeState.holding`): equal tokens mean the view
  computed from it still stands (one view per pump instead of one per type). It replaced a
  token of ``id()``s, which a change made in place would not have shown.
- :meth:`StreamTypeState.versions_of` remembers ``name -> version`` of the last target
  mapping by identity: a snapshot's mappings are immutable, so the same object has the
  same versions (:meth:`junction.xds.resources.Snapshot.owns` is the same rule, for
  reusing a snapshot's type version instead of rehashing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from junction.xds.events import Ack, Event, Nack, Sent, Subscribed, Unsubscribed
from junction.xds.records import (
    POISON_MAX,
    WILDCARD,
    WILDCARD_TYPES,
    Inflight,
    NackInfo,
    Subscription,
)
from junction.xds.resources import Resource, digest_versions
from junction.xds.view import Holding, eds_name

__all__ = ["StreamTypeState", "TypeState"]


@dataclass
class StreamTypeState:
    """Stream-scoped part of a type's state: reset when a new stream takes the type.

    Written only by its own transitions and :class:`TypeState`'s.
    """

    owner: int
    sub: Subscription = field(default_factory=Subscription)
    nonce: str = ""
    awaiting: bool = False
    inflight: Inflight | None = None
    sent_any: bool = False
    #: After a NACK: the names to put back to their ACKed content (delta) / all (SotW).
    restore: set[str] | None = None
    #: Delta: what the node has, or will have once it applies what was sent.
    client: dict[str, str] = field(default_factory=dict)
    #: Delta: subscribed names already reported as non-existent (removed_resources).
    reported_missing: set[str] = field(default_factory=set)
    #: Delta: ``name -> version`` of the last target mapping compared with ``client``,
    #: with that (immutable) mapping: computed once per snapshot, not once per response.
    target_versions: tuple[Mapping[str, Resource], dict[str, str]] | None = None

    def forget_sent(self, *, delta: bool) -> None:
        """Nothing sent here counts any more: the next response carries the whole target
        (delta: the names stay known, so what left is removed; their versions do not)."""
        self.awaiting, self.inflight, self.nonce, self.restore = False, None, "", None
        if delta:
            self.client = dict.fromkeys(self.client, "")
            self.target_versions = None

    def versions_of(self, resources: Mapping[str, Resource]) -> dict[str, str]:
        """``name -> version`` of ``resources``, which must be immutable (a snapshot's own
        mapping): remembered by identity for the next call with the same object."""
        memo = self.target_versions
        if memo is None or memo[0] is not resources:
            memo = self.target_versions = (resources, {n: r.version for n, r in resources.items()})
        return memo[1]

    def take_restore(self) -> set[str] | None:
        """The names a NACK asked to put back (None: no restore due); clears the request."""
        names, self.restore = self.restore, None
        return names

    def resend(self, names: Iterable[str]) -> None:
        """Delta: send these again even if unchanged (the node must get them anew)."""
        for name in names:
            if name in self.client:
                self.client[name] = ""

    def record_delta(
        self, updated: Mapping[str, Resource], removed: set[str], missing: set[str]
    ) -> None:
        """Delta: a response with ``updated``, ``removed`` and absent ``missing`` names is
        about to go out; the node will hold what it says. An absent subscribed name is
        reported once, not on every response."""
        self.reported_missing |= missing | (removed & self.sub.names)
        self.reported_missing -= updated.keys()
        for name, resource in updated.items():
            self.client[name] = resource.version
        for name in removed:
            del self.client[name]

    def record_restore(self, resend: Mapping[str, Resource], remove: Iterable[str]) -> None:
        """Delta: a restore response (ACKed content back, never-ACKed names removed)."""
        for name, resource in resend.items():
            self.client[name] = resource.version
        for name in remove:
            self.client.pop(name, None)

    def _sent(self, inflight: Inflight) -> None:
        self.nonce = inflight.nonce
        self.awaiting = True
        self.inflight = inflight
        self.sent_any = True

    def _answered(self, nonce: str) -> Inflight:
        inflight = self.inflight
        assert inflight is not None and inflight.nonce == nonce and self.awaiting
        self.awaiting = False
        return inflight


@dataclass
class TypeState:
    """Node-scoped state of one type URL: survives reconnects of the node.

    Every field is written only by the transitions of this class (see the module doc).
    """

    type_url: str
    acked: dict[str, Resource] = field(default_factory=dict)
    acked_versions: dict[str, str] = field(default_factory=dict)
    acked_version: str = ""
    acked_origin: str = ""
    acked_config_version: str = ""
    #: False when the node reported a version whose content this process cannot know.
    acked_known: bool = True
    pending: dict[str, Resource] = field(default_factory=dict)
    last_sent: Inflight | None = None
    sent_at: float | None = None
    nack: NackInfo | None = None
    poisoned_versions: list[str] = field(default_factory=list)
    poisoned_resources: set[tuple[str, str]] = field(default_factory=set)
    poisoned_removals: set[str] = field(default_factory=set)
    poison_snapshot: str = ""
    #: EDS names to resend although unchanged: their cluster was just updated (see
    #: :meth:`changed_eds_names`).
    rewarm: set[str] = field(default_factory=set)
    target_version: str = ""
    snapshot_version: str = ""
    waiting: frozenset[str] = frozenset()
    stream: StreamTypeState | None = None
    #: Ids of the node's open streams that subscribed to this type, oldest first: the
    #: last serves it (``stream``); when it closes, the one before takes over (reclaim).
    claimants: list[int] = field(default_factory=list)
    #: Bumped by every transition that changes :meth:`holding` (see :meth:`held_token`).
    generation: int = 0

    # ---- reads --------------------------------------------------------------------------

    def holding(self) -> Holding:
        """What the node holds of this type, as read-only views of this state: valid until
        the state changes (:func:`~junction.xds.view.compute_view` uses it at once). Views,
        not copies, because a view is computed per type on every pump (1000 clusters: two
        1000-entry copies per type, eight views per one-instance change)."""
        acked: Mapping[str, Resource | None]
        if self.acked.keys() == self.acked_versions.keys():
            acked = MappingProxyType(self.acked)  # the usual case: every content known
        else:
            acked = {n: self.acked.get(n) for n in self.acked_versions}
        return Holding(acked=acked, pending=MappingProxyType(self.pending))

    def held_token(self) -> int:
        """Differs after any transition that changes :meth:`holding`; for reusing a view
        within one pump while nothing changed."""
        return self.generation

    def owned_by(self, owner: int) -> StreamTypeState | None:
        st = self.stream
        return st if st is not None and st.owner == owner else None

    def rewarm_due(self, names: Iterable[str]) -> frozenset[str]:
        """Which of ``names`` must be resent although unchanged (see :meth:`request_rewarm`)."""
        return frozenset(self.rewarm.intersection(names))

    def changed_eds_names(self, clusters: Mapping[str, Resource]) -> set[str]:
        """The EDS names of the clusters in ``clusters`` whose version differs from what the
        node holds (ACKed or pending) of this (CDS) type."""
        out: set[str] = set()
        for name, cluster in clusters.items():
            acked = self.acked_versions.get(name)
            pending = self.pending.get(name)
            changed = (acked is not None and acked != cluster.version) or (
                pending is not None and pending.version != cluster.version
            )
            cla = eds_name(cluster.message) if changed else None
            if cla is not None:
                out.add(cla)
        return out

    # ---- transitions: ownership and target ------------------------------------------------

    def claim(self, owner: int) -> StreamTypeState:
        """Stream ``owner`` now serves this type for the node, with a fresh subscription
        (and is the newest of its claimants)."""
        self.stream = st = StreamTypeState(owner=owner)
        if owner in self.claimants:
            self.claimants.remove(owner)
        self.claimants.append(owner)
        return st

    def release(self, owner: int) -> None:
        """Stream ``owner`` ended; the node's state stays for a reconnect. Its answers (a
        NACK, refused versions) no longer count: an older open stream of the node takes the
        type back (:meth:`reclaim`) and is judged on its own."""
        if owner in self.claimants:
            self.claimants.remove(owner)
        if self.owned_by(owner) is not None:
            self.stream = None
            self.nack = None
            self.poisoned_versions.clear()
            self.poisoned_resources.clear()
            self.poisoned_removals.clear()

    def reclaim(self, owner: int, mine: StreamTypeState, *, delta: bool) -> bool:
        """Give the type back to stream ``owner`` (its earlier state ``mine``) if the newer
        stream that took it has closed and ``owner`` is now the newest open claimant. What
        the node holds is then unknown (that stream may have been another process: a copied
        bootstrap, an overlapping reconnect), so the whole target is sent again."""
        if self.stream is not None or self.claimants[-1:] != [owner] or mine.owner != owner:
            return False
        mine.forget_sent(delta=delta)
        self.stream = mine
        self.pending.clear()
        self._set_acked({}, {})
        self.acked_version = ""
        return True

    def retarget(self, snapshot_version: str, target_version: str, waiting: frozenset[str]) -> None:
        """The newest snapshot would give the node ``target_version``; ``waiting`` is held
        back by make-before-break."""
        self.snapshot_version = snapshot_version
        self.target_version = target_version
        self.waiting = waiting

    def request_rewarm(self, names: Iterable[str]) -> None:
        """(EDS) Resend these although unchanged: their cluster was just updated, and Envoy
        warms an updated cluster until a ClusterLoadAssignment arrives (xDS protocol,
        "Resource warming")."""
        self.rewarm.update(names)

    def rewarmed(self, names: Iterable[str]) -> None:
        """These were just answered: no rewarm due for them any more."""
        self.rewarm.difference_update(names)

    def expire_poisoned_removals(self, snapshot_version: str) -> None:
        """(Delta) A new target may remove the names a NACKed response removed again."""
        if self.poison_snapshot != snapshot_version:
            self.poisoned_removals.clear()

    # ---- transitions: what the node says it has -----------------------------------------

    def adopt(self, version_info: str) -> None:
        """(SotW) A (re)subscription: take what the node says it has as its ACKed state."""
        self.pending.clear()
        last = self.last_sent
        if not version_info:
            self._set_acked({}, {})
        elif version_info == self.acked_version and self.acked_known:
            pass
        elif last is not None and not last.removed and version_info == last.version:
            # It applied the last response before the old stream broke.
            self._set_acked(last.resources, {n: r.version for n, r in last.resources.items()})
            self.acked_origin, self.acked_config_version = last.origin, last.config_version
        else:
            # A version this process did not send (e.g. before a restart): content unknown
            # until a view with this very version proves it (see learn).
            self._set_acked({}, {}, known=False)
        self.acked_version = version_info
        self.generation += 1

    def adopt_initial(self, initial: dict[str, str], known: Mapping[str, Resource]) -> None:
        """(Delta) A new stream: the node holds ``initial`` (name -> version), nothing else;
        ``known`` is the content this process has for such names (any version)."""
        st = self._stream()
        content: dict[str, Resource | None] = {}
        for name, version in initial.items():
            resource = known.get(name)
            content[name] = (
                resource if resource is not None and resource.version == version else None
            )
        self.pending.clear()
        self._set_acked(content, initial)
        self.acked_version = digest_versions(initial) if initial else ""
        st.client = dict(initial)

    def learn(self, resources: Mapping[str, Resource]) -> None:
        """(SotW) The node reported exactly the version of ``resources``: it holds them."""
        self._set_acked(resources, {n: r.version for n, r in resources.items()})

    # ---- transitions: subscriptions -----------------------------------------------------

    def subscribe_sotw(self, names: list[str], first: bool) -> list[Event]:
        """(SotW) Every request carries the full set of names (xDS protocol)."""
        sub = self._stream().sub
        t = self.type_url
        if not names and sub.legacy and t in WILDCARD_TYPES:
            wildcard, wanted = True, set[str]()
        else:
            sub.legacy = sub.legacy and not names
            wildcard, wanted = WILDCARD in names, set(names) - {WILDCARD}
        added, dropped = wanted - sub.names, sub.names - wanted
        events: list[Event] = []
        if first or added or (wildcard and not sub.wildcard):
            shown = wanted if first else added
            events.append(Subscribed(t, tuple(sorted(shown)), wildcard))
        if dropped or (sub.wildcard and not wildcard):
            events.append(Unsubscribed(t, tuple(sorted(dropped)), sub.wildcard and not wildcard))
        sub.wildcard, sub.names = wildcard, wanted
        if not wildcard:
            # Envoy drops what it no longer subscribes to; it no longer counts as held.
            self._forget([n for n in self.acked_versions if n not in wanted])
        return events

    def subscribe_delta(
        self, subscribe: list[str], unsubscribe: list[str], first: bool
    ) -> list[Event]:
        """(Delta) ``resource_names_subscribe``/``_unsubscribe`` change the subscription."""
        st = self._stream()
        sub = st.sub
        if first:
            sub.wildcard = not subscribe and self.type_url in WILDCARD_TYPES
        if subscribe:
            # Legacy wildcard ends with the first explicit name; the wildcard stays
            # until "*" is unsubscribed (xDS protocol, incremental example).
            sub.legacy = False
        added = self._delta_add(st, subscribe, first)
        dropped, dropped_wildcard = self._delta_drop(st, unsubscribe)
        if (dropped or dropped_wildcard) and self.acked_known and not first:
            # Nothing is sent for a plain unsubscribe: what the node holds shrank anyway.
            self.acked_version = digest_versions(self.acked_versions)
        events: list[Event] = []
        if first or added or WILDCARD in subscribe:
            events.append(Subscribed(self.type_url, tuple(sorted(added)), sub.wildcard))
        if dropped or dropped_wildcard:
            events.append(Unsubscribed(self.type_url, tuple(sorted(dropped)), dropped_wildcard))
        return events

    def _delta_add(self, st: StreamTypeState, subscribe: list[str], first: bool) -> list[str]:
        added: list[str] = []
        for name in subscribe:
            if name == WILDCARD:
                st.sub.wildcard = True
                continue
            if name not in st.sub.names:
                st.sub.names.add(name)
                added.append(name)
            st.reported_missing.discard(name)
            if not first:
                st.client.pop(name, None)  # resend even if unchanged: it may be forgotten
        return added

    def _delta_drop(self, st: StreamTypeState, unsubscribe: list[str]) -> tuple[list[str], bool]:
        sub = st.sub
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
                self._forget([name])
        if dropped_wildcard:
            gone = [n for n in st.client if n not in sub.names]
            for name in gone:
                del st.client[name]
            self._forget(gone)
        return dropped, dropped_wildcard

    # ---- transitions: responses and their answers ---------------------------------------

    def record_send(self, inflight: Inflight, at: float) -> Sent:
        """A response is about to go out on the owning stream; returns its event."""
        self._stream()._sent(inflight)
        self.last_sent = inflight
        self.sent_at = at
        # Sent but not ACKed: the node may already use it (make-before-break counts it).
        self.pending.update(inflight.resources)
        self.generation += 1
        return Sent(
            self.type_url,
            inflight.version,
            inflight.nonce,
            len(inflight.resources),
            len(inflight.removed),
            inflight.restore,
        )

    def on_ack(self, nonce: str, *, delta: bool) -> Ack:
        """The node ACKed the response in flight with ``nonce``: it holds what it carried
        (SotW: exactly that; delta: its ACKed state changed by what it named)."""
        inflight = self._stream()._answered(nonce)
        if delta:
            for name, resource in inflight.resources.items():
                self.acked[name] = resource
                self.acked_versions[name] = resource.version
            for name in inflight.removed:
                self.acked.pop(name, None)
                self.acked_versions.pop(name, None)
            self.acked_known = True
            self.acked_version = digest_versions(self.acked_versions)
        else:
            resources = inflight.resources
            self._set_acked(resources, {n: r.version for n, r in resources.items()})
            self.acked_version = inflight.version
        self.pending.clear()
        self.acked_origin, self.acked_config_version = inflight.origin, inflight.config_version
        self.generation += 1
        return Ack(self.type_url, inflight.version, nonce)

    def on_nack(self, nonce: str, error: str, at: float, kept_version: str, *, delta: bool) -> Nack:
        """The node rejected the response in flight with ``nonce``. Its version is never
        sent again for this type, and (unless it was itself a restore, which would loop)
        the node is put back on what it ACKed last: it may have applied part of it."""
        st = self._stream()
        inflight = st._answered(nonce)
        self.nack = NackInfo(
            inflight.version, nonce, error, at, inflight.origin, inflight.config_version
        )
        if inflight.version not in self.poisoned_versions:
            self.poisoned_versions.append(inflight.version)
            del self.poisoned_versions[:-POISON_MAX]
        if not inflight.restore:
            if delta:
                self._nacked_delta(st, inflight)
            else:
                st.restore = set()
        return Nack(
            self.type_url,
            inflight.version,
            nonce,
            error,
            inflight.origin,
            inflight.config_version,
            kept_version,
        )

    def _nacked_delta(self, st: StreamTypeState, inflight: Inflight) -> None:
        self.poisoned_resources |= {(n, r.version) for n, r in inflight.resources.items()}
        self.poisoned_removals |= set(inflight.removed)
        self.poison_snapshot = self.snapshot_version
        # The node kept its previous versions of every name in the rejected response.
        for name in [*inflight.resources, *inflight.removed]:
            if name in self.acked_versions:
                st.client[name] = self.acked_versions[name]
            else:
                st.client.pop(name, None)
        st.restore = set(inflight.resources) | set(inflight.removed)

    # ---- helpers ------------------------------------------------------------------------

    def _stream(self) -> StreamTypeState:
        st = self.stream
        assert st is not None, f"{self.type_url}: no stream owns this type"
        return st

    def _set_acked(
        self,
        resources: Mapping[str, Resource | None],
        versions: Mapping[str, str],
        *,
        known: bool = True,
    ) -> None:
        self.acked = {n: r for n, r in resources.items() if r is not None}
        self.acked_versions = dict(versions)
        self.acked_known = known
        self.generation += 1

    def _forget(self, names: Iterable[str]) -> None:
        """The node dropped these (unsubscribed): they no longer count as held."""
        for n in names:
            held = n in self.acked_versions or n in self.pending
            self.acked.pop(n, None)
            self.acked_versions.pop(n, None)
            self.pending.pop(n, None)
            self.generation += held
