"""What every client of the drain API shares: the drain URL (the admin token and its
header come from :mod:`junction.admin`, as for every other admin call)."""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["drain_url"]


def drain_url(http: str, service: str, instance: str) -> str:
    """``http://HOST:PORT/drain/SERVICE/INSTANCE``, both names URL-encoded."""
    return f"http://{http}/drain/{quote(service, safe='')}/{quote(instance, safe='')}"
