"""The publisher takes canary states as one more input: the route weights follow them."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from conftest import eventually
from envoy.config.route.v3 import route_pb2

from junction.canary.policy import policies
from junction.canary.state import Phase
from junction.canary.step import initial_state
from junction.catalog.model import Instance
from junction.config.load import load_config
from junction.xds.publisher import Publisher
from junction.xds.resources import ROUTE, Snapshot

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


class RecordingCache:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def set(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


def api_weights(snapshot: Snapshot) -> dict[str, int]:
    """The /api route's split: the canary's native one, in 10000ths (translate_native)."""
    [resource] = snapshot.resources[ROUTE].values()
    rc = route_pb2.RouteConfiguration.FromString(resource.payload)
    for vh in rc.virtual_hosts:
        for r in vh.routes:
            if r.name == "/api":
                return {c.name: c.weight.value for c in r.route.weighted_clusters.clusters}
    raise AssertionError("no /api route")


async def test_route_weights_follow_the_canary_states() -> None:
    cache = RecordingCache()
    publisher = Publisher(cache, settle=0.0, min_interval=0.0)
    task = asyncio.create_task(publisher.run())
    try:
        publisher.config_text("c.yaml", CONFIG)
        publisher.instances("web-api-perl", [Instance("127.0.0.1", 1)])
        publisher.instances("web-api-go", [Instance("127.0.0.1", 2)])
        await eventually(lambda: len(cache.snapshots) == 1)
        assert api_weights(cache.snapshots[-1]) == {"web-api-go": 1000, "web-api-perl": 9000}

        config = load_config(CONFIG, "c.yaml")
        state = initial_state(policies(config)["web-api"], 0.0)
        publisher.canary_states("file:x", {"web-api": replace(state, weight=50)})
        await eventually(lambda: len(cache.snapshots) == 2)
        assert api_weights(cache.snapshots[-1]) == {"web-api-go": 5000, "web-api-perl": 5000}

        # Only the events changed: the same weights, so nothing is published.
        publisher.canary_states("file:x", {"web-api": replace(state, weight=50, reason="x")})
        await asyncio.sleep(0.1)
        assert len(cache.snapshots) == 2

        rolled_back = replace(state, weight=0, phase=Phase.ROLLED_BACK)
        publisher.canary_states("file:x", {"web-api": rolled_back})
        await eventually(lambda: len(cache.snapshots) == 3)
        assert api_weights(cache.snapshots[-1]) == {"web-api-go": 0, "web-api-perl": 10000}

        publisher.canary_states("file:x", {})  # the state was deleted: the config's weights
        await eventually(lambda: len(cache.snapshots) == 4)
        assert api_weights(cache.snapshots[-1]) == {"web-api-go": 1000, "web-api-perl": 9000}
        assert (
            publisher.config is not None
            and publisher.config.route.cluster["web-api-go"].weight == 10
        )  # type: ignore[union-attr]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
