"""The desired state: the last good config, with the canary applied. One reducer, two readers.

Both the xDS publisher (:class:`junction.xds.publisher.Publisher`: Envoy's route weights)
and the decision service's supervisor (:mod:`junction.extproc.service`: the sticky canary
buckets) hold one :class:`DesiredState` and feed it what their sources report: config text
(:meth:`~DesiredState.offer`) and canary states (:meth:`~DesiredState.set_canary`). They read
:meth:`~DesiredState.desired`, so the two cannot disagree on what "the config now" is:

- a document that does not load is rejected with its path-named problems; the last good
  config stays (:attr:`~DesiredState.good`) and the problem is kept for ``/status``;
- the same text again (same :func:`~junction.config.load.config_version`) changes nothing;
- the canary states apply through :func:`~junction.canary.apply.apply_canary`; the same
  weights on the same config give the same ``Config`` object, so an incremental
  translator keeps its cache.

No I/O, no logging: callers log and act on the :class:`Offer` they get back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from junction.canary.apply import apply_canary, canary_weights
from junction.canary.state import CanaryState
from junction.config.errors import ConfigError
from junction.config.load import config_version, load_config
from junction.config.model import Config

__all__ = ["DesiredState", "GoodConfig", "Offer"]


@dataclass(frozen=True)
class GoodConfig:
    """A config that loaded, where it came from, its version and when it was accepted."""

    config: Config
    origin: str
    version: str
    accepted_at: float


@dataclass(frozen=True)
class Offer:
    """What :meth:`DesiredState.offer` made of a document: ``accepted`` (a new good config),
    ``unchanged`` (the good config's own text) or ``rejected`` (``message`` says why)."""

    outcome: Literal["accepted", "unchanged", "rejected"]
    version: str
    message: str = ""


class DesiredState:
    """The one owner of "last good config, with the canary applied" (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.good: GoodConfig | None = None
        #: The last rejection (origin, version, message, at) until a document is accepted.
        self.error: dict[str, Any] | None = None
        self.canary: dict[str, CanaryState] = {}
        # (config, the canary weights applied, the resulting config), see desired().
        self._applied: tuple[Config, dict[str, int], Config] | None = None

    def offer(self, origin: str, text: str) -> Offer:
        """Config text from ``origin``: accept it, or keep the last good config."""
        version = config_version(text)
        if self.good is not None and self.good.version == version:
            self.error = None
            return Offer("unchanged", version)
        try:
            config = load_config(text, origin)
        except ConfigError as exc:
            message = exc.render()
            self.reject(origin, version, message)
            return Offer("rejected", version, message)
        self.good = GoodConfig(config, origin, version, self._clock())
        self.error = None
        return Offer("accepted", version)

    def reject(self, origin: str, version: str, message: str) -> None:
        """``version`` from ``origin`` is not usable (also: its snapshot failed checks)."""
        self.error = {"origin": origin, "version": version, "message": message, "at": self._clock()}

    def set_canary(self, states: Mapping[str, CanaryState]) -> None:
        """The stored canary states (complete)."""
        self.canary = dict(states)

    @property
    def config(self) -> Config | None:
        """The last good config as written (no canary applied)."""
        return None if self.good is None else self.good.config

    def canary_weights(self) -> dict[str, int]:
        """Service -> the candidate weight that applies to the good config."""
        good = self.good
        return {} if good is None else canary_weights(good.config, self.canary)

    def desired(self) -> Config | None:
        """The last good config with the canary applied (None before any good config)."""
        good = self.good
        if good is None:
            return None
        weights = canary_weights(good.config, self.canary)
        applied = self._applied
        if applied is None or applied[0] is not good.config or applied[1] != weights:
            applied = (good.config, weights, apply_canary(good.config, self.canary))
            self._applied = applied
        return applied[2]
