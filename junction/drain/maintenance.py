"""The maintenance agent's decisions, without I/O: from GCE maintenance-event values to
drain and undrain commands.

Google Compute Engine announces host maintenance through the metadata server key
``computeMetadata/v1/instance/maintenance-event`` (Google Cloud docs, "Query the metadata
server for maintenance event notices"): ``NONE`` normally, ``MIGRATE_ON_HOST_MAINTENANCE``
about 60 s before a live migration (which degrades the VM for a while) and
``TERMINATE_ON_HOST_MAINTENANCE`` before the VM is stopped, then ``NONE`` again. The agent
drains its instance while the value is anything but ``NONE``.

Never flapping means: only a *value* decides; errors of the metadata server or of the
control plane never change what the agent wants (it keeps the instance as it is and
retries), and it acts once per transition, not once per poll.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = ["AGENT", "NONE", "Action", "AgentState", "after_result", "next_action", "observe"]

NONE = "NONE"
#: The ``by`` of the agent's drains, so a restarted agent recognises (and may undo) its own.
AGENT = "maintenance-agent"


class Action(enum.Enum):
    DRAIN = "drain"
    UNDRAIN = "undrain"


@dataclass(frozen=True, slots=True)
class AgentState:
    """``value``: the last maintenance-event value read (None: none yet); ``drained``: the
    control plane has our drain (as far as we know); ``pending``: the last command failed
    and must be retried."""

    value: str | None = None
    drained: bool = False
    pending: bool = False

    @property
    def wants_drain(self) -> bool | None:
        return None if self.value is None else self.value != NONE


def observe(state: AgentState, value: str) -> AgentState:
    """A value read from the metadata server (stripped; empty counts as ``NONE``)."""
    return replace(state, value=value.strip() or NONE)


def next_action(state: AgentState) -> Action | None:
    """What to send now to make the control plane match the last value read (None:
    nothing: no value yet, or already matching)."""
    wants = state.wants_drain
    if wants is None or wants == state.drained:
        return None
    return Action.DRAIN if wants else Action.UNDRAIN


def after_result(state: AgentState, action: Action, ok: bool) -> AgentState:
    """The state once ``action`` succeeded (``ok``) or failed (retry it later)."""
    if not ok:
        return replace(state, pending=True)
    return replace(state, drained=action is Action.DRAIN, pending=False)
