"""What every client of the drain API shares: the admin token and the drain URL.

The control plane's admin API may require ``Authorization: Bearer <token>``; clients read
the token from ``JUNCTION_ADMIN_TOKEN`` (never from a flag: flags show in ``ps``).
"""

from __future__ import annotations

import os
from urllib.parse import quote

__all__ = ["TOKEN_ENV", "auth_headers", "drain_url"]

#: The admin API's bearer token, when the control plane requires one.
TOKEN_ENV = "JUNCTION_ADMIN_TOKEN"


def auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer ..."}`` when ``JUNCTION_ADMIN_TOKEN`` is set, else ``{}``."""
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def drain_url(http: str, service: str, instance: str) -> str:
    """``http://HOST:PORT/drain/SERVICE/INSTANCE``, both names URL-encoded."""
    return f"http://{http}/drain/{quote(service, safe='')}/{quote(instance, safe='')}"
