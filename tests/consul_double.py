"""ConsulDouble: stands in for a Consul agent and its servers, over Consul's HTTP API.

An aiohttp server on 127.0.0.1 (port 0) serving the subset of Consul's HTTP API that
Junction and its tests use, as Consul documents it
(https://developer.hashicorp.com/consul/api-docs); the state and its indexes live in
:mod:`consul_state`.

* Blocking queries (``?index=N&wait=D``, api-docs/features/blocking): held until the
  resource's index is above N or the wait runs out (default 5 min, capped at 10 min, 0 means
  the default), then answered with the current data and index. Consul adds up to wait/16 of
  jitter; the double does not, so tests stay deterministic. ``X-Consul-Index`` (never 0),
  ``X-Consul-KnownLeader`` and ``X-Consul-LastContact`` come with every read.
* ``GET/PUT/DELETE /v1/kv/KEY`` (``recurse``, ``raw``, ``keys``, ``separator``, ``flags``,
  ``cas``; 404 with an index for missing keys; 413 above 512 KiB).
* ``GET /v1/health/service/NAME`` (``passing``, ``tag``, ``node-meta``), ``GET
  /v1/catalog/services``, ``PUT /v1/catalog/register`` and ``/v1/catalog/deregister``.
* The agent (node ``node``, with serfHealth and the ``consul`` service like a dev agent):
  ``GET /v1/agent/services|checks``, ``PUT /v1/agent/service/register`` (TTL checks only),
  ``/v1/agent/service/deregister/ID``, ``/v1/agent/check/register|deregister``,
  ``/v1/agent/check/pass|warn|fail/ID``, ``/v1/agent/check/update/ID`` (TTLs expire),
  ``/v1/agent/service/maintenance/ID`` and ``/v1/agent/maintenance``.
* ``GET /v1/status/leader``.
* Sessions and locks (:mod:`consul_sessions`): ``/v1/session/create|renew|destroy|info|list|
  node``, TTL expiry at 2x TTL, lock-delay, ``PUT /v1/kv/KEY?acquire=ID`` and
  ``?release=ID``, a key's ``Session`` and ``LockIndex``. TTLs, lock-delays and blocking
  waits run on the double's clock: :meth:`~ConsulDouble.advance` moves it forward.

What it does not implement it refuses loudly: ``filter`` expressions (400),
other datacenters (500 "No path to datacenter"), checks Consul would run itself (400).

Test helpers: :meth:`~ConsulDouble.put_kv`, :meth:`~ConsulDouble.catalog_register` (the JSON
of ``PUT /v1/catalog/register``, NodeMeta included: py-consul sends node meta as query
parameters, not in the body where Consul documents it),
:meth:`~ConsulDouble.set_check`, :meth:`~ConsulDouble.snapshot` and
:meth:`~ConsulDouble.restore` (indexes go backwards, blocked queries return),
:meth:`~ConsulDouble.stop_serving` / :meth:`~ConsulDouble.start_serving` (the port closes and
in-flight requests are dropped; state survives; the same port is reused),
:meth:`~ConsulDouble.fail_requests` (e.g. ``500 No cluster leader`` to every request),
:meth:`~ConsulDouble.stall_requests` (accepted, never answered: a hung agent),
:meth:`~ConsulDouble.rewrite_responses` (e.g. a malformed ``X-Consul-Index`` or body),
:meth:`~ConsulDouble.require_token` (ACLs with a default policy of deny: 403 without the
token) and :attr:`~ConsulDouble.requests` (every request received, failed ones included).
``host`` (``"::1"`` for IPv6) and ``ssl_context`` (HTTPS) choose how it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from consul_state import ApiError, ConsulState, Snapshot, go_bool, go_duration

__all__ = ["ConsulDouble", "RequestRecord"]

T = TypeVar("T")
DATACENTER = "dc1"
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_VALUE = 512 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Rewrite = Callable[[web.Request, web.StreamResponse], web.StreamResponse]


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]


def _reply(body: Any, index: int | None = None, status: int = 200) -> web.Response:
    headers = {}
    if index is not None:
        headers = {
            "X-Consul-Index": str(index),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }
    text = "" if body is None else json.dumps(body)
    return web.Response(status=status, text=text, headers=headers, content_type="application/json")


class ConsulDouble:
    """A Consul agent on 127.0.0.1 (port 0): ``async with ConsulDouble() as consul:``."""

    def __init__(
        self,
        *,
        node: str = "consul-double",
        node_address: str = "127.0.0.1",
        node_meta: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        session_ttl_min: float = 10.0,
    ) -> None:
        self.node = node
        self.state = ConsulState(node, node_address, node_meta, session_ttl_min=session_ttl_min)
        #: Every request received, in order (including those answered by fail_requests).
        self.requests: list[RequestRecord] = []
        self._host = host
        self._ssl = ssl_context
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._failure: tuple[int, str] | None = None
        self._stalled: asyncio.Event | None = None
        self._rewrite: Rewrite | None = None
        self._token: str | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def address(self) -> str:
        """``HOST:PORT`` (``[::1]:PORT`` for IPv6), as Junction's ``--consul-addr`` takes it;
        with ``https://`` first when serving TLS."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https://' if self._ssl else ''}{host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    async def __aenter__(self) -> ConsulDouble:
        await self.start_serving()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_serving()
        self.state.close()

    async def start_serving(self) -> None:
        """Listen (again) on 127.0.0.1: port 0 the first time, the same port afterwards."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware])
        self._routes(app)
        # A short shutdown timeout: blocked requests are dropped, as when Consul dies.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def stop_serving(self) -> None:
        """Close the port and drop every connection (Consul unreachable). State is kept."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def fail_requests(self, status: int = 500, body: str = "No cluster leader") -> None:
        """Answer every request with ``status`` and ``body`` until :meth:`serve_normally`."""
        self._failure = (status, body)

    def stall_requests(self) -> None:
        """Accept every new request and never answer it (a hung agent), until
        :meth:`serve_normally`."""
        self._stalled = asyncio.Event()

    def rewrite_responses(self, rewrite: Rewrite) -> None:
        """Pass every response through ``rewrite(request, response)`` until
        :meth:`serve_normally` (e.g. to send a malformed ``X-Consul-Index``)."""
        self._rewrite = rewrite

    def require_token(self, token: str | None) -> None:
        """ACLs enabled with a default policy of deny: a request without ``token`` in
        ``X-Consul-Token`` (or ``?token=``) gets 403 ``Permission denied``, as Consul answers
        (api-docs/api-structure#authentication). None turns ACLs off again."""
        self._token = token

    def serve_normally(self) -> None:
        self._failure = None
        self._rewrite = None
        if self._stalled is not None:
            self._stalled.set()  # the held requests go on (their clients may be gone)
            self._stalled = None

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the double's clock: sessions whose TTL ran out are
        invalidated, lock-delays end, and blocked queries whose wait ran out answer."""
        self.state.clock.advance(seconds)
        self.state.reap_sessions()
        self.state.wake()

    def request_count(self, path_prefix: str = "/") -> int:
        return sum(1 for r in self.requests if r.path.startswith(path_prefix))

    # ------------------------------------------------------------ test helpers

    def put_kv(self, key: str, value: str | bytes | None, flags: int = 0) -> None:
        self.state.kv_put(key, value.encode() if isinstance(value, str) else value, flags, None)

    def delete_kv(self, key: str, recurse: bool = False) -> None:
        self.state.kv_delete(key, recurse, None)

    def catalog_register(self, body: Mapping[str, Any]) -> None:
        """What ``PUT /v1/catalog/register`` does with this JSON body."""
        self.state.catalog_register(dict(body))

    def catalog_deregister(
        self, node: str, service_id: str | None = None, check_id: str | None = None
    ) -> None:
        body = {"Node": node, "ServiceID": service_id, "CheckID": check_id}
        self.state.catalog_deregister(body)

    def set_check(
        self, check_id: str, status: str, node: str | None = None, output: str = ""
    ) -> None:
        """Set a check's status on any node, as a check run (or a TTL update) would."""
        self.state.update_check(node or self.node, check_id, status, output)

    def snapshot(self) -> Snapshot:
        """The replicated state, as ``consul snapshot save`` would capture it."""
        return self.state.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        """Restore an older snapshot: indexes go backwards and blocked queries return."""
        self.state.restore(snapshot)

    # ------------------------------------------------------------------- HTTP

    async def _block(
        self, request: web.Request, compute: Callable[[], tuple[int, T]]
    ) -> tuple[int, T]:
        """Consul's blockingQuery: answer once the index is above ``?index`` or at the wait."""
        query = request.query
        try:
            min_index = int(query.get("index", "0"))
            if min_index < 0:
                raise ValueError(min_index)
        except ValueError:
            raise ApiError(400, "Invalid index") from None
        try:
            wait = go_duration(query["wait"]) if "wait" in query else DEFAULT_WAIT
        except ValueError:
            raise ApiError(400, "Invalid wait time") from None
        clock = self.state.clock  # advance() wakes every blocked query to re-check its wait
        deadline = clock.now() + min(wait if wait > 0 else DEFAULT_WAIT, MAX_WAIT)
        generation = self.state.generation
        while True:
            wakeup = self.state.wakeup
            index, result = compute()
            index = max(index, 1)  # Consul never answers index 0
            remaining = deadline - clock.now()
            if min_index == 0 or index > min_index or remaining <= 0:
                return index, result
            if self.state.generation != generation:  # a restore abandons the state store
                return index, result
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), remaining)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append(RequestRecord(request.method, request.path, dict(request.query)))
        if self._failure is not None:
            return web.Response(status=self._failure[0], text=self._failure[1])
        if self._stalled is not None:
            await self._stalled.wait()
        response: web.StreamResponse
        try:
            token = request.headers.get("X-Consul-Token") or request.query.get("token")
            if self._token is not None and token != self._token:
                raise ApiError(403, "Permission denied")
            if request.query.get("dc", DATACENTER) != DATACENTER:
                raise ApiError(500, "No path to datacenter")
            if "filter" in request.query:
                raise ApiError(400, "ConsulDouble does not implement filter expressions")
            response = await handler(request)
        except ApiError as exc:
            response = web.Response(status=exc.status, text=exc.message)
        # Read after the handler: a blocking query held across the switch gets it too.
        rewrite = self._rewrite
        return rewrite(request, response) if rewrite is not None else response

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/kv/{key:.*}", self._kv_get)
        r.add_put("/v1/kv/{key:.*}", self._kv_put)
        r.add_delete("/v1/kv/{key:.*}", self._kv_delete)
        r.add_get("/v1/health/service/{name}", self._health_service)
        r.add_get("/v1/catalog/services", self._catalog_services)
        r.add_get("/v1/catalog/nodes", self._catalog_nodes)
        r.add_put("/v1/catalog/register", self._catalog_register)
        r.add_put("/v1/catalog/deregister", self._catalog_deregister)
        r.add_get("/v1/agent/services", self._agent_services)
        r.add_get("/v1/agent/checks", self._agent_checks)
        r.add_put("/v1/agent/service/register", self._agent_service_register)
        r.add_put("/v1/agent/service/deregister/{id}", self._agent_service_deregister)
        r.add_put("/v1/agent/service/maintenance/{id}", self._service_maintenance)
        r.add_put("/v1/agent/maintenance", self._node_maintenance)
        r.add_put("/v1/agent/check/register", self._agent_check_register)
        r.add_put("/v1/agent/check/deregister/{id}", self._agent_check_deregister)
        r.add_put("/v1/agent/check/{action:pass|warn|fail}/{id}", self._check_ttl)
        r.add_put("/v1/agent/check/update/{id}", self._check_update)
        r.add_get("/v1/status/leader", self._leader)
        r.add_put("/v1/session/create", self._session_create)
        r.add_put("/v1/session/renew/{id}", self._session_renew)
        r.add_put("/v1/session/destroy/{id}", self._session_destroy)
        r.add_get("/v1/session/info/{id}", self._session_info)
        r.add_get("/v1/session/list", self._session_list)
        r.add_get("/v1/session/node/{node}", self._session_node)

    @staticmethod
    async def _json(request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None

    async def _kv_get(self, request: web.Request) -> web.Response:
        key, q = request.match_info["key"], request.query
        listing = go_bool(q, "keys")
        prefix = listing or go_bool(q, "recurse")
        if not key and not prefix:
            raise ApiError(400, "Missing key name")
        index, entries = await self._block(request, lambda: self.state.kv_read(key, prefix))
        if not entries:
            return _reply(None, index, status=404)
        if listing:
            sep, names = q.get("separator", ""), []
            for e in entries:
                cut = e.key.find(sep, len(key)) if sep else -1
                name = e.key[: cut + len(sep)] if cut >= 0 else e.key
                if name not in names:
                    names.append(name)
            return _reply(names, index)
        if go_bool(q, "raw") and not prefix:
            resp = web.Response(body=entries[0].value or b"", content_type="text/plain")
            resp.headers["X-Consul-Index"] = str(index)
            return resp
        return _reply([e.to_json() for e in entries], index)

    async def _kv_put(self, request: web.Request) -> web.Response:
        q = request.query
        body = await request.read()
        if len(body) > MAX_VALUE:
            raise ApiError(
                413, f"Request body({len(body)} bytes) too large, max size: {MAX_VALUE} bytes."
            )
        try:
            flags = int(q.get("flags", "0"))
            cas = int(q["cas"]) if "cas" in q else None
        except ValueError:
            raise ApiError(400, "Invalid flags or cas") from None
        key = request.match_info["key"]
        # Consul's handler: ?acquire, then ?release, override ?cas (the last one set wins).
        if "release" in q:
            return _reply(self.state.kv_release(key, body or None, flags, q["release"]))
        if "acquire" in q:
            return _reply(self.state.kv_acquire(key, body or None, flags, q["acquire"]))
        return _reply(self.state.kv_put(key, body or None, flags, cas))

    async def _kv_delete(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            cas = int(q["cas"]) if "cas" in q else None
        except ValueError:
            raise ApiError(400, "Invalid cas") from None
        key, recurse = request.match_info["key"], go_bool(q, "recurse")
        return _reply(self.state.kv_delete(key, recurse, cas))

    async def _health_service(self, request: web.Request) -> web.Response:
        q = request.query
        name, passing, tags = request.match_info["name"], go_bool(q, "passing"), q.getall("tag", [])
        meta = [(k, v) for k, _, v in (m.partition(":") for m in q.getall("node-meta", []))]
        index, entries = await self._block(
            request, lambda: self.state.health_entries(name, passing, tags, meta)
        )
        return _reply(entries, index)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        index, services = await self._block(request, self.state.catalog_services)
        return _reply(services, index)

    async def _catalog_nodes(self, request: web.Request) -> web.Response:
        index, nodes = await self._block(request, self.state.catalog_nodes)
        return _reply(nodes, index)

    async def _catalog_register(self, request: web.Request) -> web.Response:
        self.state.catalog_register(await self._json(request))
        return _reply(True)

    async def _catalog_deregister(self, request: web.Request) -> web.Response:
        self.state.catalog_deregister(await self._json(request))
        return _reply(True)

    async def _agent_services(self, request: web.Request) -> web.Response:
        return _reply(self.state.agent_services())

    async def _agent_checks(self, request: web.Request) -> web.Response:
        return _reply(self.state.agent_checks())

    async def _agent_service_register(self, request: web.Request) -> web.Response:
        replace = go_bool(request.query, "replace-existing-checks")
        self.state.agent_service_register(await self._json(request), replace)
        return _reply(None)

    async def _agent_service_deregister(self, request: web.Request) -> web.Response:
        self.state.agent_service_deregister(request.match_info["id"])
        return _reply(None)

    async def _service_maintenance(self, request: web.Request) -> web.Response:
        q = request.query
        enable = go_bool(q, "enable", required=True)
        self.state.service_maintenance(request.match_info["id"], enable, q.get("reason", ""))
        return _reply(None)

    async def _node_maintenance(self, request: web.Request) -> web.Response:
        q = request.query
        self.state.node_maintenance(go_bool(q, "enable", required=True), q.get("reason", ""))
        return _reply(None)

    async def _agent_check_register(self, request: web.Request) -> web.Response:
        self.state.agent_check_register(await self._json(request))
        return _reply(None)

    async def _agent_check_deregister(self, request: web.Request) -> web.Response:
        self.state.agent_check_deregister(request.match_info["id"])
        return _reply(None)

    async def _check_ttl(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[action]
        self.state.ttl_update(request.match_info["id"], status, request.query.get("note", ""))
        return _reply(None)

    async def _check_update(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Request decode failed: expected a JSON object")
        status, output = body.get("Status") or "", body.get("Output") or ""
        self.state.ttl_update(request.match_info["id"], status, output)
        return _reply(None)

    async def _leader(self, request: web.Request) -> web.Response:
        return _reply("127.0.0.1:8300")

    async def _session_create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
        return _reply({"ID": self.state.session_create(body)})

    async def _session_renew(self, request: web.Request) -> web.Response:
        return _reply([self.state.session_renew(request.match_info["id"])])

    async def _session_destroy(self, request: web.Request) -> web.Response:
        return _reply(self.state.session_destroy(request.match_info["id"]))

    async def _session_info(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        index, sessions = await self._block(request, lambda: self.state.session_read(sid=sid))
        return _reply(sessions, index)

    async def _session_list(self, request: web.Request) -> web.Response:
        index, sessions = await self._block(request, self.state.session_read)
        return _reply(sessions, index)

    async def _session_node(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        index, sessions = await self._block(request, lambda: self.state.session_read(node=node))
        return _reply(sessions, index)
