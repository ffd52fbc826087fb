"""apply_canary: stored weights onto route weights and the decision service's canary weight."""

from __future__ import annotations

from dataclasses import replace

from junction.canary.apply import apply_canary, canary_weights
from junction.canary.policy import policies
from junction.canary.state import CanaryState, Phase
from junction.canary.step import initial_state
from junction.config.load import load_config
from junction.config.model import Config
from junction.xds.translate import build_route_configuration

CONFIG = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  - domain: [example.com]
    cluster:
      web-api-perl: {prefix: [/api], weight: 90}
      web-api-go: {prefix: [/api], weight: 10}
      web-asset: {prefix: [/asset], weight: 100}
  - domain: [qa.example.com]
    cluster:
      web-api-perl: {prefix: [/api], weight: 50}
      web-api-go: {prefix: [/api], weight: 30}
      web-api-rust: {prefix: [/api], weight: 20}
cluster:
  loadbalancer: {web-api-perl: {}, web-api-go: {}, web-asset: {}, web-api-rust: {}}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    canary: {version: go, weight: 10, ramp: {steps: [5, 50, 100]}}
"""


def config(text: str = CONFIG) -> Config:
    return load_config(text, "c.yaml")


def state(c: Config, weight: int, **changes: object) -> CanaryState:
    s = initial_state(policies(c)["web-api"], 0.0)
    return replace(s, weight=weight, **changes)  # type: ignore[arg-type]


def weights(c: Config) -> list[dict[str, int]]:
    return [{name: rc.weight for name, rc in block.cluster.items()} for block in c.route_blocks()]


def test_no_state_no_change() -> None:
    c = config()
    assert apply_canary(c, {}) is c


def test_the_pair_gets_the_weight_others_are_untouched() -> None:
    c = config()
    out = apply_canary(c, {"web-api": state(c, 50)})
    assert weights(out) == [
        {"web-api-perl": 50, "web-api-go": 50, "web-asset": 100},
        # The pair had 80 of 100 here: the candidate gets half of those 80.
        {"web-api-perl": 40, "web-api-go": 40, "web-api-rust": 20},
    ]
    assert out.versions["web-api"].canary is not None
    assert out.versions["web-api"].canary.weight == 50.0
    assert (
        c.versions["web-api"].canary is not None and c.versions["web-api"].canary.weight == 10.0
    )  # input unchanged


def test_rollback_keeps_the_candidate_listed_at_zero() -> None:
    c = config()
    out = apply_canary(c, {"web-api": state(c, 0, phase=Phase.ROLLED_BACK)})
    assert weights(out)[0] == {"web-api-perl": 100, "web-api-go": 0, "web-asset": 100}
    routes = build_route_configuration(out).virtual_hosts[0].routes
    api = next(r for r in routes if r.name == "/api")
    # The canary's native split (translate_native): candidate first, in 10000ths.
    assert [(w.name, w.weight.value) for w in api.route.weighted_clusters.clusters] == [
        ("web-api-go", 0),
        ("web-api-perl", 10000),
    ]


def test_promoted() -> None:
    c = config()
    out = apply_canary(c, {"web-api": state(c, 100, phase=Phase.PROMOTED)})
    assert weights(out)[0]["web-api-go"] == 100 and weights(out)[0]["web-api-perl"] == 0


def test_a_state_of_another_candidate_or_without_ramp_does_not_apply() -> None:
    c = config()
    stale = state(c, 50, candidate="web-api-rust")
    assert apply_canary(c, {"web-api": stale}) is c
    assert canary_weights(c, {"web-api": stale}) == {}
    manual = config(CONFIG.replace(", ramp: {steps: [5, 50, 100]}", ""))
    assert apply_canary(manual, {"web-api": state(c, 50)}) is manual
    assert apply_canary(c, {"other": state(c, 50, service="other")}) is c


def test_the_same_weights_return_the_same_object() -> None:
    c = config(
        CONFIG.replace("weight: 90}", "weight: 95}", 1)
        .replace(
            "web-api-go: {prefix: [/api], weight: 10}", "web-api-go: {prefix: [/api], weight: 5}"
        )
        .replace("canary: {version: go, weight: 10", "canary: {version: go, weight: 5")
        .replace("weight: 30}", "weight: 4}")
        .replace("perl: {prefix: [/api], weight: 50}", "perl: {prefix: [/api], weight: 76}")
    )
    assert apply_canary(c, {"web-api": state(c, 5)}) is c


def test_a_pair_given_nothing_keeps_nothing() -> None:
    c = config(
        CONFIG.replace(
            "perl: {prefix: [/api], weight: 50}", "perl: {prefix: [/api], weight: 0}"
        ).replace("weight: 30}", "weight: 0}")
    )
    assert weights(apply_canary(c, {"web-api": state(c, 25)}))[1] == {
        "web-api-perl": 0,
        "web-api-go": 0,
        "web-api-rust": 20,
    }
