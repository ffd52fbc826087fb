"""Sessions and locks for ConsulDouble, as Consul documents and implements them.

Documented at https://developer.hashicorp.com/consul/docs/automate/session and
https://developer.hashicorp.com/consul/api-docs/session; the details below follow Consul's
server code (``agent/consul/session_endpoint.go``, ``session_ttl.go``, ``state/kvs.go``):

* ``PUT /v1/session/create``: ``Name``, ``Node`` (default: the agent's), ``LockDelay`` (a Go
  duration, or a number: seconds below 1000, else nanoseconds; default 15 s), ``Behavior``
  (``release``, the default, or ``delete``), ``TTL`` (``""``/``0s``: none; otherwise between
  the server's ``session_ttl_min``, 10 s by default, and 24 h), ``NodeChecks``/``Checks``
  (default ``["serfHealth"]``) and ``ServiceChecks``. A check that is missing or critical
  refuses the session. Answers ``{"ID": ...}``.
* ``PUT /v1/session/renew/ID`` (404 ``Session id 'ID' not found``), ``PUT
  /v1/session/destroy/ID`` (``true``), ``GET /v1/session/info/ID``, ``/list``,
  ``/node/NODE`` (blocking queries on the sessions table's index).
* TTL: the server's timer is ``TTL * 2`` (``SessionTTLMultiplier``), reset on create and
  renew; Consul only promises "not before TTL" and "up to 2x TTL". The double invalidates at
  exactly 2x TTL, the latest Consul does, so a client that survives the double's take-over
  timing survives Consul's.
* Invalidation (destroy, TTL expiry, a check critical or deregistered): every key the
  session holds is released (``Session`` cleared, ``ModifyIndex`` raised, value kept) or,
  with ``Behavior: delete``, deleted; each such key gets a lock-delay (``LockDelay``, at most
  60 s) during which ``?acquire`` answers ``false``. ``?release`` before destroy avoids the
  lock-delay (what Consul's own lock helper does).
* KV ``?acquire=ID``: ``false`` when another session holds the key or a lock-delay runs;
  500 ``invalid session "ID"`` when the session does not exist; otherwise the value is set,
  ``Session`` becomes ID and ``LockIndex`` goes up by one (unless ID already held it).
  ``?release=ID``: ``false`` unless ID holds the key; clears ``Session`` (``LockIndex`` kept).
  A plain ``PUT`` (with or without ``cas``) keeps the key's ``Session``.

Time: TTLs, lock-delays and blocking waits run on :class:`DoubleClock`, real monotonic time
plus an offset that :meth:`DoubleClock.advance` moves forward, so a test can let 20 s of
session time pass at once instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consul_state import ConsulState

__all__ = ["DEFAULT_LOCK_DELAY", "MAX_LOCK_DELAY", "DoubleClock", "Session", "SessionsMixin"]

DEFAULT_LOCK_DELAY = 15.0
MAX_LOCK_DELAY = 60.0
MAX_TTL = 86400.0
#: Consul's structs.SessionTTLMultiplier: the server's timer is TTL times this.
TTL_MULTIPLIER = 2.0
#: Consul's lockDelayMinThreshold: a bare number below this is seconds, else nanoseconds.
LOCK_DELAY_SECONDS_BELOW = 1000


class DoubleClock:
    """Monotonic seconds that tests can move forward (``advance``), never backwards."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only goes forward")
        self.offset += seconds


@dataclass
class Session:
    id: str
    name: str
    node: str
    lock_delay: float
    behavior: str
    ttl: str
    node_checks: list[str]
    service_checks: list[str]
    create_index: int = 0
    modify_index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": round(self.lock_delay * 1e9),  # a Go time.Duration: nanoseconds
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": list(self.node_checks),
            "ServiceChecks": [{"ID": c, "Namespace": ""} for c in self.service_checks] or None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class SessionTimers:
    """Not replicated (Consul keeps them in the leader's memory): TTL deadlines by session
    and lock-delay ends by key, on the double's clock."""

    deadlines: dict[str, float] = field(default_factory=dict)
    lock_delays: dict[str, float] = field(default_factory=dict)
    handle: asyncio.TimerHandle | None = None


