"""The one small interface every source of config and instances implements.

A source runs until cancelled and reports what it sees to a :class:`SourceSink`. It never
validates config itself and never stops on a bad value: it reports the raw text, or the
error, and carries on watching; the publisher keeps the last good state. Adding another
catalog (Kubernetes, an HTTP API) is one new module implementing :class:`CatalogSource`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Protocol

from junction.catalog.model import Instance

__all__ = ["CatalogSource", "ConfigSource", "SourceSink"]


class SourceSink(Protocol):
    """What sources report to (the publisher implements it). Calls are cheap and never raise."""

    def config_text(self, origin: str, text: str) -> None:
        """New config text from ``origin`` (a file path, or ``consul:KEY``)."""

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        """The complete current instance list of ``service``."""

    def source_error(self, origin: str, message: str) -> None:
        """``origin`` could not be read (unreachable, unparsable instances...)."""

    def source_ok(self, origin: str) -> None:
        """``origin`` was read successfully again (clears a previous error)."""


class ConfigSource(abc.ABC):
    """Watches one config document."""

    #: Where the document lives, as shown in errors and /status (``examples/seed.yaml``,
    #: ``consul:junction/config``).
    origin: str

    @abc.abstractmethod
    async def run(self, sink: SourceSink) -> None:
        """Report the current text at once, then every change, until cancelled."""


class CatalogSource(abc.ABC):
    """Watches the instances of a changing set of services."""

    origin: str

    @abc.abstractmethod
    def watch(self, services: frozenset[str]) -> None:
        """Set the services to watch (called whenever the config's cluster set changes).

        Newly named services are reported to the sink soon after; services no longer
        named stop being watched.
        """

    @abc.abstractmethod
    async def run(self, sink: SourceSink) -> None:
        """Report instances of the watched services, then every change, until cancelled."""
