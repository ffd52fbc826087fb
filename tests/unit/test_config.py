"""The config model: the seed format accepted as written, every bad input named by path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from junction.config.errors import ConfigError
from junction.config.load import config_version, load_config
from junction.config.model import PrefixRoute

ROOT = Path(__file__).resolve().parents[2]
SEED = (ROOT / "examples" / "seed.yaml").read_text()

MINIMAL = """\
listener:
  listen: {protocol: tcp, address: 0.0.0.0, port: 8000}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {prefix: ["/api"], weight: 90}
    web-api-go:   {prefix: ["/api"], weight: 10}
cluster:
  loadbalancer: {web-api-perl: {}, web-api-go: {}}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(textwrap.dedent(text), "test.yaml")
    return [str(p) for p in info.value.problems]


def test_seed_example_is_accepted_as_written() -> None:
    config = load_config(SEED, "seed.yaml")
    (vhost,) = config.virtual_hosts()
    assert vhost.domains == ("example.com", "www.example.com")
    assert vhost.host_rewrite == "www.example.com"
    assert vhost.routes == (
        PrefixRoute("/asset", (("web-asset", 100),)),
        PrefixRoute("/api", (("web-api-go", 10), ("web-api-perl", 90))),
    )
    assert config.cluster_names() == ("web-api-go", "web-api-perl", "web-asset")
    hc = config.load_balancer("web-api-perl").health_check
    assert hc is not None
    assert (hc.host, hc.value, hc.status_ranges()) == (
        "www.example.com",
        "/health_check",
        ((200, 201),),
    )
    assert (hc.timeout, hc.interval, hc.healthy, hc.unhealthy) == (3.0, 1.0, 3, 4)
    assert config.eds("web-api-perl").balancing_policy == "locality"
    assert config.eds("web-asset").balancing_policy == "none"
    assert config.listener.timeout.connect == 1.0


def test_spec_snippet_needs_only_its_undeclared_clusters_declared() -> None:
    # SPEC.md section 1 verbatim (kept under tests/golden: tests read nothing outside the
    # repository), including its comments and the eds `port: 80`. Its routes name two
    # clusters no section declares: each is named, with the fix; declared with `{}`, the
    # snippet is accepted as written.
    snippet = (ROOT / "tests" / "golden" / "spec-section1.yaml").read_text()
    found = problems(snippet)
    assert [p.split(": cluster")[0] for p in found] == [
        "line 9: route.cluster.web-api-go",
        "line 10: route.cluster.web-asset",
    ]
    assert "'cluster.loadbalancer.web-asset: {}'" in found[1]
    declared = snippet.replace(
        "endpoint:\n", "    web-api-go: {}\n    web-asset: {}\nendpoint:\n", 1
    )
    config = load_config(declared, "SPEC.md")
    assert config.eds("web-api-perl").port == 80
    assert config.load_balancer("web-api-perl").discovery == "eds"
    assert config.load_balancer("web-asset") == config.load_balancer("web-api-go")


def test_a_route_to_an_undeclared_cluster_names_the_route_and_the_closest_name() -> None:
    typo = MINIMAL.replace("web-api-go:   {prefix", "web-api-og:   {prefix")
    assert problems(typo) == [
        "line 7: route.cluster.web-api-og: cluster 'web-api-og' is declared neither under "
        "cluster.loadbalancer nor under endpoint.eds; did you mean 'web-api-go'? (declare "
        "it, e.g. 'cluster.loadbalancer.web-api-og: {}' for the defaults)"
    ]
    # Declared under endpoint.eds only is declared too; nothing close: no suggestion.
    eds_only = MINIMAL.replace("web-api-go: {}", "other: {}") + (
        "endpoint: {eds: {web-api-go: {port: 80}}}\n"
    )
    assert load_config(eds_only, "t").eds("web-api-go").port == 80
    far = problems(MINIMAL.replace("web-api-go:   {prefix", "zzz:   {prefix"))
    assert len(far) == 1 and "did you mean" not in far[0] and "route.cluster.zzz" in far[0]
    # In a list of route blocks, the block's index is in the path.
    many = problems(
        "listener: {listen: {port: 8000}}\nroute:\n"
        "  - domain: [a]\n    cluster: {web: {prefix: [/]}}\n"
        "  - domain: [b]\n    cluster: {webb: {prefix: [/]}}\n"
        "cluster: {loadbalancer: {web: {}}}\n"
    )
    assert len(many) == 1 and many[0].startswith("line 6: route[1].cluster.webb: ")
    assert "did you mean 'web'?" in many[0]


def test_longest_prefix_first_and_defaults() -> None:
    config = load_config(
        MINIMAL.replace(
            '    web-api-go:   {prefix: ["/api"], weight: 10}\n',
            '    web-api-go:   {prefix: ["/api", "/api/foobar"], weight: 10}\n'
            '    web-asset:    {prefix: ["/"]}\n',
        ).replace("web-api-go: {}", "web-api-go: {}, web-asset: {}"),
        "t",
    )
    routes = config.virtual_hosts()[0].routes
    assert [r.prefix for r in routes] == ["/api/foobar", "/api", "/"]
    assert routes[0].clusters == (("web-api-go", 10),)
    assert routes[2].clusters == (("web-asset", 100),)
    # A cluster declared with `{}` gets the defaults.
    assert config.load_balancer("web-asset").lb_policy == "round-robin"


