"""Who may reach what: the admin API's token, the load balancer's health-only listener, and
the check that refuses to expose a surface beyond loopback unprotected.

Surfaces (README, "Control surfaces"):

- the health listener (``--health-addr``): ``GET``/``HEAD /healthz`` and nothing else, for
  the cloud load balancer; may bind 0.0.0.0;
- the admin API (``--http-port`` on ``--admin-host``, loopback by default): /status,
  /canary, commands; with ``JUNCTION_ADMIN_TOKEN`` set, every mutating call needs
  ``Authorization: Bearer <token>`` (compared in constant time), else 401;
- xDS and access logs (``--host``): Envoy's; beyond loopback they need mTLS
  (:mod:`junction.xds.tls`) unless ``--insecure``.

No I/O here but the aiohttp handlers; :func:`exposure_problems` is pure.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from junction.errors import JunctionError

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ExposureError",
    "admin_token",
    "auth_headers",
    "exposure_problems",
    "health_app",
    "is_loopback",
    "token_middleware",
]

ADMIN_TOKEN_ENV: Final = "JUNCTION_ADMIN_TOKEN"
#: Methods that read only; every other method on the admin API is a command.
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ExposureError(JunctionError):
    """A surface would listen beyond loopback unprotected (``junction`` exits 2)."""


def admin_token(environ: dict[str, str] | None = None) -> str | None:
    """The admin token from :data:`ADMIN_TOKEN_ENV` (None when unset or empty)."""
    value = (os.environ if environ is None else environ).get(ADMIN_TOKEN_ENV, "")
    return value or None


def auth_headers(token: str | None = None) -> dict[str, str]:
    """What a client of the admin API sends: the bearer token, when there is one."""
    token = admin_token() if token is None else token
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_loopback(host: str) -> bool:
    """Does binding ``host`` keep a listener on this machine? ("" and 0.0.0.0 do not.)"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_problems(
    *,
    admin_host: str,
    token: str | None,
    envoy_host: str,
    tls: bool,
    insecure: bool,
) -> list[str]:
    """Every reason not to start, one line each (empty: fine). ``envoy_host`` is where
    xDS and the access-log receiver listen; ``tls``: mTLS is configured for them."""
    out = []
    if not is_loopback(admin_host) and not token:
        out.append(
            f"the admin API (/status, /canary, commands) would listen on {admin_host} with "
            f"no token: set {ADMIN_TOKEN_ENV}, or keep --admin-host on loopback"
        )
    if not is_loopback(envoy_host) and not tls and not insecure:
        out.append(
            f"xDS and access logs would listen on {envoy_host} without TLS: give --tls-cert, "
            "--tls-key and --tls-ca (client certificates required), or --insecure to accept "
            "that any client on the network can read the config and speak for any Envoy"
        )
    return out


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_middleware(token: str | None) -> Middleware:
    """aiohttp middleware: with ``token``, a mutating request without
    ``Authorization: Bearer <token>`` gets 401. The comparison is constant-time
    (:func:`hmac.compare_digest` on bytes, whatever the lengths)."""
    expected = f"Bearer {token}".encode() if token else b""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected and request.method not in _READ_METHODS:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": f"this call needs Authorization: Bearer <{ADMIN_TOKEN_ENV}>"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="junction"'},
                )
        return await handler(request)

    return check


def health_app(healthz: Handler) -> web.Application:
    """The load balancer's listener: ``GET``/``HEAD /healthz`` answered by ``healthz``,
    404 for every other method and path (nothing else of the control plane is there)."""

    async def route(request: web.Request) -> web.StreamResponse:
        if request.path == "/healthz" and request.method in ("GET", "HEAD"):
            return await healthz(request)
        return web.Response(status=404, text="not found\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    return app
