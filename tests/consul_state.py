"""The state behind ConsulDouble: Consul's KV store, catalog and local agent, without HTTP.

Indexes follow Consul's state store: one raft-like counter raised by every write; a KV
entry's ModifyIndex; a per-service index raised by any change to what
``/v1/health/service/NAME`` returns (its instances, their checks, their nodes and node
checks); an extinction index for services that do not exist; the KV table index (tombstones
included) for missing keys. Idempotent catalog writes leave indexes alone; KV writes never
do. Every change sets :attr:`ConsulState.wakeup` so blocked queries re-evaluate.

Errors are :class:`ApiError` with the status and text Consul's HTTP handlers answer.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from consul_sessions import DoubleClock, Session, SessionsMixin, SessionTimers

__all__ = [
    "ApiError",
    "Check",
    "ConsulState",
    "KVEntry",
    "Node",
    "Service",
    "Snapshot",
    "go_bool",
    "go_duration",
]

DATACENTER = "dc1"
STATUSES = ("passing", "warning", "critical")
NODE_MAINT = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"
DEFAULT_NODE_MAINT_REASON = (
    "Maintenance mode is enabled for this node, but no reason was provided. "
    "This is a default message."
)
DEFAULT_SERVICE_MAINT_REASON = (
    "Maintenance mode is enabled for this service, but no reason was provided. "
    "This is a default message."
)
# Check types Consul's agent would run itself; the double only has TTL checks.
_RUN_CHECK_KEYS = frozenset(
    [
        "http",
        "tcp",
        "args",
        "script",
        "grpc",
        "dockercontainerid",
        "h2ping",
        "udp",
        "aliasnode",
        "aliasservice",
        "osservice",
    ]
)
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ApiError(Exception):
    """Answered as ``status`` with a plain-text body, as Consul's HTTP handlers do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _unknown_check(check_id: str) -> ApiError:
    return ApiError(
        404,
        f"Unknown check ID {check_id!r}. Ensure that the check ID is passed, not the check name.",
    )


def go_duration(text: str) -> float:
    """Seconds in a Go duration (time.ParseDuration): ``"10s"``, ``"500ms"``, ``"1m30s"``."""
    if not text or _DURATION.sub("", text) != "":
        raise ValueError(text)
    return sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(text))


def go_bool(query: Mapping[str, str], name: str, required: bool = False) -> bool:
    """Go's strconv.ParseBool on a query parameter; a bare ``?name`` is true."""
    if name not in query:
        if required:
            raise ApiError(400, f"Missing value for {name}")
        return False
    raw = query[name]
    if raw in ("", "1", "t", "T", "true", "TRUE", "True"):
        return True
    if raw in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ApiError(400, f"Invalid value for {name}: {raw!r}")


def _fold(body: Any) -> dict[str, Any]:
    """Keys compared as Go's JSON decoder and Consul's key translation do: case and _ ignored."""
    if not isinstance(body, dict):
        raise ApiError(400, "Request decode failed: expected a JSON object")
    return {k.lower().replace("_", ""): v for k, v in body.items()}


@dataclass
class KVEntry:
    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int
    #: The session holding the key's lock ("" when unlocked), and how often it was locked.
    session: str = ""
    lock_index: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {
            "Key": self.key,
            "Value": None if self.value is None else base64.b64encode(self.value).decode(),
            "Flags": self.flags,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "LockIndex": self.lock_index,
        }
        if self.session:  # Go's omitempty: no Session field on an unlocked key
            out["Session"] = self.session
        return out


