"""The drain commands over HTTP, on the control plane's HTTP port.

=============================================== ==========================================
``GET /drain``                                  every drain (reason, age, who, matches)
``POST /drain/SERVICE/INSTANCE``                drain; JSON body (optional)
                                                ``{"reason": TEXT, "force": bool,
                                                "by": WHO}`` or the same as query
                                                parameters. 200 with what it does; 409
                                                when refused (the message says what would
                                                happen), 400 for a bad name, 503 when the
                                                store cannot be written
``DELETE /drain/SERVICE/INSTANCE``              undrain: 200, or 404 when not drained
=============================================== ==========================================

INSTANCE is the catalog's id of the instance (Consul's service ID) or ``ADDRESS:PORT``
(URL-encoded in the path). Refused without ``force``: a drain that names no instance of the
service, and one that would leave the service with no healthy instance (by the catalog,
and by Envoy's admin API when the control plane knows its Envoy: a host failing its
health checks or ejected as an outlier does not count as healthy). The drain is
written to the shared store; this replica, like every other, applies it from its watch.
Authentication (``Authorization: Bearer``) is the HTTP port's business, not this module's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from junction.drain.model import DrainError, DrainRecord, DrainRefused, check_names
from junction.drain.source import DrainingCatalog
from junction.drain.store import DrainStore, StoreUnavailable

__all__ = ["DrainApi", "EnvoyHosts"]

#: Envoy's view of the hosts (:func:`junction.envoy_admin.host_states`), None when unknown.
EnvoyHosts = Callable[[], Awaitable[dict[str, dict[str, Any]] | None]]

log = logging.getLogger("junction.drain")

_TRUE = ("1", "true", "yes", "on")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
        content_type="application/json",
    )


class DrainApi:
    """Writes drains to ``store`` after checking them against ``catalog``'s view."""

    def __init__(
        self,
        store: DrainStore,
        catalog: DrainingCatalog,
        *,
        envoy_hosts: EnvoyHosts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self._envoy_hosts = envoy_hosts
        self._clock = clock

    async def _envoy_view(self, service: str) -> dict[str, bool] | None:
        if self._envoy_hosts is None:
            return None
        hosts = await self._envoy_hosts()
        if not hosts or service not in hosts:
            return None
        return {addr: bool(h.get("serving")) for addr, h in hosts[service].items()}

    async def drain(
        self,
        service: str,
        instance: str,
        *,
        reason: str = "",
        force: bool = False,
        by: str = "operator",
    ) -> tuple[DrainRecord, str]:
        """Store a drain; returns it and what it does. Raises :class:`DrainRefused` (not
        forced), :class:`DrainError` (bad names) or :class:`StoreUnavailable`."""
        check_names(service, instance)
        envoy = await self._envoy_view(service)
        try:
            effect = self.catalog.check(service, instance, envoy)
            forced = False
        except DrainRefused as exc:
            if not force:
                raise
            effect, forced = f"forced: {exc}", True
        record = DrainRecord(service, instance, reason, self._clock(), by, forced)
        await self.store.put(record)
        log.info("drain %s %s by %s: %s (%s)", service, instance, by, reason or "-", effect)
        return record, effect

    async def undrain(self, service: str, instance: str) -> bool:
        check_names(service, instance)
        found = await self.store.delete(service, instance)
        if found:
            log.info("undrain %s %s", service, instance)
        return found

    # ---- HTTP -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/drain", self._get)
        app.router.add_post("/drain/{service}/{instance}", self._post)
        app.router.add_delete("/drain/{service}/{instance}", self._delete)

    async def _get(self, request: web.Request) -> web.Response:
        return _json(self.catalog.status())

    async def _post(self, request: web.Request) -> web.Response:
        service, instance = request.match_info["service"], request.match_info["instance"]
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            try:
                body = orjson.loads(await request.read() or b"{}")
            except orjson.JSONDecodeError as exc:
                return _json({"error": f"the body is not JSON: {exc}"}, 400)
            if not isinstance(body, dict):
                return _json({"error": "the body must be a JSON object"}, 400)
            params.update(body)
        force = params.get("force", False)
        force = force if isinstance(force, bool) else str(force).lower() in _TRUE
        reason, by = params.get("reason", ""), params.get("by", "operator")
        if not isinstance(reason, str) or not isinstance(by, str):
            return _json({"error": "reason and by must be strings"}, 400)
        try:
            record, effect = await self.drain(
                service, instance, reason=reason[:500], force=force, by=by[:100]
            )
        except DrainRefused as exc:
            return _json({"error": f"{exc}; use --force (force: true) to drain anyway"}, 409)
        except StoreUnavailable as exc:
            return _json({"error": str(exc)}, 503)
        except DrainError as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"drain": record.to_json(), "effect": effect})

    async def _delete(self, request: web.Request) -> web.Response:
        service, instance = request.match_info["service"], request.match_info["instance"]
        try:
            found = await self.undrain(service, instance)
        except StoreUnavailable as exc:
            return _json({"error": str(exc)}, 503)
        except DrainError as exc:
            return _json({"error": str(exc)}, 400)
        if not found:
            return _json({"error": f"{instance} of {service} is not drained"}, 404)
        return _json({"undrained": {"service": service, "instance": instance}})
