"""Scenario 3, experiments: a population of users with stable ids on the experiment's path.

Each request comes from a user drawn at random from ``--population`` ids (sent in
``--key-header``), so every id is seen many times, over different connections. The arm is
read from the decision tag the upstream echoes (``exp=feed:treatment``). Per request, a
Locust failure when: there is no arm, the id's arm differs from the first one it got
(assignment must be sticky), or the arm's version (``--arm-clusters``) did not serve it.
At the end, the shares of *users* per arm must match ``--expect`` (the experiment's
weights) within binomial tolerance.

    locust -f loadtest/scenarios/experiments.py --headless -u 20 -r 20 --run-time 30s \
        --host http://127.0.0.1:8000 --rate 200 [--expect control=70,treatment=30]
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

from _checks import Check, parse_weights, share_check, shares
from _scenario import Scenario, ScenarioUser
from locust import task

SCENARIO = Scenario("experiments")
#: id -> the first arm it was given; any later answer must agree.
ARMS: dict[str, str] = {}
#: ids seen in another arm than their first (each counted once per id).
MOVED: set[str] = set()
#: Answers compared with an earlier answer for the same id: the stickiness check's evidence.
REVISITS = [0]
#: Fewer revisits and "every user kept its arm" fails for lack of evidence.
MIN_REVISITS = 50


@SCENARIO.options
def _options(g: Any) -> None:
    g.add_argument("--experiment", default="feed", help="the experiment's name (in its tag)")
    g.add_argument("--path", default="/api/feed", help="a path the experiment matches")
    g.add_argument("--key-header", default="x-user-id", help="the assignment key's header")
    g.add_argument("--population", type=int, default=1000, help="how many distinct user ids")
    g.add_argument(
        "--expect",
        default="control=70,treatment=30",
        help="arm weights, relative ('none': report only)",
    )
    g.add_argument(
        "--arm-clusters",
        default="control=web-api-perl,treatment=web-api-go",
        help="arm=cluster for arms that route to a version ('': none)",
    )


def _pairs(text: str) -> dict[str, str]:
    return {
        k.strip(): v.strip()
        for k, _, v in (item.partition("=") for item in text.split(",") if "=" in item)
    }


class Member(ScenarioUser):
    """A client acting for many users in turn (like a shared front end)."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.tag = f"exp={opts.experiment}:"
        self.clusters = _pairs(opts.arm_clusters)
        self.path = opts.path.rstrip("/")

    @task
    def feed(self) -> None:
        opts = self.environment.parsed_options
        uid = f"user-{random.randrange(opts.population):06d}"
        path = f"{self.path}/{random.randrange(100)}"
        with self.fetch(path, group="arms", headers={opts.key_header: uid}) as answer:
            decision = answer.decision or ""
            if not decision.startswith(self.tag):
                if answer.status:
                    answer.fail(f"no {opts.experiment} arm (decision {answer.decision!r})")
                return
            arm = decision[len(self.tag) :]
            answer.label(arm)
            first = ARMS.get(uid)
            if first is None:
                ARMS[uid] = first = arm
            else:
                REVISITS[0] += 1
            if arm != first:
                MOVED.add(uid)
                answer.fail(f"a user moved from arm {first} to {arm}")
            elif arm in self.clusters and answer.cluster != self.clusters[arm]:
                answer.fail(f"arm {arm} answered by {answer.cluster!r}, not {self.clusters[arm]!r}")


@SCENARIO.check
def _arms() -> Iterator[Check]:
    timeline, opts = SCENARIO.timeline, SCENARIO.opts
    assert timeline is not None
    expected = parse_weights(opts.expect)
    users = shares("users per arm", Counter(ARMS.values()), expected, unit="users", z=opts.share_z)
    SCENARIO.shares["users per arm"] = users
    # Requests per arm are reported, not checked: ids are few, so the population's own
    # split (not a binomial over requests) sets how far they stray from the weights.
    SCENARIO.shares["arms"] = shares(
        "arms", timeline.group_counts("arms"), expected, z=opts.share_z, checked=False
    )
    SCENARIO.extra["users_seen"] = len(ARMS)
    SCENARIO.extra["users_moved"] = len(MOVED)
    SCENARIO.extra["revisits"] = REVISITS[0]
    detail = (
        f"{len(MOVED)} of {len(ARMS)} users seen in a second arm, over {REVISITS[0]} "
        "answers to a user already assigned"
    )
    if REVISITS[0] < MIN_REVISITS:
        yield Check("every user kept its arm", False, f"too little evidence: {detail}")
    else:
        yield Check("every user kept its arm", not MOVED, detail)
    if expected:
        yield share_check(users)
