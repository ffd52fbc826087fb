"""The ``egress`` section: versioned routing of the application's own outbound calls.

::

    egress:
      listen: {address: 127.0.0.1, port: 8001}    # address defaults to 127.0.0.1
      services: [web-feed]                         # names under `versions`

A request the application sends to the egress listener with ``Host: web-feed`` (or
``web-feed:8001``) goes to web-feed's cluster for the version named by the propagated
header, else to web-feed's default version (:mod:`junction.xds.translate_egress`). The
header's name is the service's ``pin.propagate`` when it has a pin, else
``x-junction-version`` (:func:`egress_header`).

Checks across sections (:func:`cross_check_egress`, called by
:func:`junction.config.load.cross_check`): every listed service is under ``versions``; the
egress port is not the ingress listener's. (That an egress-only service's clusters are
declared is checked with the other version checks, in :mod:`junction.config.decisions`.)
"""

from __future__ import annotations

from collections.abc import Iterator

from junction.config.model import Config

__all__ = ["DEFAULT_EGRESS_HEADER", "cross_check_egress", "egress_header"]

#: The propagated version header when the service has no ``pin`` (``pin.propagate``'s
#: own default).
DEFAULT_EGRESS_HEADER = "x-junction-version"

Path = tuple[str | int, ...]


def egress_header(config: Config, service: str) -> str:
    """The request header whose value picks ``service``'s version on egress."""
    pin = config.versions[service].pin
    return pin.propagate if pin is not None and pin.propagate else DEFAULT_EGRESS_HEADER


def cross_check_egress(config: Config) -> list[tuple[Path, str]]:
    """Problems of the egress section that need other sections, as (path, message)."""
    return list(_cross(config))


def _cross(config: Config) -> Iterator[tuple[Path, str]]:
    egress = config.egress
    if egress is None:
        return
    for i, service in enumerate(egress.services):
        if service not in config.versions:
            yield ("egress", "services", i), f"{service!r} is not a service under versions"
    ingress = config.listener.listen
    wildcard = {"0.0.0.0", "::"}
    if egress.listen.port == ingress.port and (
        egress.listen.address == ingress.address
        or {egress.listen.address, ingress.address} & wildcard
    ):
        yield ("egress", "listen", "port"), f"port {ingress.port} is the ingress listener's"
