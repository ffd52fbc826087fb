"""Errors of the canary controller and its state store (:mod:`junction.canary`)."""

from __future__ import annotations

from junction.errors import JunctionError

__all__ = [
    "CanaryError",
    "CommandError",
    "StateConflict",
    "StateFormatError",
    "StoreError",
    "UnknownCanary",
]


class CanaryError(JunctionError):
    """Base class of the canary package's errors."""


class StateFormatError(CanaryError):
    """A stored state is not a valid canary state (the message says which field)."""


class StoreError(CanaryError):
    """The state store cannot be read or written (the message names the store)."""


class StateConflict(StoreError):
    """A compare-and-set lost repeatedly against other writers (other replicas)."""


class CommandError(CanaryError):
    """An operator command does not apply to the canary's phase (``pause`` a rollback...)."""


class UnknownCanary(CanaryError):
    """The service has no canary ramp in the current config."""
