"""The root of Junction's error hierarchy.

Every error Junction raises on purpose derives from :class:`JunctionError`; each package
(config, catalog, xds, ...) subclasses it once, so callers can catch one package's errors
without catching programming mistakes. Foreign errors (YAML, gRPC, aiohttp) are mapped to
these at the package boundary.
"""

from __future__ import annotations

__all__ = ["JunctionError"]


class JunctionError(Exception):
    """Base class of every error Junction raises deliberately."""