def test_route_list_gives_one_virtual_host_per_domain_set() -> None:
    config = load_config(
        """
listener: {listen: {port: 8000}}
route:
  - domain: [qa1.example.com]
    cluster: {web-qa1: {prefix: [/]}}
  - domain: [qa2.example.com]
    host-header: qa2.internal
    cluster: {web-qa2: {prefix: [/]}}
cluster: {loadbalancer: {web-qa1: {}, web-qa2: {}}}
""",
        "t",
    )
    hosts = config.virtual_hosts()
    assert [h.domains for h in hosts] == [("qa1.example.com",), ("qa2.example.com",)]
    assert hosts[1].host_rewrite == "qa2.internal"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("weight: 10", "weight: 101"),
            "line 7: route.cluster.web-api-go.weight: must be an integer 0..100",
        ),
        (
            ("weight: 10", "weight: ten"),
            "line 7: route.cluster.web-api-go.weight: must be an integer 0..100",
        ),
        (
            ("weight: 10", "weight: 1.5"),
            "line 7: route.cluster.web-api-go.weight: must be an integer 0..100",
        ),
        (
            ("weight: 10", "weight: true"),
            "line 7: route.cluster.web-api-go.weight: must be an integer 0..100",
        ),
        (
            ("port: 8000", "port: 70000"),
            "line 2: listener.listen.port: must be an integer 1..65535",
        ),
        (
            ("address: 0.0.0.0", "address: localhost"),
            "line 2: listener.listen.address: must be an IP address",
        ),
        (
            ("protocol: tcp", "protocol: udp"),
            "line 2: listener.listen.protocol: must be one of 'tcp', got 'udp'",
        ),
        (
            ('["/api"], weight: 10', '["api"], weight: 10'),
            "line 7: route.cluster.web-api-go.prefix: prefix 'api' must start with '/'",
        ),
        (('domain: ["example.com"]', "domain: []"), "line 4: route.domain: must not be empty"),
        (
            ('domain: ["example.com"]', "domian: [x]"),
            "line 4: route.domian: unknown key (did you mean 'domain'?)",
        ),
        (
            ("web-api-go: ", "web api go: "),
            "line 6: route.cluster: cluster name 'web api go' must be letters, digits",
        ),
    ],
)
def test_bad_values_are_named_by_path_and_line(edit: tuple[str, str], expected: str) -> None:
    text = MINIMAL.replace(*edit)
    assert text != MINIMAL
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_not_just_the_first() -> None:
    found = problems(
        """
listener:
  listen: {port: 0}
  timout: {connect: 1}
route:
  domain: [a]
  host-heder: x
  cluster:
    web: {prefix: [/], weight: 190}
cluster:
  loadbalancer:
    web:
      lb-policy: round-robbin
      health-check: {timeout: 0, interval: 1, healthy: 3, unhealthy: 4, expected: [700]}
"""
    )
    joined = "\n".join(found)
    for fragment in (
        "line 3: listener.listen.port: must be an integer 1..65535",
        "line 4: listener.timout: unknown key (did you mean 'timeout'?)",
        "line 7: route.host-heder: unknown key (did you mean 'host-header'?)",
        "line 9: route.cluster.web.weight: must be an integer 0..100",
        "line 13: cluster.loadbalancer.web.lb-policy: must be one of",
        "line 14: cluster.loadbalancer.web.health-check.timeout: must be a number of seconds",
        "line 14: cluster.loadbalancer.web.health-check.expected: 700 is not an HTTP status code",
    ):
        assert fragment in joined, joined
    lines = [int(p.split(":")[0].split()[1]) for p in found]
    assert lines == sorted(lines)


def test_cross_section_checks() -> None:
    found = problems(MINIMAL + "endpoint:\n  eds:\n    web-api-prel: {port: 80}\n")
    assert found == [
        "line 12: endpoint.eds.web-api-prel: no route or cluster.loadbalancer entry names it"
    ]
    found = problems(MINIMAL.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"))
    assert found == [
        "line 6: route.cluster.web-api-perl.weight: prefix '/api': the weights of its clusters sum to 0"
    ]
    found = problems(
        """
listener: {listen: {port: 8000}}
route:
  - domain: [a.example]
    cluster: {x: {prefix: [/]}}
  - domain: [b.example, a.example]
    cluster: {y: {prefix: [/]}}
cluster: {loadbalancer: {x: {}, y: {}}}
"""
    )
    assert found == ["line 6: route[1].domain[1]: 'a.example' is already served by route[0]"]
    # A config cluster may not take the name of a bootstrap cluster (Envoy rejects all of CDS).
    found = problems(MINIMAL.replace("web-api-go:  ", "junction_xds:"))
    assert found == ["line 7: route.cluster.junction_xds: is reserved for Junction's own use"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "<document>: must be a mapping, got empty"),
        ("- 1\n", "line 1: <document>: must be a mapping, got a list"),
        ("listener: [1,\n", "line 2: <document>: invalid YAML"),
        ("a: 1\na: 2\n", "line 2: a: duplicate key"),
        (MINIMAL + "route: {}\n", "line 10: route: duplicate key"),
        (
            "listener: {listen: {port: 1}}\nroute: 5\n",
            "line 2: route: must be a mapping (one virtual host) or a list of them",
        ),
        ("listener: {listen: {port: 1}}\n", "route: required key is missing"),
        ("\x00", "invalid YAML"),
    ],
)
def test_bad_documents(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_error_names_the_origin() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("a: 1\n", "consul:junction/config")
    assert str(info.value).startswith("consul:junction/config: ")


def test_version_follows_content() -> None:
    assert config_version(SEED) == config_version(SEED)
    assert config_version(SEED) != config_version(SEED + "\n")
