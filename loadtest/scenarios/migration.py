"""Scenario 1, migration: mixed ``/api`` and ``/asset`` traffic against the 90/10 perl/go
split of the seed deployment.

Every answer must come from a cluster its prefix may go to (``/api``: the clusters of
``--expect``; ``/asset``: ``--asset-cluster``), else it is a Locust failure. At the end,
``/api``'s per-version shares (from ``x-upstream-service``, the cluster that served) must
match ``--expect`` within binomial tolerance. Requests carry no user id, so each one is
split on its own (per-request random in the decision service, or Envoy's weighted route).

    locust -f loadtest/scenarios/migration.py --headless -u 20 -r 20 --run-time 30s \
        --host http://127.0.0.1:8000 --rate 200 [--expect web-api-perl=90,web-api-go=10]
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from _checks import Check, parse_weights, share_check, shares
from _scenario import Scenario, ScenarioUser
from locust import task

SCENARIO = Scenario("migration")


@SCENARIO.options
def _options(g: Any) -> None:
    g.add_argument(
        "--expect",
        default="web-api-perl=90,web-api-go=10",
        help="expected /api shares by cluster ('none': report only)",
    )
    g.add_argument("--asset-cluster", default="web-asset", help="the cluster serving /asset")


class MigrationUser(ScenarioUser):
    """A browser: four API calls for each static asset."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.expected_api = set(parse_weights(opts.expect))
        self.asset = opts.asset_cluster

    @task(4)
    def api(self) -> None:
        with self.fetch(f"/api/items/{random.randrange(10_000)}", group="/api") as answer:
            if answer.status and self.expected_api and answer.cluster not in self.expected_api:
                allowed = sorted(self.expected_api)
                answer.fail(f"/api answered by {answer.cluster!r}, not one of {allowed}")

    @task
    def asset_file(self) -> None:
        with self.fetch(f"/asset/img/{random.randrange(1000)}.png", group="/asset") as answer:
            if answer.status and answer.cluster != self.asset:
                answer.fail(f"/asset answered by {answer.cluster!r}, not {self.asset!r}")


@SCENARIO.check
def _shares() -> Iterator[Check]:
    timeline, opts = SCENARIO.timeline, SCENARIO.opts
    assert timeline is not None
    expected = parse_weights(opts.expect)
    api = shares("/api", timeline.group_counts("/api"), expected, z=opts.share_z)
    SCENARIO.shares["/api"] = api
    SCENARIO.shares["/asset"] = shares(
        "/asset", timeline.group_counts("/asset"), {opts.asset_cluster: 1.0}, z=opts.share_z
    )
    if expected:
        yield share_check(api)