def _lock_delay(raw: Any, go_duration: Any, api_error: Any) -> float:
    if raw is None:
        return DEFAULT_LOCK_DELAY
    if isinstance(raw, bool):
        raise api_error(400, f"Request decode failed: invalid LockDelay {raw!r}")
    if isinstance(raw, int | float):
        return float(raw) if raw < LOCK_DELAY_SECONDS_BELOW else float(raw) / 1e9
    try:
        return float(go_duration(str(raw)))
    except ValueError:
        raise api_error(400, f"Request decode failed: invalid LockDelay {raw!r}") from None


class SessionsMixin:
    """Session and lock operations of :class:`consul_state.ConsulState` (mixed into it)."""

    def wake(self: ConsulState) -> None:
        """Wake every blocked query (it re-checks its data and its wait)."""
        self._notify()

    def session_create(self: ConsulState, raw: Any) -> str:
        from consul_state import ApiError, go_duration

        if not isinstance(raw, dict):
            raise ApiError(400, "Request decode failed: expected a JSON object")
        # Go's JSON decoder matches field names case-insensitively.
        body = {k.lower(): v for k, v in raw.items()}
        node = body.get("node") or self.node
        behavior = body.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise ApiError(500, f"Invalid Behavior setting '{behavior}'")
        ttl_text = str(body.get("ttl") or "")
        if ttl_text:
            try:
                ttl = go_duration(ttl_text) if ttl_text != "0" else 0.0
            except ValueError:
                raise ApiError(500, f"Session TTL '{ttl_text}' invalid") from None
            if ttl != 0 and not self.session_ttl_min <= ttl <= MAX_TTL:
                raise ApiError(
                    500,
                    f"Invalid Session TTL '{round(ttl * 1e9)}', must be between"
                    f" [{self.session_ttl_min:g}s={MAX_TTL / 3600:g}h]",
                )
        delay = _lock_delay(body.get("lockdelay"), go_duration, ApiError)
        checks = body.get("nodechecks", body.get("checks"))
        service_checks = [
            str(c.get("ID") or c.get("id") or "") if isinstance(c, dict) else str(c)
            for c in (body.get("servicechecks") or [])
        ]
        if checks is None and body.get("servicechecks") is None:
            checks = ["serfHealth"]  # only when none is given: [] means a TTL-only session
        if node not in self._s.nodes:
            raise ApiError(500, f"Missing node registration for '{node}'")
        for check_id in [*(checks or []), *service_checks]:
            check = self._s.checks.get((node, check_id))
            if check is None:
                raise ApiError(500, f"Missing check '{check_id}' registration")
            if check.status == "critical":
                raise ApiError(500, f"Check '{check_id}' is in critical state")
        idx = self._next()
        session = Session(
            id=str(uuid.uuid4()),
            name=str(body.get("name") or ""),
            node=node,
            lock_delay=delay,
            behavior=behavior,
            ttl=ttl_text,
            node_checks=[str(c) for c in checks or []],
            service_checks=service_checks,
            create_index=idx,
            modify_index=idx,
        )
        self._s.sessions[session.id] = session
        self._s.session_index = idx
        self._arm_session(session)
        self._notify()
        return session.id

    def _arm_session(self: ConsulState, session: Session) -> None:
        from consul_state import go_duration

        if session.ttl in ("", "0", "0s"):
            return
        ttl = go_duration(session.ttl)
        self._timers.deadlines[session.id] = self.clock.now() + ttl * TTL_MULTIPLIER
        self._schedule_reap()

    def _schedule_reap(self: ConsulState) -> None:
        timers = self._timers
        if timers.handle is not None:
            timers.handle.cancel()
            timers.handle = None
        if timers.deadlines:
            delay = max(0.0, min(timers.deadlines.values()) - self.clock.now())
            timers.handle = asyncio.get_running_loop().call_later(delay, self.reap_sessions)

    def reap_sessions(self) -> None:
        """Invalidate every session whose TTL timer ran out (on the double's clock)."""
        state: ConsulState = self  # type: ignore[assignment]
        now = state.clock.now()
        for sid, deadline in sorted(state._timers.deadlines.items()):
            if deadline <= now:
                state.session_invalidate(sid)
        state._schedule_reap()

    def session_renew(self: ConsulState, sid: str) -> dict[str, Any]:
        from consul_state import ApiError

        self.reap_sessions()
        session = self._s.sessions.get(sid)
        if session is None:
            raise ApiError(404, f"Session id '{sid}' not found")
        self._arm_session(session)  # a renew resets the timer; it writes nothing (no index)
        return session.to_json()

    def session_invalidate(self: ConsulState, sid: str) -> bool:
        """Destroy ``sid``: release or delete its keys, each with a lock-delay."""
        session = self._s.sessions.pop(sid, None)
        self._timers.deadlines.pop(sid, None)
        if session is None:
            return False
        idx = self._next()
        now = self.clock.now()
        for key, entry in sorted(self._s.kv.items()):
            if entry.session != sid:
                continue
            if session.behavior == "delete":
                del self._s.kv[key]
                self._s.tombstones[key] = idx
            else:
                entry.session = ""
                entry.modify_index = idx
            self._s.kv_index = idx
            if session.lock_delay > 0:
                self._timers.lock_delays[key] = now + min(session.lock_delay, MAX_LOCK_DELAY)
        self._s.session_index = idx
        self._notify()
        return True

    def session_destroy(self: ConsulState, sid: str) -> bool:
        self.reap_sessions()
        self.session_invalidate(sid)
        return True  # Consul answers true for a session that is already gone

    def session_read(
        self: ConsulState, *, sid: str | None = None, node: str | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        self.reap_sessions()
        out = [
            s.to_json()
            for _, s in sorted(self._s.sessions.items())
            if (sid is None or s.id == sid) and (node is None or s.node == node)
        ]
        return self._s.session_index or self._raft, out

    def checks_changed(self: ConsulState, node: str, check_id: str) -> None:
        """A check went critical or was removed: invalidate the sessions that list it."""
        check = self._s.checks.get((node, check_id))
        if check is not None and check.status != "critical":
            return
        for sid, s in sorted(self._s.sessions.items()):
            if s.node == node and check_id in (*s.node_checks, *s.service_checks):
                self.session_invalidate(sid)

    def kv_acquire(self: ConsulState, key: str, value: bytes | None, flags: int, sid: str) -> bool:
        from consul_state import ApiError, KVEntry

        self.reap_sessions()
        if self._timers.lock_delays.get(key, float("-inf")) > self.clock.now():
            return False  # Consul: "Rejecting lock of KEY due to lock-delay until T"
        if sid not in self._s.sessions:
            raise ApiError(500, f'invalid session "{sid}"')
        old = self._s.kv.get(key)
        if old is not None and old.session not in ("", sid):
            return False
        idx = self._next()
        lock_index = 1 if old is None else old.lock_index + (old.session != sid)
        self._s.kv[key] = KVEntry(
            key, value, flags, old.create_index if old else idx, idx, sid, lock_index
        )
        self._s.kv_index = idx
        self._notify()
        return True

    def kv_release(self: ConsulState, key: str, value: bytes | None, flags: int, sid: str) -> bool:
        from consul_state import KVEntry

        self.reap_sessions()
        old = self._s.kv.get(key)
        if old is None or old.session != sid:
            return False
        idx = self._next()
        self._s.kv[key] = KVEntry(key, value, flags, old.create_index, idx, "", old.lock_index)
        self._s.kv_index = idx
        self._notify()
        return True