@dataclass
class Node:
    name: str
    address: str
    meta: dict[str, str]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    create_index: int = 0
    modify_index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": {"lan": self.address, "wan": self.address},
            "Meta": dict(self.meta),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Service:
    node: str
    id: str
    name: str
    address: str = ""
    port: int = 0
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Service) -> bool:
        keep = ("address", "port", "tags", "meta", "weights", "name")
        return all(getattr(self, k) == getattr(other, k) for k in keep)

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "Meta": dict(self.meta),
            "Port": self.port,
            "Weights": dict(self.weights),
            "EnableTagOverride": False,
            "Datacenter": DATACENTER,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Check:
    node: str
    check_id: str
    name: str
    status: str = "critical"
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    type: str = ""
    ttl: float | None = None
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Check) -> bool:
        keep = ("name", "status", "notes", "output", "service_id", "service_name", "type")
        return all(getattr(self, k) == getattr(other, k) for k in keep)

    def to_json(self, tags: list[str]) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(tags),
            "Type": self.type,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Snapshot:
    """The replicated state (what ``consul snapshot save`` captures)."""

    kv: dict[str, KVEntry] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    kv_index: int = 0
    nodes: dict[str, Node] = field(default_factory=dict)
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    checks: dict[tuple[str, str], Check] = field(default_factory=dict)
    service_index: dict[str, int] = field(default_factory=dict)
    extinction_index: int = 0
    catalog_index: int = 0
    sessions: dict[str, Session] = field(default_factory=dict)
    session_index: int = 0


