"""Errors of the access-log receiver (:mod:`junction.als`).

gRPC status codes appear only in :mod:`junction.als.receiver`; everything else raises
these. A rejected ALS message is not an error here: it is counted and the stream is ended
with a gRPC status by the adapter.
"""

from __future__ import annotations

from junction.errors import JunctionError

__all__ = ["AlsError", "ReportError", "SinkError"]


class AlsError(JunctionError):
    """Base class of the receiver's errors (bad settings, a port that cannot be bound)."""


class SinkError(AlsError):
    """A sink cannot be opened or written; the message names the sink's path."""


class ReportError(AlsError):
    """``junction report`` cannot read its input; the message names the file and line."""
