"""``GET /metrics`` on an aiohttp application, in Prometheus' text exposition format."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["add_metrics_route", "metrics_route"]


def metrics_route(registry: CollectorRegistry) -> Callable[[web.Application], None]:
    """A route adder (as :class:`junction.status.StatusServer` takes them) for ``/metrics``."""

    def add(app: web.Application) -> None:
        add_metrics_route(app, registry)

    return add


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    async def metrics(request: web.Request) -> web.Response:
        # Collectors read in-memory state only (no I/O), so rendering on the loop is cheap.
        body = generate_latest(registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics)
