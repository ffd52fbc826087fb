"""The one desired-state reducer: last good config, with the canary applied."""

from __future__ import annotations

from dataclasses import replace

from junction.canary.desired import DesiredState
from junction.canary.policy import policies
from junction.canary.step import initial_state
from junction.config.load import load_config

CONFIG = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
cluster: {loadbalancer: {web-api-perl: {}, web-api-go: {}}}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    canary: {version: go, weight: 10, ramp: {steps: [5, 50, 100]}}
"""
BAD = CONFIG.replace("port: 8000", "port: 0")


def _weights(state: DesiredState) -> dict[str, int]:
    config = state.desired()
    assert config is not None
    [block] = config.route_blocks()
    return {name: rc.weight for name, rc in block.cluster.items()}


def test_accept_keep_and_reject() -> None:
    clock = iter(range(100))
    state = DesiredState(clock=lambda: float(next(clock)))
    assert state.desired() is None and state.config is None
    first = state.offer("c.yaml", CONFIG)
    assert first.outcome == "accepted" and state.good is not None
    good = state.good
    assert (good.origin, good.version, good.accepted_at) == ("c.yaml", first.version, 0.0)
    # A bad document: rejected with its path-named problem; the last good config stays.
    bad = state.offer("c.yaml", BAD)
    assert bad.outcome == "rejected" and "listener.listen.port" in bad.message
    assert state.good is good and state.desired() is good.config
    assert state.error is not None and state.error["message"] == bad.message
    # The good text again: nothing changes, and the error is cleared.
    again = state.offer("c.yaml", CONFIG)
    assert again.outcome == "unchanged" and state.good is good and state.error is None


def test_the_canary_applies_and_the_same_weights_give_the_same_object() -> None:
    state = DesiredState()
    state.offer("c.yaml", CONFIG)
    assert _weights(state) == {"web-api-perl": 90, "web-api-go": 10}
    assert state.canary_weights() == {}
    canary = initial_state(policies(load_config(CONFIG, "c.yaml"))["web-api"], 0.0)
    state.set_canary({"web-api": replace(canary, weight=50)})
    assert _weights(state) == {"web-api-perl": 50, "web-api-go": 50}
    assert state.canary_weights() == {"web-api": 50}
    applied = state.desired()
    state.set_canary({"web-api": replace(canary, weight=50, reason="only the reason")})
    assert state.desired() is applied  # an incremental translator keeps its cache
    assert state.config is not applied  # the config as written stays apart
    state.set_canary({})
    assert state.desired() is state.config
