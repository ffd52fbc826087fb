"""The xDS package's errors: one base, :class:`XdsError`, under
:class:`~junction.errors.JunctionError`.

Its subclasses live beside the code that raises them:
:class:`~junction.xds.protocol.XdsProtocolError` (a client broke the protocol; the stream
ends), :class:`~junction.xds.bootstrap.BootstrapError` (an invalid bootstrap option),
:class:`~junction.xds.validate.EnvoyValidationError` (Envoy's ``--mode validate`` refused
a config) and :class:`~junction.xds.server.XdsServerError` (the server could not start).
grpc's errors are mapped to these in :mod:`junction.xds.server`, the only module that
knows gRPC status codes.
"""

from __future__ import annotations

from junction.errors import JunctionError

__all__ = ["XdsError"]


class XdsError(JunctionError):
    """Something in the xDS package failed: see the subclasses."""