class ConsulState(SessionsMixin):
    """KV, catalog, sessions and the agent of node ``node`` (with serfHealth and the consul
    service). ``session_ttl_min``: the server's ``session_ttl_min`` (Consul's default 10 s;
    Consul servers may be configured lower, as tests do to keep take-overs short)."""

    def __init__(
        self,
        node: str,
        node_address: str,
        node_meta: Mapping[str, str] | None = None,
        *,
        session_ttl_min: float = 10.0,
        clock: DoubleClock | None = None,
    ) -> None:
        self.node = node
        self.session_ttl_min = session_ttl_min
        #: TTLs, lock-delays and blocking waits run on this clock (tests advance it).
        self.clock = clock or DoubleClock()
        self._timers = SessionTimers()
        #: Set (and replaced) on every change; blocked queries wait on it.
        self.wakeup = asyncio.Event()
        #: Raised by :meth:`restore`: blocked queries return at once, as on a raft restore.
        self.generation = 0
        self._raft = 0
        self._s = Snapshot()
        self._agent_services: set[str] = set()
        self._agent_checks: set[str] = set()
        self._ttl_timers: dict[str, asyncio.TimerHandle] = {}
        idx = self._next()
        self._ensure_node(idx, node, node_address, dict(node_meta or {}))
        self._ensure_service(idx, Service(node, "consul", "consul", port=8300))
        serf = Check(node, "serfHealth", "Serf Health Status", "passing")
        serf.output = "Agent alive and reachable"
        self._ensure_check(idx, serf)

    def close(self) -> None:
        """Stop TTL timers (checks' and sessions')."""
        for timer in self._ttl_timers.values():
            timer.cancel()
        self._ttl_timers.clear()
        if self._timers.handle is not None:
            self._timers.handle.cancel()
            self._timers.handle = None

    def snapshot(self) -> Snapshot:
        return copy.deepcopy(self._s)

    def restore(self, snapshot: Snapshot) -> None:
        """Restore ``snapshot`` (its indexes are older): blocked queries return at once."""
        self._s = copy.deepcopy(snapshot)
        # Agent state is local, not replicated: forget what the restored catalog lacks.
        self._agent_services &= {sid for n, sid in self._s.services if n == self.node}
        self._agent_checks &= {cid for n, cid in self._s.checks if n == self.node}
        for cid in set(self._ttl_timers) - self._agent_checks:
            self._ttl_timers.pop(cid).cancel()
        # A new leader restarts the TTL timer of every session it has (session_ttl.go).
        self._timers.deadlines.clear()
        for session in self._s.sessions.values():
            self._arm_session(session)
        self.generation += 1
        self._notify()

    def _next(self) -> int:
        self._raft += 1
        return self._raft

    def _notify(self) -> None:
        self.wakeup.set()
        self.wakeup = asyncio.Event()

    def _touch(self, idx: int, names: Iterable[str]) -> None:
        for name in names:
            self._s.service_index[name] = idx
        self._s.catalog_index = idx

    def _services_of(self, node: str) -> list[Service]:
        return [s for (n, _), s in sorted(self._s.services.items()) if n == node]

    def _ensure_node(self, idx: int, name: str, address: str, meta: dict[str, str]) -> None:
        old = self._s.nodes.get(name)
        if old is not None and (old.address, old.meta) == (address, meta):
            return
        node = Node(name, address, meta, create_index=idx, modify_index=idx)
        if old is not None:
            node.id, node.create_index = old.id, old.create_index
        self._s.nodes[name] = node
        self._touch(idx, [s.name for s in self._services_of(name)])

    def _ensure_service(self, idx: int, service: Service) -> None:
        old = self._s.services.get((service.node, service.id))
        if old is not None and old.same(service):
            return
        service.create_index = old.create_index if old else idx
        service.modify_index = idx
        self._s.services[(service.node, service.id)] = service
        self._touch(idx, {service.name, *([old.name] if old else [])})

    def _ensure_check(self, idx: int, check: Check) -> None:
        old = self._s.checks.get((check.node, check.check_id))
        if old is not None and old.same(check):
            return
        check.create_index = old.create_index if old else idx
        check.modify_index = idx
        self._s.checks[(check.node, check.check_id)] = check
        self._touch_check(idx, check)
        if check.status == "critical":
            self.checks_changed(check.node, check.check_id)

    def _touch_check(self, idx: int, check: Check) -> None:
        if check.service_id:
            self._touch(idx, [check.service_name])
        else:  # a node check is part of every service entry of the node
            self._touch(idx, [s.name for s in self._services_of(check.node)])

    def _remove_check(self, idx: int, node: str, check_id: str) -> None:
        check = self._s.checks.pop((node, check_id), None)
        if check is not None:
            self._touch_check(idx, check)
            self.checks_changed(node, check_id)
        if node == self.node:
            self._agent_checks.discard(check_id)
            timer = self._ttl_timers.pop(check_id, None)
            if timer is not None:
                timer.cancel()

    def _remove_service(self, idx: int, node: str, service_id: str) -> None:
        service = self._s.services.pop((node, service_id), None)
        if service is None:
            return
        for (n, cid), check in list(self._s.checks.items()):
            if n == node and check.service_id == service_id:
                self._remove_check(idx, n, cid)
        self._touch(idx, [service.name])
        if not any(s.name == service.name for s in self._s.services.values()):
            self._s.extinction_index = idx
        if node == self.node:
            self._agent_services.discard(service_id)

    def update_check(
        self, node: str, check_id: str, status: str, output: str, rearm: bool = True
    ) -> None:
        if status not in STATUSES:
            raise ApiError(400, f"Invalid check status: {status!r}")
        check = self._s.checks.get((node, check_id))
        if check is None:
            raise _unknown_check(check_id)
        if (check.status, check.output) != (status, output):
            updated = copy.copy(check)
            updated.status, updated.output = status, output
            self._ensure_check(self._next(), updated)
            self._notify()
        if rearm and check.ttl is not None and node == self.node:
            self._arm_ttl(check.check_id, check.ttl)

    def _arm_ttl(self, check_id: str, ttl: float) -> None:
        timer = self._ttl_timers.pop(check_id, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._ttl_timers[check_id] = loop.call_later(ttl, self._ttl_expired, check_id)

    def _ttl_expired(self, check_id: str) -> None:
        self._ttl_timers.pop(check_id, None)
        if (self.node, check_id) in self._s.checks:  # expiry does not re-arm the TTL
            self.update_check(self.node, check_id, "critical", "TTL expired", rearm=False)

    def health_entries(
        self, name: str, passing: bool, tags: list[str], node_meta: list[tuple[str, str]]
    ) -> tuple[int, list[dict[str, Any]]]:
        s = self._s
        entries = []
        for (node_name, sid), service in sorted(s.services.items()):
            if service.name != name:
                continue
            node = s.nodes[node_name]
            if any(t not in service.tags for t in tags):
                continue
            if any(node.meta.get(k) != v for k, v in node_meta):
                continue
            checks = [
                c
                for (n, _), c in sorted(s.checks.items())
                if n == node_name and c.service_id in ("", sid)
            ]
            if passing and any(c.status != "passing" for c in checks):
                continue
            entries.append(
                {
                    "Node": node.to_json(),
                    "Service": service.to_json(),
                    "Checks": [c.to_json(service.tags if c.service_id else []) for c in checks],
                }
            )
        exists = any(svc.name == name for svc in s.services.values())
        if exists:
            index = s.service_index.get(name, s.catalog_index)
        else:  # Consul: the last time any service disappeared, else the catalog's index
            index = s.extinction_index or s.service_index.get(name) or s.catalog_index
        return index, entries

    def kv_read(self, key: str, prefix: bool) -> tuple[int, list[KVEntry]]:
        s = self._s
        if not prefix:
            entry = s.kv.get(key)
            return (entry.modify_index, [entry]) if entry else (s.kv_index, [])
        entries = [e for k, e in sorted(s.kv.items()) if k.startswith(key)]
        if key == "":
            return s.kv_index, entries
        index = max(
            [e.modify_index for e in entries]
            + [i for k, i in s.tombstones.items() if k.startswith(key)],
            default=0,
        )
        return index or s.kv_index, entries

    def kv_put(self, key: str, value: bytes | None, flags: int, cas: int | None) -> bool:
        if not key:
            raise ApiError(400, "Missing key name")
        old = self._s.kv.get(key)
        if cas is not None and (old.modify_index if old else 0) != cas:
            return False
        idx = self._next()
        # A plain write keeps the key's lock (Consul's kvsSetTxn without updateSession).
        held = (old.session, old.lock_index) if old else ("", 0)
        self._s.kv[key] = KVEntry(key, value, flags, old.create_index if old else idx, idx, *held)
        self._s.kv_index = idx
        self._notify()
        return True

    def kv_delete(self, key: str, recurse: bool, cas: int | None) -> bool:
        if not key and not recurse:
            raise ApiError(400, "Missing key name")
        keys = [k for k in self._s.kv if k.startswith(key)] if recurse else [key]
        if cas is not None:  # Consul: a 0 index never deletes; else it must match
            entry = self._s.kv.get(key)
            if cas == 0 or entry is None or entry.modify_index != cas:
                return False
        keys = [k for k in keys if k in self._s.kv]
        if keys:
            idx = self._next()
            for k in keys:
                del self._s.kv[k]
                self._s.tombstones[k] = idx
            self._s.kv_index = idx
            self._notify()
        return True

    def catalog_register(self, raw: Any) -> None:
        body = _fold(raw)
        node, address = body.get("node") or "", body.get("address") or ""
        if not node:
            raise ApiError(500, "Must provide node")
        skip = bool(body.get("skipnodeupdate")) and node in self._s.nodes
        if not address and not skip:
            raise ApiError(500, "Must provide address if SkipNodeUpdate is not set")
        defs = [_fold(c) for c in (body.get("checks") or [])]
        if body.get("check"):
            defs.append(_fold(body["check"]))
        # Validate everything first: a rejected registration changes nothing.
        service = None
        if body.get("service"):
            svc = _fold(body["service"])
            if not svc.get("service"):
                raise ApiError(500, "Must provide service name")
            service = self._service_from(node, svc)
        checks = []
        for c in defs:
            if (c.get("node") or node) != node:
                raise ApiError(500, f"Node {c.get('node')!r} does not match registration node")
            checks.append(self._check_from(node, c, c.get("checkid") or c.get("name"), service))
        idx = self._next()
        if not skip:
            self._ensure_node(idx, node, address, dict(body.get("nodemeta") or {}))
        if service is not None:
            self._ensure_service(idx, service)
        for check in checks:
            self._ensure_check(idx, check)
        self._notify()

    def _service_from(self, node: str, svc: dict[str, Any]) -> Service:
        weights = _fold(svc.get("weights") or {})
        return Service(
            node=node,
            id=svc.get("id") or svc["service"],
            name=svc["service"] if "service" in svc else svc["name"],
            address=svc.get("address") or "",
            port=int(svc.get("port") or 0),
            tags=list(svc.get("tags") or []),
            meta=dict(svc.get("meta") or {}),
            weights={
                "Passing": int(weights.get("passing") or 1),
                "Warning": int(weights.get("warning") or 1),
            },
        )

    def _check_from(
        self, node: str, c: dict[str, Any], check_id: str | None, pending: Service | None = None
    ) -> Check:
        """A check from its (folded) definition; ``pending`` is a service being registered."""
        if not check_id:
            raise ApiError(400, "Missing check ID")
        status = c.get("status") or "critical"  # Consul's default for a new check
        if status not in STATUSES:
            raise ApiError(400, f"Invalid check status: {status!r}")
        sid = c.get("serviceid") or ""
        service = self._s.services.get((node, sid)) if sid else None
        if pending is not None and pending.id == sid:
            service = pending
        if sid and service is None:
            raise ApiError(500, f"Missing service registration for ServiceID {sid!r}")
        return Check(
            node=node,
            check_id=check_id,
            name=c.get("name") or check_id,
            status=status,
            notes=c.get("notes") or "",
            output=c.get("output") or "",
            service_id=sid,
            service_name=service.name if service else "",
        )

    def catalog_deregister(self, raw: Any) -> None:
        body = _fold(raw)
        node = body.get("node") or ""
        if not node:
            raise ApiError(500, "Must provide node")
        idx = self._next()
        if body.get("serviceid"):
            self._remove_service(idx, node, body["serviceid"])
        elif body.get("checkid"):
            self._remove_check(idx, node, body["checkid"])
        else:
            for service in self._services_of(node):
                self._remove_service(idx, node, service.id)
            for n, cid in [k for k in self._s.checks if k[0] == node]:
                self._remove_check(idx, n, cid)
            if self._s.nodes.pop(node, None) is not None:
                self._s.catalog_index = idx
        self._notify()

    def _agent_check(
        self, c: dict[str, Any], default_id: str, default_name: str, pending: Service | None = None
    ) -> Check:
        if _RUN_CHECK_KEYS & c.keys():
            raise ApiError(
                400, "ConsulDouble runs no health checks: register TTL checks and set them"
            )
        if not c.get("ttl"):
            raise ApiError(400, "Check definition must have a TTL (the double's only kind)")
        check_id = c.get("checkid") or c.get("id") or default_id
        check = self._check_from(self.node, c, check_id, pending)
        check.name = c.get("name") or default_name
        try:
            check.ttl, check.type = go_duration(c["ttl"]), "ttl"
        except ValueError:
            raise ApiError(400, f"Invalid TTL {c['ttl']!r}") from None
        old = self._s.checks.get((self.node, check.check_id))
        if old is not None and not c.get("status"):
            check.status, check.output = old.status, old.output  # re-registration keeps state
        return check

    def _add_agent_check(self, idx: int, check: Check) -> None:
        self._ensure_check(idx, check)
        self._agent_checks.add(check.check_id)
        if check.ttl is not None:
            self._arm_ttl(check.check_id, check.ttl)

    def agent_service_register(self, raw: Any, replace_checks: bool) -> None:
        body = _fold(raw)
        name = body.get("name") or ""
        if not name:
            raise ApiError(400, "Missing service name")
        service = self._service_from(self.node, {**body, "service": name})
        defs = [_fold(c) for c in (body.get("checks") or [])]
        if body.get("check"):
            defs.insert(0, _fold(body["check"]))
        checks = []
        for i, c in enumerate(defs):  # validated before anything is applied
            c.setdefault("serviceid", service.id)
            default_id = f"service:{service.id}" + (f":{i + 1}" if len(defs) > 1 else "")
            checks.append(self._agent_check(c, default_id, f"Service '{name}' check", service))
        idx = self._next()
        self._ensure_service(idx, service)
        self._agent_services.add(service.id)
        for check in checks:
            self._add_agent_check(idx, check)
        wanted = {check.check_id for check in checks}
        if replace_checks:
            for (n, cid), check in list(self._s.checks.items()):
                maint = cid.startswith(SERVICE_MAINT_PREFIX)
                if (
                    n == self.node
                    and check.service_id == service.id
                    and cid not in wanted
                    and not maint
                ):
                    self._remove_check(idx, n, cid)
        self._notify()

    def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None:
        service = self._s.services.get((self.node, service_id))
        if service is None or service_id not in self._agent_services:
            raise ApiError(404, f"No service registered with ID {service_id!r}")
        check_id = SERVICE_MAINT_PREFIX + service_id
        present = (self.node, check_id) in self._s.checks
        if enable and not present:
            check = Check(
                self.node,
                check_id,
                "Service Maintenance Mode",
                "critical",
                notes=reason or DEFAULT_SERVICE_MAINT_REASON,
                service_id=service_id,
                service_name=service.name,
                type="maintenance",
            )
            self._add_agent_check(self._next(), check)
        elif not enable and present:
            self._remove_check(self._next(), self.node, check_id)
        self._notify()

    def node_maintenance(self, enable: bool, reason: str) -> None:
        present = (self.node, NODE_MAINT) in self._s.checks
        if enable and not present:
            check = Check(
                self.node,
                NODE_MAINT,
                "Node Maintenance Mode",
                "critical",
                notes=reason or DEFAULT_NODE_MAINT_REASON,
                type="maintenance",
            )
            self._add_agent_check(self._next(), check)
        elif not enable and present:
            self._remove_check(self._next(), self.node, NODE_MAINT)
        self._notify()

    def ttl_update(self, cid: str, status: str, output: str) -> None:
        if cid not in self._agent_checks:
            raise _unknown_check(cid)
        if self._s.checks[(self.node, cid)].ttl is None:
            raise ApiError(500, f"CheckID {cid!r} does not have associated TTL")
        self.update_check(self.node, cid, status, output)

    def catalog_services(self) -> tuple[int, dict[str, list[str]]]:
        out: dict[str, list[str]] = {}
        for s in self._s.services.values():
            tags = out.setdefault(s.name, [])
            tags.extend(t for t in s.tags if t not in tags)
        return self._s.catalog_index, dict(sorted(out.items()))

    def catalog_nodes(self) -> tuple[int, list[dict[str, Any]]]:
        return self._s.catalog_index, [n.to_json() for _, n in sorted(self._s.nodes.items())]

    def agent_services(self) -> dict[str, Any]:
        return {
            sid: self._s.services[(self.node, sid)].to_json()
            for sid in sorted(self._agent_services)
        }

    def agent_checks(self) -> dict[str, Any]:
        checks = {}
        for cid in sorted(self._agent_checks):
            check = self._s.checks[(self.node, cid)]
            service = self._s.services.get((self.node, check.service_id))
            checks[cid] = check.to_json(service.tags if service else [])
        return checks

    def agent_service_deregister(self, service_id: str) -> None:
        if service_id not in self._agent_services:
            raise ApiError(404, f"Unknown service ID {service_id!r}")
        self._remove_service(self._next(), self.node, service_id)
        self._notify()

    def agent_check_register(self, raw: Any) -> None:
        c = _fold(raw)
        if not c.get("name"):
            raise ApiError(400, "Missing check name")
        self._add_agent_check(self._next(), self._agent_check(c, c["name"], c["name"]))
        self._notify()

    def agent_check_deregister(self, check_id: str) -> None:
        if check_id not in self._agent_checks:
            raise _unknown_check(check_id)
        self._remove_check(self._next(), self.node, check_id)
        self._notify()
