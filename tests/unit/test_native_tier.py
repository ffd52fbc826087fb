"""The native decision tier: Envoy's hash (known values), the prefix index (against Envoy's
first-match scan), the per-route tier choice, and the routes translation emits for it."""

from __future__ import annotations

import random
import textwrap

import pytest
import xxhash
from envoy.config.route.v3 import route_components_pb2

from junction.catalog.model import Catalog, Health, Instance
from junction.config.decisions import KeySource
from junction.config.load import ConfigError, load_config
from junction.extproc.counters import Counters
from junction.extproc.envoy_hash import CanaryKey, cookie_value, envoy_bucket, envoy_hash
from junction.extproc.prefixes import PrefixIndex
from junction.extproc.tiers import route_tiers, tier_summary
from junction.xds.names import ROUTE_CONFIG_NAME
from junction.xds.resources import ROUTE, Snapshot
from junction.xds.translate import translate
from junction.xds.validate import check_snapshot

# ---- Envoy's hash ----------------------------------------------------------------------


def test_xxh64_known_values() -> None:
    # Reference values of XXH64 with seed 0 (xxHash's own test vectors: "" and "abc").
    assert envoy_hash([b""]) == 0xEF46DB3751D8E999
    assert envoy_hash([b"abc"]) == 0x44BC2CF5AD770999
    assert envoy_bucket(b"abc") == 0x44BC2CF5AD770999 % 10000


def test_repeated_values_are_sorted_and_chained() -> None:
    chained = xxhash.xxh64_intdigest(b"b", xxhash.xxh64_intdigest(b"a"))
    assert envoy_hash([b"a", b"b"]) == envoy_hash([b"b", b"a"]) == chained
    assert envoy_hash([b"a,b"]) != chained


@pytest.mark.parametrize(
    ("headers", "value"),
    [
        ([b"uid=k"], b"k"),
        ([b"a=1; uid=k; b=2"], b"k"),
        ([b'uid="k"'], b"k"),
        ([b"uid=k; uid=z"], b"k"),
        ([b"a=1", b"uid=k"], b"k"),
        ([b"uid=a=b"], b"a=b"),
        ([b"uid="], None),
        ([b"xuid=k"], None),
        ([b"uid"], None),
        ([], None),
    ],
)
def test_cookie_value_as_envoy_reads_it(headers: list[bytes], value: bytes | None) -> None:
    assert cookie_value(headers, b"uid") == value


def test_canary_key_header_then_cookie_and_counters() -> None:
    key = CanaryKey(KeySource(header="x-user-id", cookie="uid"))
    c = Counters()
    assert key.bucket({"x-user-id": [b"u1"], "cookie": [b"uid=zz"]}, c) == envoy_bucket(b"u1")
    assert key.bucket({"cookie": [b"uid=u1"]}, c) == envoy_bucket(b"u1")
    assert key.bucket({"x-user-id": [b""]}, c) == envoy_bucket(b"")  # Envoy hashes it too
    assert key.bucket({}, c) is None
    assert key.bucket({"x-user-id": [b"a", b"b"]}, c) == envoy_hash([b"a", b"b"]) % 10000
    assert c.key_ambiguous == 1
    assert key.bucket({"x-user-id": [b"k" * 5000]}, c) == envoy_bucket(b"k" * 5000)
    assert c.key_too_long == 1


# ---- the prefix index ------------------------------------------------------------------


def first_match(routes: list[tuple[bytes, int]], path: bytes) -> int | None:
    """Envoy's rule, literally: the first route in order whose prefix the path starts with."""
    return next((v for p, v in routes if path.startswith(p)), None)


def test_prefix_index_is_envoys_first_match() -> None:
    routes = [(b"/api/feed", 0), (b"/apiary", 1), (b"/api", 2), (b"/a", 3), (b"/", 4)]
    index = PrefixIndex(routes)
    for path in (
        b"/api",
        b"/apiary/x",
        b"/api/feedx",
        b"/api/fee",
        b"/ab",
        b"/",
        b"",
        b"x",
        b"/apix",
    ):
        assert index.match(path) == first_match(routes, path), path
    assert index.match(b"/apix") == 2  # a byte prefix, not a path segment


