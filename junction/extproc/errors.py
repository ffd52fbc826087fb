"""The decision service's errors: one base, :class:`ExtProcError`, under
:class:`~junction.errors.JunctionError`.

Foreign errors (OSError from a bind, grpc's RuntimeError, orjson's decode error) are
mapped to these where they cross into Junction's code: the adapters and the supervisor.
"""

from __future__ import annotations

from junction.errors import JunctionError

__all__ = ["BadMessage", "ExtProcError"]


class ExtProcError(JunctionError):
    """The decision service failed: could not start (ports, workers), or a message it was
    sent is not one it accepts."""


class BadMessage(ExtProcError):
    """A body that is not a ``ProcessingRequest`` Junction accepts (answered with 400)."""
