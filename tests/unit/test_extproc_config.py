"""The decision sections of the config: accepted as documented, every mistake named by path."""

from __future__ import annotations

import textwrap

import pytest

from junction.config.errors import ConfigError
from junction.config.load import load_config

BASE = """\
listener:
  listen: {port: 8000}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {prefix: ["/api"], weight: 90}
    web-api-go:   {prefix: ["/api"], weight: 10}
    web-asset:    {prefix: ["/asset"]}
cluster: {loadbalancer: {web-api-perl: {}, web-api-go: {}, web-asset: {}}}
"""

FULL = (
    BASE
    + """\
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    pin:
      header: x-junction-version
      cookie: junction-version
      query: version
      trust: cidr
      trusted-cidrs: [10.0.0.0/8, "::1/128"]
      when-unavailable: reject
      propagate: x-junction-version
    canary: {version: go, weight: 12.5, key: {header: x-user-id, cookie: uid}}
experiments:
  feed-ranking:
    service: web-api
    match: {prefix: /api/feed, methods: [GET], headers: {x-client: ios}}
    key: {header: x-user-id}
    salt: feed-ranking-2026
    sticky-cookie: {name: jx-feed, max-age: 2592000}
    arms: {control: {weight: 50}, treatment: {weight: 50, version: go}}
  tags-only:
    key: random
    arms: {a: {weight: 10}}
decision:
  transport: grpc
  header: x-junction-decision
  failure-mode: closed
  timeout: 0.5
"""
)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(textwrap.dedent(text), "test.yaml")
    return [str(p) for p in info.value.problems]


def test_every_documented_key_is_accepted() -> None:
    config = load_config(FULL, "t")
    sv = config.versions["web-api"]
    assert sv.default == "perl"
    assert sv.clusters == {"perl": "web-api-perl", "go": "web-api-go"}
    assert sv.pin is not None and sv.pin.trust == "cidr"
    assert sv.pin.trusted_cidrs == ("10.0.0.0/8", "::1/128")
    assert sv.pin.when_unavailable == "reject"
    assert sv.canary is not None and sv.canary.weight == 12.5
    assert sv.canary.key.header == "x-user-id" and sv.canary.key.cookie == "uid"
    exp = config.experiments["feed-ranking"]
    assert exp.match.headers == {"x-client": "ios"}
    assert exp.sticky_cookie is not None and exp.sticky_cookie.max_age == 2592000
    assert list(exp.arms) == ["control", "treatment"]  # document order is kept
    assert config.experiments["tags-only"].key.header is None  # `random`
    assert (config.decision.transport, config.decision.failure_mode) == ("grpc", "closed")
    assert config.decision.timeout == 0.5


