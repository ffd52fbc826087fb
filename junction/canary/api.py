"""The canary's operator surface: status and commands, in Python and over HTTP.

Mounted on the control plane's HTTP port (and on ``junction als serve``'s):

=========================================== ==============================================
``GET /canary``                             every ramp: policy, stored state, its events
``GET /canary/SERVICE``                     one ramp (404 when the config has none)
``POST /canary/SERVICE/pause|resume|        the command (:func:`~junction.canary.step.
promote|abort``                             apply_command`); 200 with the new state,
                                            409 when it does not apply to the phase,
                                            503 when the store cannot be written
=========================================== ==============================================

Commands are written to the state store with CAS (retried on a lost race), so they reach
every replica and the controller exactly like the controller's own decisions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from junction.canary.errors import CanaryError, CommandError, StateConflict, UnknownCanary
from junction.canary.monitor import read
from junction.canary.policy import CanaryPolicy, policies
from junction.canary.source import CanaryBoard
from junction.canary.state import CanaryState
from junction.canary.step import COMMANDS, apply_command, initial_state
from junction.canary.store import StateStore
from junction.config.model import Config

__all__ = ["CanaryApi", "policy_json"]

log = logging.getLogger("junction.canary")


def policy_json(policy: CanaryPolicy) -> dict[str, Any]:
    return {
        "version": policy.version,
        "baseline_version": policy.baseline_version,
        "baseline": policy.baseline,
        "candidate": policy.candidate,
        "steps": list(policy.steps),
        "interval": policy.interval,
        **policy.thresholds(),
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
        content_type="application/json",
    )


class CanaryApi:
    """Reads states from ``board`` (kept current by a CanaryStateSource); writes commands
    to ``store``; policies come from ``config()`` (the last good config)."""

    def __init__(
        self,
        store: StateStore,
        board: CanaryBoard,
        config: Callable[[], Config | None],
        *,
        clock: Callable[[], float] = time.time,
        attempts: int = 5,
    ) -> None:
        self.store = store
        self.board = board
        self._config = config
        self._clock = clock
        self._attempts = attempts

    def _policies(self) -> dict[str, CanaryPolicy]:
        config = self._config()
        return policies(config) if config is not None else {}

    def _service_json(
        self, policy: CanaryPolicy | None, state: CanaryState | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": policy_json(policy) if policy else None}
        if state is not None:
            out["state"] = {
                k: v for k, v in state.to_json().items() if k not in ("events", "stats")
            }
            out["events"] = [e.to_json() for e in state.events]
            if policy is not None and state.stats is not None:
                # The tests as last stored (decisions and checkpoints; the live values of
                # every tick are in the controller's /status).
                settings = policy.test_settings()
                out["tests"] = {
                    "last_tick": state.stats.last_tick,
                    **read(state.stats).to_json(settings),
                }
            if policy is not None:
                out["step"] = policy.step_index(state.weight)
                out["applies"] = (state.baseline, state.candidate) == (
                    policy.baseline,
                    policy.candidate,
                )
        else:
            out["state"] = None
            out["events"] = []
        return out

    def status(self) -> dict[str, Any]:
        """Every ramp in the config and every stored state (the body of ``GET /canary``)."""
        pols = self._policies()
        states = self.board.states
        return {
            "store": self.store.origin,
            "error": self.board.error,
            "services": {
                name: self._service_json(pols.get(name), states.get(name))
                for name in sorted(set(pols) | set(states))
            },
        }

    async def command(self, service: str, action: str, *, by: str = "operator") -> CanaryState:
        """Apply an operator command; raises :class:`UnknownCanary`, :class:`CommandError`,
        :class:`StateConflict` or :class:`StoreError`."""
        if action not in COMMANDS:
            raise CommandError(f"unknown command {action!r} (one of {', '.join(COMMANDS)})")
        policy = self._policies().get(service)
        if policy is None:
            raise UnknownCanary(f"{service!r} has no canary ramp in the current config")
        for _ in range(self._attempts):
            stored = await self.store.get(service)
            now = self._clock()
            state = stored.state if stored is not None else None
            if state is None or (state.baseline, state.candidate) != (
                policy.baseline,
                policy.candidate,
            ):
                state = initial_state(policy, now, previous=state)
            new = apply_command(state, action, policy, now, by=by)
            if await self.store.put(new, index=stored.index if stored else 0):
                log.info("canary %s: %s", service, new.reason)
                return new
        raise StateConflict(
            f"{service}: the state kept changing under the command ({self._attempts} tries)"
        )

    # ---- HTTP -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/canary", self._get_all)
        app.router.add_get("/canary/{service}", self._get_one)
        app.router.add_post("/canary/{service}/{action}", self._post)

    async def _get_all(self, request: web.Request) -> web.Response:
        return _json(self.status())

    async def _get_one(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        body = self.status()["services"].get(service)
        if body is None:
            return _json({"error": f"{service!r} has no canary"}, 404)
        return _json({"service": service, **body})

    async def _post(self, request: web.Request) -> web.Response:
        service, action = request.match_info["service"], request.match_info["action"]
        try:
            state = await self.command(service, action, by=request.query.get("by", "operator"))
        except UnknownCanary as exc:
            return _json({"error": str(exc)}, 404)
        except CommandError as exc:
            return _json({"error": str(exc)}, 409 if action in COMMANDS else 400)
        except CanaryError as exc:  # the store: unreachable, or a CAS that kept losing
            return _json({"error": str(exc)}, 503)
        return _json({"service": service, "state": state.to_json()})
