"""The typed events of the sans-IO xDS core: what happened on a stream, for logs and status.

Small frozen dataclasses (h11's style). The state types of :mod:`junction.xds.type_state`
return them from their transitions; :class:`~junction.xds.protocol.StreamCore` collects
them in its :class:`~junction.xds.protocol.Output`. ``changes_node`` says whether the event
changed what the node holds or was sent (ACK, NACK, a send, a subscription change): the
node's other streams must then look again (make-before-break reads that state), which the
gRPC adapter does on :attr:`Output.node_changed <junction.xds.protocol.Output.node_changed>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from junction.xds.resources import short_type

__all__ = [
    "Ack",
    "Connected",
    "Disconnected",
    "Event",
    "Nack",
    "Sent",
    "StaleNonce",
    "StreamKind",
    "Subscribed",
    "Superseded",
    "Unsubscribed",
]


@dataclass(frozen=True, slots=True)
class StreamKind:
    """``sotw``/``delta`` and ADS or the one type URL of a per-type service."""

    delta: bool
    type_url: str | None = None

    @property
    def ads(self) -> bool:
        return self.type_url is None

    def __str__(self) -> str:
        variant = "delta" if self.delta else "sotw"
        service = "ads" if self.type_url is None else short_type(self.type_url)
        return f"{variant}/{service}"


@dataclass(frozen=True, slots=True)
class Connected:
    changes_node: ClassVar[bool] = False
    node_id: str
    kind: StreamKind


@dataclass(frozen=True, slots=True)
class Disconnected:
    # An older open stream of the node may take this one's types back: wake them.
    changes_node: ClassVar[bool] = True
    node_id: str
    kind: StreamKind


@dataclass(frozen=True, slots=True)
class Ack:
    changes_node: ClassVar[bool] = True
    type_url: str
    version: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Nack:
    """The node rejected ``version`` (sent with ``nonce``) and stays on ``kept_version``.

    ``origin``/``config_version`` name the config the rejected response was built from.
    """

    changes_node: ClassVar[bool] = True
    type_url: str
    version: str
    nonce: str
    error_detail: str
    origin: str
    config_version: str
    kept_version: str


@dataclass(frozen=True, slots=True)
class StaleNonce:
    """A request answering a response older than the latest one; not an ACK/NACK."""

    changes_node: ClassVar[bool] = False
    type_url: str
    nonce: str
    latest: str


@dataclass(frozen=True, slots=True)
class Superseded:
    """A newer stream of the same node owns this type; this stream ignores it now."""

    changes_node: ClassVar[bool] = False
    type_url: str


@dataclass(frozen=True, slots=True)
class Subscribed:
    changes_node: ClassVar[bool] = True
    type_url: str
    names: tuple[str, ...]
    wildcard: bool


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    changes_node: ClassVar[bool] = True
    type_url: str
    names: tuple[str, ...]
    wildcard: bool


@dataclass(frozen=True, slots=True)
class Sent:
    changes_node: ClassVar[bool] = True
    type_url: str
    version: str
    nonce: str
    resources: int
    removed: int
    restore: bool


Event = (
    Connected
    | Disconnected
    | Ack
    | Nack
    | StaleNonce
    | Superseded
    | Subscribed
    | Unsubscribed
    | Sent
)