def test_defaults() -> None:
    config = load_config(BASE, "t")
    assert config.versions == {} and config.experiments == {}
    assert config.decision.transport == "http"
    assert config.decision.header == "x-junction-decision"
    assert config.decision.failure_mode == "open"
    assert config.decision.timeout == 0.2
    pinned = load_config(
        BASE + "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
        " pin: {trust: any}}}\n",
        "t",
    )
    pin = pinned.versions["web-api"].pin
    assert pin is not None
    assert (pin.header, pin.propagate, pin.when_unavailable) == (
        "x-junction-version",
        "x-junction-version",
        "default",
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "versions: {web-api: {default: java, clusters: {perl: web-api-perl}}}",
            "line 10: versions.web-api: default 'java' is not one of clusters' versions",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl}, pin: {}}}",
            "line 10: versions.web-api.pin.trust: required key is missing",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " pin: {trust: cidr}}}",
            "line 10: versions.web-api.pin: trust: cidr needs trusted-cidrs",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " pin: {trust: hmac}}}",
            "line 10: versions.web-api.pin: trust: hmac needs hmac-key-env (the key is read from there)",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " pin: {trust: cidr, trusted-cidrs: [10.0.0.1/8]}}}",
            "versions.web-api.pin.trusted-cidrs: '10.0.0.1/8' is not a network like 10.0.0.0/8",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " pin: {trust: any, header: X-Version}}}",
            "versions.web-api.pin.header: 'X-Version' is not a lowercase HTTP header name",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " pin: {trust: everyone}}}",
            "versions.web-api.pin.trust: must be one of 'any', 'cidr' or 'hmac', got 'everyone'",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " pin: {trust: any, trsut: any}}}",
            "versions.web-api.pin.trsut: unknown key (did you mean 'trust'?)",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl, go: web-api-go},"
            " canary: {version: go, weight: 10.005}}}",
            "versions.web-api.canary.weight: must be a percentage 0..100 with at most two decimals",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " canary: {version: perl, weight: 5}}}",
            "versions.web-api: the canary version is the default",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl, go: web-api-perl}}}",
            "versions.web-api.clusters: maps two versions to the same cluster",
        ),
        (
            "experiments: {e: {arms: {a: {weight: 60}, b: {weight: 50}}}}",
            "experiments.e.arms: arm weights sum to 110%, more than 100%",
        ),
        (
            "experiments: {e: {match: {prefix: api}, arms: {a: {weight: 5}}}}",
            "experiments.e.match.prefix: prefix 'api' must start with '/'",
        ),
        (
            "experiments: {e: {sticky-cookie: {name: 'a b'}, arms: {a: {weight: 5}}}}",
            "experiments.e.sticky-cookie.name: 'a b' is not a cookie name (an HTTP token)",
        ),
        (
            "experiments: {e: {arms: {}}}",
            "experiments.e.arms: must not be empty",
        ),
        (
            "decision: {transport: tcp}",
            "decision.transport: must be one of 'http' or 'grpc', got 'tcp'",
        ),
        (
            "decision: {timeout: 30}",
            "decision.timeout: must be at most 10 seconds",
        ),
        (
            "decision: {failure-mod: open}",
            "decision.failure-mod: unknown key (did you mean 'failure-mode'?)",
        ),
    ],
)
def test_bad_values_are_named_by_path(section: str, expected: str) -> None:
    found = problems(BASE + section + "\n")
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl, rust: web-api-rust}}}",
            "versions.web-api.clusters.rust: cluster 'web-api-rust' is not routed to by any route",
        ),
        (
            "versions:\n  a: {default: x, clusters: {x: web-api-perl}}\n"
            "  b: {default: y, clusters: {y: web-api-perl}}",
            "versions.b.clusters.y: cluster 'web-api-perl' is already a version of 'a'",
        ),
        (
            "versions:\n  a: {default: x, clusters: {x: web-api-perl}}\n"
            "  b: {default: y, clusters: {y: web-api-go}}",
            "route.cluster: prefix '/api' mixes clusters of versioned services 'a' and 'b'",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " pin: {trust: any, header: x-junction-cluster}}}",
            "versions.web-api.pin.header: x-junction-cluster is reserved",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl},"
            " pin: {trust: any}}}\ndecision: {header: x-junction-version}",
            "decision.header: 'x-junction-version' is also a pin header of 'web-api'",
        ),
        (
            "experiments: {e: {service: nope, arms: {a: {weight: 5}}}}",
            "experiments.e.service: 'nope' is not a service under versions",
        ),
        (
            "experiments: {e: {arms: {a: {weight: 5, version: go}}}}",
            "experiments.e.arms.a.version: needs the experiment's service",
        ),
        (
            "versions: {web-api: {default: perl, clusters: {perl: web-api-perl}}}\n"
            "experiments: {e: {service: web-api, arms: {a: {weight: 5, version: go}}}}",
            "experiments.e.arms.a.version: 'go' is not a version of 'web-api'",
        ),
    ],
)
def test_cross_section_mistakes_are_named_by_path(section: str, expected: str) -> None:
    found = problems(BASE + section + "\n")
    assert any(expected in p for p in found), found


def test_the_seed_example_maps_web_api_versions() -> None:
    from pathlib import Path

    seed = Path(__file__).resolve().parents[2] / "examples" / "seed.yaml"
    config = load_config(seed.read_text(), "seed.yaml")
    sv = config.versions["web-api"]
    assert sv.clusters == {"perl": "web-api-perl", "go": "web-api-go"}
    assert sv.default == "perl"
    assert sv.pin is not None and sv.pin.header == "x-junction-version"