def test_prefix_index_random_against_the_scan() -> None:
    rng = random.Random(5)
    alphabet = b"/ab-"
    for _ in range(200):
        prefixes = {
            b"/" + bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
            for _ in range(rng.randrange(1, 30))
        }
        ordered = sorted(prefixes, key=len, reverse=True)  # Junction's order
        if rng.random() < 0.3:
            rng.shuffle(ordered)  # any order: still the first match
        routes = [(p, i) for i, p in enumerate(ordered)]
        index = PrefixIndex(routes)
        for _ in range(50):
            path = b"/" + bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 9)))
            assert index.match(path) == first_match(routes, path), (routes, path)


def test_a_repeated_prefix_keeps_the_first() -> None:
    assert PrefixIndex([(b"/a", 1), (b"/a", 2)]).match(b"/a/b") == 1


# ---- tiers -----------------------------------------------------------------------------

BASE = """\
listener: {listen: {port: 8000}}
route:
  domain: ["example.com"]
  cluster:
    web-api-perl: {prefix: ["/api", "/api/feed"], weight: 90}
    web-api-go:   {prefix: ["/api", "/api/feed"], weight: 10}
    web-asset:    {prefix: ["/asset"]}
cluster: {loadbalancer: {web-api-perl: {}, web-api-go: {}, web-asset: {}}}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    pin: PIN
    canary: {version: go, weight: 12.5, key: {header: x-user-id, cookie: uid}}
experiments:
  feed:
    service: web-api
    match: {prefix: /api/feed}
    arms: {a: {weight: 50, version: go}}
"""


def config(pin: str = "{trust: any, query: v}", extra: str = "") -> str:
    return BASE.replace("PIN", pin) + extra


