"""Which replica decides the canary: a Consul session lock, as a pure state machine and a
thin adapter.

Consul's leader-election recipe (https://developer.hashicorp.com/consul/docs/automate/session,
api-docs/session, api-docs/kv ``acquire``/``release``):

1. every replica creates a session with a TTL (``PUT /v1/session/create``; no health checks:
   the replica's own renewals are its liveness, not the agent node's gossip);
2. it tries ``PUT /v1/kv/<key>?acquire=<session>`` with its replica id as the value; the one
   that gets ``true`` leads, the others watch the key with a blocking query and try again
   when its ``Session`` is cleared;
3. everyone renews its session every TTL/2 (``PUT /v1/session/renew/ID``);
4. on shutdown the leader releases the key (``?release``, so the next replica need not wait
   out the lock-delay) and destroys its session.

If the leader dies, Consul invalidates its session between TTL and 2x TTL after the last
renewal, releases the key and holds it for the session's lock-delay; then a follower
acquires it. Here the lock-delay defaults to the TTL: a leader cut off from Consul stops
deciding within TTL of its last renewal (see :meth:`Election.leader`), so no two replicas
can decide at once even if Consul invalidated early. The state written by the decision is
compare-and-set anyway (:mod:`junction.canary.store`), so a step is never taken twice.

Leadership is lost, at once and without deciding again, when a renewal fails (Consul
unreachable or an error: the lease cannot be confirmed), when the session is gone (404), or
when the lock key no longer names this session.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from consul.callback import CB

from junction.canary.errors import StoreError
from junction.canary.store import ConsulStateStore
from junction.catalog.consul import Backoff

__all__ = ["DEFAULT_LEADER_KEY", "Election", "LeaderElection", "Step", "go_duration"]

log = logging.getLogger("junction.canary")

#: The lock key: beside the states' prefix, not under it (the state watch reads that prefix).
DEFAULT_LEADER_KEY = "junction-state/canary-leader"


def go_duration(seconds: float) -> str:
    """A Go duration Consul parses: whole milliseconds (``"10000ms"``)."""
    return f"{max(0, round(seconds * 1000))}ms"


class Step(enum.StrEnum):
    """What the adapter does next."""

    CREATE = "create"  # no session: create one
    RENEW = "renew"  # TTL/2 since the last renewal
    ACQUIRE = "acquire"  # a session but not the lock: try to take it
    WATCH = "watch"  # leading: watch the lock key until the next renewal is due


@dataclass(frozen=True, slots=True)
class Election:
    """One replica's view of the election (pure: time is passed in).

    ``renewed``: when the last create or renewal that succeeded was *sent* (Consul resets
    the session's timer after that, so the lease is at least ``ttl`` from then).
    ``holding``: the last acquire succeeded and nothing since says otherwise.
    """

    ttl: float
    session: str | None = None
    holding: bool = False
    renewed: float = -math.inf
    problem: str | None = "not started"
    #: The replica the lock key names (for /status), None when the key is free.
    holder: str | None = None

    def leader(self, now: float) -> bool:
        """Lead only while the lease is certain: holding the lock, and renewed less than
        ``ttl`` ago (Consul never invalidates a session before its TTL)."""
        return self.holding and self.session is not None and now - self.renewed < self.ttl

    def renew_in(self, now: float) -> float:
        """Seconds until the next renewal is due (0: now)."""
        return max(0.0, self.renewed + self.ttl / 2 - now)

    def next_step(self, now: float) -> Step:
        if self.session is None:
            return Step.CREATE
        if self.renew_in(now) <= 0:
            return Step.RENEW
        return Step.WATCH if self.holding else Step.ACQUIRE

    def created(self, session: str, sent: float) -> Election:
        return replace(self, session=session, holding=False, renewed=sent, problem=None)

    def renewal(self, sent: float) -> Election:
        return replace(self, renewed=sent, problem=None)

    def session_lost(self, reason: str) -> Election:
        """The session is gone (expired or destroyed): a new one is needed."""
        return replace(self, session=None, holding=False, renewed=-math.inf, problem=reason)

    def acquired(self, ok: bool, me: str) -> Election:
        if ok:
            return replace(self, holding=True, holder=me, problem=None)
        return replace(self, holding=False)

    def observed(self, lock_session: str | None, holder: str | None) -> Election:
        """What the lock key says now (its ``Session`` and value)."""
        holding = self.holding and lock_session is not None and lock_session == self.session
        problem = self.problem
        if self.holding and not holding:
            problem = "the lock key no longer names this replica's session"
        return replace(self, holding=holding, holder=holder if lock_session else None,
                       problem=problem)  # fmt: skip

    def failed(self, message: str) -> Election:
        """A Consul call failed: stop leading now (the lease cannot be confirmed)."""
        return replace(self, holding=False, problem=message)

    def resigned(self) -> Election:
        return Election(self.ttl, problem="resigned")


class LeaderElection:
    """Runs the election against Consul (through ``store``'s client); :meth:`leader` says
    whether this replica may decide now.

    ``clock``/``sleep``: monotonic seconds and how to wait (tests drive both from the
    Consul double's clock). ``retry``: how often a follower retries while the key is free
    but refused (a lock-delay runs).
    """

    def __init__(
        self,
        store: ConsulStateStore,
        replica: str,
        *,
        key: str = DEFAULT_LEADER_KEY,
        ttl: float = 10.0,
        lock_delay: float | None = None,
        retry: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        if ttl <= 0 or retry <= 0:
            raise StoreError("leader election: ttl and retry must be > 0")
        self.store = store
        self.replica = replica
        self.key = key
        self.lock_delay = ttl if lock_delay is None else lock_delay
        self.state = Election(ttl)
        self.retry = retry
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self._index = 0
        self._lock_session: str | None = None
        self.changes = 0  # times leadership was gained or lost (for tests and /status)
        self._was_leader = False

    def leader(self) -> bool:
        return self.state.leader(self._clock())

    def _set(self, state: Election) -> None:
        self.state = state
        now_leader = state.leader(self._clock())
        if now_leader != self._was_leader:
            self._was_leader = now_leader
            self.changes += 1
            if now_leader:
                log.info("canary leader: %s leads (lock %s)", self.replica, self.key)
            else:
                log.warning("canary leader: %s stopped leading: %s", self.replica, state.problem)

    async def run(self) -> None:
        """Until cancelled. Cancelling does not resign (a crash does not either); call
        :meth:`resign` on a clean shutdown."""
        failures = 0
        while True:
            try:
                await self.once()
                failures = 0
            except StoreError as exc:
                self._set(self.state.failed(str(exc)))
                self._index = 0
                await self._sleep(self._backoff.delay(failures))
                failures += 1

    async def once(self) -> None:
        """One step of the loop (:meth:`Election.next_step`)."""
        now = self._clock()
        step = self.state.next_step(now)
        if step is Step.CREATE:
            self._set(self.state.created(await self._create(), now))
        elif step is Step.RENEW:
            assert self.state.session is not None
            if await self._renew(self.state.session):
                self._set(self.state.renewal(now))
            else:
                self._set(self.state.session_lost("the session expired or was destroyed"))
        elif step is Step.ACQUIRE:
            assert self.state.session is not None
            ok = await self._acquire(self.state.session)
            self._set(self.state.acquired(ok, self.replica))
            if not ok:
                # Held by another: wake when it changes. Free but refused: a lock-delay.
                wait = self.state.renew_in(self._clock())
                await self._watch(wait if self._lock_session else min(wait, self.retry))
        else:
            await self._watch(self.state.renew_in(now))

    async def _create(self) -> str:
        body = orjson.dumps(
            {
                "Name": f"junction canary leader election ({self.replica})",
                "TTL": go_duration(self.state.ttl),
                "LockDelay": go_duration(self.lock_delay),
                "Behavior": "release",
                "NodeChecks": [],  # TTL only: the replica's renewals are its liveness
            }
        ).decode()
        # py-consul's session.create takes whole seconds >= 10 only; Consul takes any
        # duration above the server's session_ttl_min.
        sid: str = await self.store.request(
            "creating a session",
            lambda c: c.http.put(CB.json(is_id=True), "/v1/session/create", data=body),
        )
        return sid

    async def _renew(self, sid: str) -> bool:
        found = await self.store.request(
            "renewing the session",
            lambda c: c.http.put(CB.json(allow_404=True), f"/v1/session/renew/{sid}"),
        )
        return found is not None  # 404: the session is gone

    async def _acquire(self, sid: str) -> bool:
        ok = await self.store.request(
            f"acquiring {self.key}",
            lambda c: c.kv.put(self.key, self.replica, acquire=sid),
        )
        return bool(ok)

    async def _watch(self, wait: float) -> None:
        """Read the lock key, blocking up to ``wait`` s for a change (0: read at once)."""
        index = self._index if wait > 0.001 else 0
        raw_index, entry = await self.store.request(
            f"watching {self.key}",
            lambda c: c.kv.get(
                self.key, index=index or None, wait=go_duration(wait) if index else None
            ),
        )
        try:
            returned = int(raw_index)
        except (TypeError, ValueError):
            raise StoreError(f"watching {self.key}: X-Consul-Index {raw_index!r}") from None
        self._index = 0 if returned < self._index else max(returned, 1)
        self._lock_session = (entry or {}).get("Session") or None
        value = (entry or {}).get("Value")
        holder = value.decode(errors="replace") if isinstance(value, bytes) else None
        self._set(self.state.observed(self._lock_session, holder))

    async def resign(self) -> None:
        """Release the lock (no lock-delay for the next leader) and destroy the session."""
        sid, holding = self.state.session, self.state.holding
        self._set(self.state.resigned())
        if sid is None:
            return
        try:
            if holding:
                await self.store.request(
                    f"releasing {self.key}",
                    lambda c: c.kv.put(self.key, self.replica, release=sid),
                )
            await self.store.request("destroying the session", lambda c: c.session.destroy(sid))
        except StoreError as exc:
            log.warning("canary leader: resigning: %s (the session's TTL will end it)", exc)

    def status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "replica": self.replica,
            "key": self.key,
            "leader": self.state.leader(now),
            "holder": self.state.holder,
            "session": self.state.session,
            "ttl": self.state.ttl,
            "lock_delay": self.lock_delay,
            "renewed_ago": None
            if self.state.session is None
            else round(now - self.state.renewed, 3),
            "problem": self.state.problem,
        }
