"""Scenario 2, pinned: staff pinned to a version by header and QA pinned by cookie, mixed
with unpinned visitors.

Every pinned answer must come from its version's cluster (``--versions``): one that does
not is a Locust failure naming the pin, the cluster that answered and the decision tag, so
a single broken pin fails the run. Unpinned visitors' shares are checked against
``--expect`` (the split pins must not disturb). Each staff/QA user keeps one version for the
whole run (``--pin-to`` in turn: the first go, the next perl, ...).

    locust -f loadtest/scenarios/pinned.py --headless -u 20 -r 20 --run-time 30s \
        --host http://127.0.0.1:8000 --rate 200 [--pin-header x-junction-version --pin-cookie jv]
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

from _checks import Check, parse_weights, share_check, shares
from _scenario import Scenario, ScenarioUser
from locust import task

SCENARIO = Scenario("pinned")
#: Pinned requests needed per way of pinning before "every pin held" may pass.
MIN_PINNED = 20


@SCENARIO.options
def _options(g: Any) -> None:
    g.add_argument(
        "--versions",
        default="perl=web-api-perl,go=web-api-go",
        help="version=cluster for every version a pin may name",
    )
    g.add_argument("--pin-to", default="go,perl", help="versions staff/QA pin to, in turn")
    g.add_argument("--pin-header", default="x-junction-version", help="the pin header")
    g.add_argument("--pin-cookie", default="jv", help="the pin cookie ('': no cookie pins)")
    g.add_argument(
        "--expect",
        default="web-api-perl=90,web-api-go=10",
        help="unpinned shares by cluster ('none': report only)",
    )


def _versions(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        version, _, cluster = item.strip().partition("=")
        if version and cluster:
            out[version] = cluster
    return out


_turn = itertools.count()


class _PinnedUser(ScenarioUser):
    abstract = True
    via = ""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        choices = [v.strip() for v in opts.pin_to.split(",") if v.strip()]
        self.version = choices[next(_turn) % len(choices)]
        self.cluster = _versions(opts.versions)[self.version]

    def pin_headers(self) -> dict[str, str]:
        raise NotImplementedError

    @task
    def api(self) -> None:
        group = f"pinned {self.via} {self.version}"
        path = f"/api/items/{random.randrange(10_000)}"
        with self.fetch(path, group=group, headers=self.pin_headers()) as answer:
            if answer.status and answer.cluster != self.cluster:
                answer.fail(
                    f"pinned to {self.version} by {self.via}, answered by {answer.cluster!r} "
                    f"(decision {answer.decision!r})"
                )


class StaffUser(_PinnedUser):
    """Staff pin with a header (``x-junction-version: go``)."""

    via = "header"

    def pin_headers(self) -> dict[str, str]:
        return {self.environment.parsed_options.pin_header: self.version}


class QaUser(_PinnedUser):
    """QA pin with a cookie (``Cookie: jv=go``) next to an ordinary session cookie."""

    via = "cookie"

    def on_start(self) -> None:
        super().on_start()
        if not self.environment.parsed_options.pin_cookie:
            self.via = "header"  # --pin-cookie '': a deployment without cookie pins

    def pin_headers(self) -> dict[str, str]:
        opts = self.environment.parsed_options
        if not opts.pin_cookie:
            return {opts.pin_header: self.version}
        return {"Cookie": f"session=qa{id(self) % 997}; {opts.pin_cookie}={self.version}"}


class Visitor(ScenarioUser):
    """Everyone else: no pin; the canary split or the weighted route decides."""

    weight = 3

    @task
    def api(self) -> None:
        with self.fetch(f"/api/items/{random.randrange(10_000)}", group="unpinned"):
            pass


@SCENARIO.check
def _pins() -> Iterator[Check]:
    timeline, opts = SCENARIO.timeline, SCENARIO.opts
    assert timeline is not None
    ways = ["header"] + (["cookie"] if opts.pin_cookie else [])
    seen = {group for group, _ in timeline.total.groups}
    for via in ways:
        groups = sorted(g for g in seen if g.startswith(f"pinned {via} "))
        total = sum(sum(timeline.group_counts(g).values()) for g in groups)
        failed = sum(timeline.group_failures(g) for g in groups)
        for g in groups:
            version = g.rsplit(" ", 1)[1]
            cluster = _versions(opts.versions).get(version, "?")
            SCENARIO.shares[g] = shares(g, timeline.group_counts(g), {cluster: 1.0})
        name = f"every {via}-pinned answer from its version"
        if total < MIN_PINNED:
            yield Check(name, False, f"only {total} pinned requests (need {MIN_PINNED})")
        else:
            yield Check(name, failed == 0, f"{failed} of {total} pinned by {via} went astray")
    expected = parse_weights(opts.expect)
    unpinned = shares("unpinned", timeline.group_counts("unpinned"), expected, z=opts.share_z)
    SCENARIO.shares["unpinned"] = unpinned
    if expected:
        yield share_check(unpinned)