def tiers(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {t.plan.prefix: (t.tier, t.reasons) for t in route_tiers(load_config(text, "t"))}


def test_tiers_follow_the_config() -> None:
    assert tiers(config()) == {
        "/api/feed": ("service", ("experiment feed",)),
        "/asset": ("off", ()),
        "/api": ("native", ()),
    }
    assert tiers(config("{trust: cidr, trusted-cidrs: [10.0.0.0/8]}"))["/api"] == (
        "service",
        ("pin trust: cidr",),
    )
    assert tiers(config("{trust: any, cookie: jv}"))["/api"] == ("service", ("cookie pin",))
    # Without a route of its own, the experiment's requests reach /api: the service decides.
    shared = config().replace('["/api", "/api/feed"]', '["/api"]')
    assert tiers(shared)["/api"] == ("service", ("experiment feed",))
    forced = tiers(config(extra="decision: {force-service: true}\n"))
    assert forced["/api"] == ("service", ("decision.force-service",))
    assert forced["/asset"] == ("off", ())
    summary = tier_summary(load_config(config(), "t"))
    assert [s["native"] for s in summary if s["prefix"] == "/api"] == [["pin", "canary"]]


def test_force_service_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(config(extra="decision: {force-service: [1]}\n"), "t")
    assert "decision.force-service" in str(err.value)


# ---- translation -----------------------------------------------------------------------


def routes(s: Snapshot) -> dict[str, route_components_pb2.Route]:
    rc = s.of_type(ROUTE)[ROUTE_CONFIG_NAME].message
    return {r.name: r for r in rc.virtual_hosts[0].routes}


def headers_added(
    r: route_components_pb2.Route | route_components_pb2.WeightedCluster.ClusterWeight,
) -> dict[str, str]:
    return {h.header.key: h.header.value for h in r.request_headers_to_add}


def test_native_routes_in_order() -> None:
    s = translate(load_config(config(), "t"), Catalog())
    assert list(routes(s)) == [
        "/api/feed@web-api-go",
        "/api/feed@web-api-perl",
        "/api/feed",
        "/asset",
        "/api#pin=go",
        "/api#pin=perl",
        "/api?pin=go",
        "/api?pin=perl",
        "/api",
    ]
    r = routes(s)
    pin = r["/api#pin=go"]
    assert pin.match.prefix == "/api" and pin.route.cluster == "web-api-go"
    assert [(h.name, h.string_match.exact) for h in pin.match.headers] == [
        ("x-junction-version", "go")
    ]
    assert headers_added(pin) == {"x-junction-decision": "pin=go", "x-junction-version": "go"}
    query = r["/api?pin=perl"]
    assert [(q.name, q.string_match.exact) for q in query.match.query_parameters] == [("v", "perl")]
    (absent,) = query.match.headers  # only without the pin header
    assert absent.name == "x-junction-version" and absent.present_match and absent.invert_match
    plain = r["/api"].route
    assert [(c.name, c.weight.value) for c in plain.weighted_clusters.clusters] == [
        ("web-api-go", 1250),
        ("web-api-perl", 8750),
    ]
    assert plain.weighted_clusters.use_hash_policy.value
    assert [(h.header.header_name, h.cookie.name, h.terminal) for h in plain.hash_policy] == [
        ("x-user-id", "", True),
        ("", "uid", False),
    ]
    assert headers_added(plain.weighted_clusters.clusters[0]) == {
        "x-junction-decision": "canary=go",
        "x-junction-version": "go",
    }
    # The service's route keeps the same split as its fail-open path, untagged.
    feed = r["/api/feed"].route
    assert [(c.name, c.weight.value) for c in feed.weighted_clusters.clusters] == [
        ("web-api-go", 1250),
        ("web-api-perl", 8750),
    ]
    assert not any(c.request_headers_to_add for c in feed.weighted_clusters.clusters)
    assert not r["/api/feed@web-api-go"].route.hash_policy
    assert check_snapshot(s) == []


def test_pins_without_a_canary_tag_route_and_drop_the_client_version() -> None:
    text = config().replace(
        "    canary: {version: go, weight: 12.5, key: {header: x-user-id, cookie: uid}}\n", ""
    )
    plain = routes(translate(load_config(text, "t"), Catalog()))["/api"]
    assert [(c.name, c.weight.value) for c in plain.route.weighted_clusters.clusters] == [
        ("web-api-go", 10),
        ("web-api-perl", 90),
    ]
    assert headers_added(plain) == {"x-junction-decision": "route"}
    assert list(plain.request_headers_to_remove) == ["x-junction-version"]


@pytest.mark.parametrize("mode", ["default", "reject"])
def test_pins_to_a_version_without_healthy_hosts(mode: str) -> None:
    text = config("{trust: any, when-unavailable: " + mode + "}")
    catalog = Catalog(
        {
            "web-api-perl": (Instance("10.0.0.1", 80),),
            "web-api-go": (Instance("10.0.0.2", 80, health=Health.UNHEALTHY),),
        }
    )
    r = routes(translate(load_config(text, "t"), catalog))
    pin = r["/api#pin=go"]
    if mode == "default":
        assert pin.route.cluster == "web-api-perl"
        assert headers_added(pin) == {
            "x-junction-decision": "pin=go,fallback=perl",
            "x-junction-version": "perl",
        }
    else:
        assert pin.direct_response.status == 503
    assert r["/api#pin=perl"].route.cluster == "web-api-perl"
    # Unknown to the catalog is not unavailable: nothing is known yet.
    assert routes(translate(load_config(text, "t"), Catalog()))["/api#pin=go"].route.cluster == (
        "web-api-go"
    )


def test_no_ext_proc_filter_when_everything_is_native() -> None:
    text = textwrap.dedent(config()).split("experiments:")[0]
    s = translate(load_config(text, "t"), Catalog())
    assert not any(r.typed_per_filter_config for r in routes(s).values())


def test_the_incremental_translator_re_points_pins_when_health_changes() -> None:
    from junction.xds.incremental import IncrementalTranslator

    cfg = load_config(config(), "t")
    healthy = Catalog(
        {"web-api-perl": (Instance("10.0.0.1", 80),), "web-api-go": (Instance("10.0.0.2", 80),)}
    )
    sick = healthy.replace("web-api-go", [Instance("10.0.0.2", 80, health=Health.UNHEALTHY)])
    inc = IncrementalTranslator()
    for catalog in (healthy, sick, healthy):
        got = inc.translate(cfg, catalog)
        assert got.version == translate(cfg, catalog).version
        want = "web-api-go" if catalog is healthy else "web-api-perl"
        assert routes(got)["/api#pin=go"].route.cluster == want


def test_no_tag_or_version_headers_when_both_are_switched_off() -> None:
    text = config("{trust: any, propagate: ''}", extra="decision: {header: ''}\n")
    r = routes(translate(load_config(text, "t"), Catalog()))
    assert not r["/api#pin=go"].request_headers_to_add
    assert not any(c.request_headers_to_add for c in r["/api"].route.weighted_clusters.clusters)
