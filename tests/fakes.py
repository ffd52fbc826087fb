"""Test doubles named for what they stand in for."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from junction.catalog.model import Instance


@dataclass
class RecordingSink:
    """Stands in for the publisher: records what sources report, in order."""

    events: list[tuple[str, ...]] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)
    services: dict[str, tuple[Instance, ...]] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def config_text(self, origin: str, text: str) -> None:
        self.events.append(("config", origin))
        self.texts.append((origin, text))

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        self.events.append(("instances", service))
        self.services[service] = tuple(instances)

    def source_error(self, origin: str, message: str) -> None:
        self.events.append(("error", origin))
        self.errors.append((origin, message))

    def source_ok(self, origin: str) -> None:
        self.events.append(("ok", origin))
