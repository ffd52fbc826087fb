"""The decision core: pins, trust, experiments, canary buckets, hostile input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from junction.config.load import load_config
from junction.extproc.counters import Counters
from junction.extproc.hosts import HostMatcher, strip_port
from junction.extproc.keys import Headers, bucket
from junction.extproc.pins import AMBIGUOUS, parse_cookies, query_param, sign_pin, verify_pin
from junction.extproc.table import NO_DECISION, Decision, DecisionKind, DecisionTable

CONFIG = """\
listener:
  listen: {port: 8000}
route:
  - domain: ["example.com", "*.example.org"]
    cluster:
      web-api-perl: {prefix: ["/api"], weight: 90}
      web-api-go:   {prefix: ["/api", "/api/foobar"], weight: 10}
      web-asset:    {prefix: ["/asset"]}
      web-other:    {prefix: ["/other"]}
  - domain: ["qa.example.com"]
    cluster:
      web-qa: {prefix: ["/api"]}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    pin: {header: x-junction-version, cookie: jv, query: version, trust: any}
    canary: {version: go, weight: 10, key: {header: x-user-id, cookie: uid}}
experiments:
  feed:
    service: web-api
    match: {prefix: /api/feed, methods: [GET]}
    key: {header: x-user-id}
    salt: feed-2026
    sticky-cookie: {name: jx-feed, max-age: 600}
    arms: {control: {weight: 50}, treatment: {weight: 50, version: go}}
  banner:
    match: {prefix: /other, headers: {x-client: ios}}
    key: {cookie: uid}
    arms: {shown: {weight: 30}}
cluster:
  loadbalancer: {web-api-perl: {}, web-api-go: {}, web-asset: {}, web-other: {}, web-qa: {}}
"""


def table(
    text: str = CONFIG, unavailable: frozenset[str] = frozenset(), **env: str
) -> DecisionTable:
    return DecisionTable(load_config(text, "t"), unavailable, env)


def req(
    path: str = "/api/x",
    host: str = "example.com",
    method: str = "GET",
    **headers: str | list[str] | bytes,
) -> Headers:
    out: dict[str, list[bytes]] = {
        ":authority": [host.encode()],
        ":path": [path.encode()],
        ":method": [method.encode()],
    }
    for name, value in headers.items():
        values = value if isinstance(value, list) else [value]
        out[name.replace("_", "-")] = [v if isinstance(v, bytes) else v.encode() for v in values]
    return out


def cluster(d: Decision) -> str | None:
    return dict(d.set_headers).get("x-junction-cluster")


def test_header_cookie_and_query_pins_route_to_the_version() -> None:
    t, c = table(), Counters()
    for headers in (
        req(x_junction_version="go"),
        req(cookie="a=b; jv=go"),
        req("/api/x?a=1&version=go"),
        req("/api/foobar", x_junction_version="go"),
    ):
        d = t.decide(headers, None, c)
        assert cluster(d) == "web-api-go", headers
        assert d.clear_route
        assert dict(d.set_headers)["x-junction-decision"] == "pin=go"
        assert dict(d.set_headers)["x-junction-version"] == "go"  # propagated
    assert c.decided_pin == 4
    assert t.decide(req(x_junction_version="perl"), None, c).tag == "pin=perl"


def test_header_pin_wins_over_cookie_and_query() -> None:
    d = table().decide(
        req("/api?version=perl", cookie="jv=perl", x_junction_version="go"), None, Counters()
    )
    assert d.tag == "pin=go"


def test_a_pin_wins_over_experiments_and_canary() -> None:
    d = table().decide(
        req("/api/feed", x_user_id="u1", x_junction_version="perl"), None, Counters()
    )
    assert d.tag == "pin=perl"


def test_routes_without_a_decision_and_unknown_hosts() -> None:
    t, c = table(), Counters()
    assert t.decide(req("/asset/x.png"), None, c) is NO_DECISION
    assert t.decide(req("/api/x", host="qa.example.com"), None, c) is NO_DECISION
    assert t.decide(req("/api/x", host="nowhere.test"), None, c) is NO_DECISION
    assert t.decide({":path": [b"/api"]}, None, c) is NO_DECISION  # no :authority
    assert c.not_routed == 4
    # Ports and case do not matter; wildcard domains do.
    assert t.decide(req(host="Example.COM:8000", x_junction_version="go"), None, c).tag == "pin=go"
    assert t.decide(req(host="a.example.org", x_junction_version="go"), None, c).tag == "pin=go"


def test_unavailable_pinned_version_falls_back_to_the_default() -> None:
    t, c = table(unavailable=frozenset({"web-api-go"})), Counters()
    d = t.decide(req(x_junction_version="go"), None, c)
    assert cluster(d) == "web-api-perl"
    assert d.tag == "pin=go,fallback=perl"
    assert c.pin_fallback_default == 1


def test_unavailable_pinned_version_is_rejected_when_configured() -> None:
    text = CONFIG.replace("trust: any}", "trust: any, when-unavailable: reject}")
    t, c = table(text, unavailable=frozenset({"web-api-go"})), Counters()
    d = t.decide(req(x_junction_version="go"), None, c)
    assert d.status == 503 and "no healthy host" in d.body
    assert c.pin_rejected == 1
    assert cluster(t.decide(req(x_junction_version="perl"), None, c)) == "web-api-perl"


def test_cidr_trust_uses_the_downstream_address() -> None:
    text = CONFIG.replace("trust: any}", "trust: cidr, trusted-cidrs: [10.0.0.0/8, '::1/128']}")
    t, c = table(text), Counters()
    pinned = req(x_junction_version="go", x_user_id="u1")
    assert t.needs_source
    assert t.decide(pinned, "10.1.2.3:5555", c).tag == "pin=go"
    assert t.decide(pinned, "[::1]:5555", c).tag == "pin=go"
    for untrusted in ("192.168.1.1:5555", None, "", "garbage", "[::2]:1"):
        assert not t.decide(pinned, untrusted, c).tag.startswith("pin"), untrusted
    assert c.pin_untrusted == 5


def test_hmac_trust_needs_a_valid_unexpired_signature() -> None:
    text = CONFIG.replace("trust: any}", "trust: hmac, hmac-key-env: PIN_KEY}")
    t, c = table(text, PIN_KEY="s3cret"), Counters()
    now = int(time.time())
    good = sign_pin(b"s3cret", "go", now + 60)
    assert t.decide(req(x_junction_version=good), None, c).tag == "pin=go"
    assert not t.decide(req(x_junction_version="go"), None, c).tag.startswith("pin")
    forged = sign_pin(b"other-key", "go", now + 60)
    assert not t.decide(req(x_junction_version=forged), None, c).tag.startswith("pin")
    expired = sign_pin(b"s3cret", "go", now - 1)
    assert not t.decide(req(x_junction_version=expired), None, c).tag.startswith("pin")
    tampered = good.replace("go.", "perl.", 1)
    assert not t.decide(req(x_junction_version=tampered), None, c).tag.startswith("pin")
    assert (c.decided_pin, c.pin_bad_signature, c.pin_expired) == (1, 3, 1)
    # No key in the environment: every pin is refused, and the table says why.
    keyless = table(text)
    assert any("PIN_KEY is not set" in p for p in keyless.problems)
    assert not keyless.decide(req(x_junction_version=good), None, c).tag.startswith("pin")


def test_pin_signature_roundtrip() -> None:
    pin = sign_pin(b"k", "go", 2_000_000_000)
    assert verify_pin(b"k", pin.encode(), 1_999_999_999) == (b"go", "")
    assert verify_pin(b"k", pin.encode(), 2_000_000_001)[1] == "expired"
    assert verify_pin(b"k", b"go", 0)[1] == "malformed"


def test_experiment_split_is_within_tolerance_and_tags_requests() -> None:
    t, c = table(), Counters()
    arms: Counter[str] = Counter()
    n = 4000
    for i in range(n):
        d = t.decide(req("/api/feed", x_user_id=f"user-{i}"), None, c)
        arms[d.tag.split(",")[0]] += 1
        if d.tag.startswith("exp=feed:treatment"):
            assert cluster(d) == "web-api-go"
        else:
            assert d.tag.startswith("exp=feed:control,canary=")
    # 50/50: within 4 standard deviations (sd = sqrt(n/4) ~ 32).
    assert abs(arms["exp=feed:treatment"] - n / 2) < 4 * (n / 4) ** 0.5, arms
    assert c.decided_experiment == n
    # Only GETs under the prefix are in the experiment.
    assert not t.decide(req("/api/feed", method="POST", x_user_id="u"), None, c).tag.startswith(
        "exp"
    )
    assert not t.decide(req("/api/other", x_user_id="u"), None, c).tag.startswith("exp")


def test_tag_only_experiment_on_a_route_of_no_versioned_service() -> None:
    t, c = table(), Counters()
    tags = Counter(
        t.decide(req("/other", x_client="ios", cookie=f"uid=u{i}"), None, c).tag
        for i in range(2000)
    )
    assert set(tags) == {"exp=banner:shown", ""}  # 30% on, the rest in no arm
    assert 500 < tags["exp=banner:shown"] < 700, tags
    on = next(
        d
        for i in range(50)
        if (d := t.decide(req("/other", x_client="ios", cookie=f"uid=u{i}"), None, c)).tag
    )
    assert on.set_headers == (("x-junction-decision", "exp=banner:shown"),) and not on.clear_route
    assert t.decide(req("/other", x_client="android", cookie="uid=u1"), None, c) is NO_DECISION


def test_assignment_is_the_documented_hash() -> None:
    # Pinned values: the same in every process, replica and restart (a regression here
    # would reshuffle every user).
    assert [bucket(b"feed-2026", f"user-{i}".encode()) for i in range(5)] == [
        7551,
        4181,
        817,
        9246,
        4425,
    ]
    import hashlib

    digest = hashlib.blake2b(b"feed-2026\x00user-0", digest_size=8).digest()
    assert bucket(b"feed-2026", b"user-0") == int.from_bytes(digest, "big") % 10000


def test_assignment_does_not_depend_on_the_process() -> None:
    code = textwrap.dedent(
        """
        from junction.config.load import load_config
        from junction.extproc.counters import Counters
        from junction.extproc.table import DecisionTable
        import sys
        t = DecisionTable(load_config(sys.stdin.read(), "t"))
        for i in range(200):
            h = {":authority": [b"example.com"], ":path": [b"/api/feed"], ":method": [b"GET"],
                 "x-user-id": [f"user-{i}".encode()]}
            print(t.decide(h, None, Counters()).tag)
        """
    )
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=CONFIG,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        runs.append(out.stdout)
    here = "".join(
        table().decide(req("/api/feed", x_user_id=f"user-{i}"), None, Counters()).tag + "\n"
        for i in range(200)
    )
    assert runs[0] == runs[1] == here


def test_adding_an_arm_or_an_experiment_moves_no_one() -> None:
    before = table()
    grown = table(
        CONFIG.replace(
            "arms: {control: {weight: 50}, treatment: {weight: 50, version: go}}",
            "arms: {control: {weight: 40}, treatment: {weight: 40, version: go}, new: {weight: 20}}",
        ).replace(
            "  feed:\n",
            "  other:\n    match: {prefix: /zzz}\n    arms: {x: {weight: 50}}\n  feed:\n",
        )
    )
    shrunk_to_fit = table(
        CONFIG.replace(
            "arms: {control: {weight: 50}, treatment: {weight: 50, version: go}}",
            "arms: {control: {weight: 40}, treatment: {weight: 40, version: go}}",
        )
    )
    moved = 0
    for i in range(2000):
        h = req("/api/feed", x_user_id=f"u{i}")
        a = shrunk_to_fit.decide(h, None, Counters()).tag.split(",")[0]
        b = grown.decide(h, None, Counters()).tag.split(",")[0]
        if a.startswith("exp=") and a != b:
            moved += 1
    assert moved == 0
    assert before.decide(req("/api/feed", x_user_id="u1"), None, Counters()).tag


def test_raising_the_canary_weight_only_adds_users() -> None:
    low, high = table(), table(CONFIG.replace("weight: 10, key", "weight: 30, key"))
    on_low = {
        i
        for i in range(3000)
        if cluster(low.decide(req(x_user_id=f"u{i}"), None, Counters())) == "web-api-go"
    }
    on_high = {
        i
        for i in range(3000)
        if cluster(high.decide(req(x_user_id=f"u{i}"), None, Counters())) == "web-api-go"
    }
    assert on_low < on_high
    assert 200 < len(on_low) < 400 and 800 < len(on_high) < 1000
    # The same key decides the same way every time, and the cookie is a key too.
    d1 = low.decide(req(x_user_id="u42"), None, Counters())
    assert all(low.decide(req(x_user_id="u42"), None, Counters()) is d1 for _ in range(5))
    assert low.decide(req(cookie="uid=u42"), None, Counters()) is d1


def test_canary_without_a_key_is_per_request_random() -> None:
    t, c = table(), Counters()
    clusters = Counter(cluster(t.decide(req(), None, c)) for _ in range(3000))
    assert 200 < clusters["web-api-go"] < 400, clusters
    assert c.key_random == 3000


def test_no_canary_leaves_the_split_to_envoy() -> None:
    t, c = (
        table(
            CONFIG.replace(
                "    canary: {version: go, weight: 10, key: {header: x-user-id, cookie: uid}}\n", ""
            )
        ),
        Counters(),
    )
    d = t.decide(req(x_junction_version="x"), None, c)
    assert cluster(d) is None and not d.clear_route
    assert d.tag == "route"
    assert d.remove_headers == ("x-junction-version",)  # an unbelieved pin is not propagated
    assert c.decided_route == 1


def test_sticky_cookie_is_issued_when_the_key_is_missing_and_honoured_after() -> None:
    t, c = table(), Counters()
    first = t.decide(req("/api/feed"), None, c)
    assert first.set_cookie is not None and c.sticky_cookie_issued == 1
    name_value = first.set_cookie.split(";")[0]
    assert name_value.startswith("jx-feed=")
    assert "Max-Age=600" in first.set_cookie and "HttpOnly" in first.set_cookie
    arm = first.tag.split(",")[0]
    for _ in range(20):
        again = t.decide(req("/api/feed", cookie=name_value), None, c)
        assert again.set_cookie is None
        assert again.tag.split(",")[0] == arm
    assert c.sticky_cookie_issued == 1
    # A forged or malformed sticky cookie is replaced, not trusted.
    replaced = t.decide(req("/api/feed", cookie="jx-feed=../../etc"), None, c)
    assert replaced.set_cookie is not None and c.sticky_cookie_invalid == 1


HOSTILE = [
    pytest.param(
        req(x_junction_version=["go", "perl"]), "pin_ambiguous", id="duplicate pin headers"
    ),
    pytest.param(
        req(x_junction_version=["go", "go"]), "pin_ambiguous", id="duplicate identical pins"
    ),
    pytest.param(req(cookie="jv=go; jv=perl"), "pin_ambiguous", id="duplicate pin cookies"),
    pytest.param(req("/api?version=go&version=perl"), "pin_ambiguous", id="duplicate query pins"),
    pytest.param(req(x_junction_version="java"), "pin_unknown_version", id="unknown version"),
    pytest.param(req(x_junction_version=b"g\xffo\xc3"), "pin_unknown_version", id="invalid utf-8"),
    pytest.param(req(x_junction_version="go" * 32768), "pin_unknown_version", id="64 KiB pin"),
    pytest.param(req(x_junction_version=""), "pin_unknown_version", id="empty pin"),
    pytest.param(req(cookie="jv"), "cookie_malformed", id="cookie without ="),
    pytest.param(
        req(cookie=b';;=;\xff\xfe=\x00;jv="go'), "pin_unknown_version", id="garbage cookie"
    ),
    pytest.param(req(x_user_id=["a", "b"]), "key_ambiguous", id="duplicate key headers"),
    pytest.param(req(x_user_id="u" * 65536), "key_too_long", id="64 KiB key"),
]


@pytest.mark.parametrize(("headers", "counter"), HOSTILE)
def test_hostile_input_gives_no_pin_and_a_counter(headers: Headers, counter: str) -> None:
    c = Counters()
    d = table().decide(headers, None, c)
    assert not d.tag.startswith("pin"), d.tag
    assert getattr(c, counter) >= 1, c


def test_hundreds_of_headers_are_fine() -> None:
    headers = dict(req(x_junction_version="go"))
    for i in range(500):
        headers[f"x-h{i}"] = [b"v" * 100]
    assert table().decide(headers, None, Counters()).tag == "pin=go"


def test_cookie_and_query_parsing() -> None:
    cookies = parse_cookies([b'a=1; b="two"; c', b"a=3; d=4"])
    assert cookies[b"b"] == b"two" and cookies[b"d"] == b"4"
    assert cookies[b"a"] is AMBIGUOUS
    assert query_param(b"/x?a=1&b=2#frag", b"b") == b"2"
    assert query_param(b"/x?a=1&a=2", b"a") is AMBIGUOUS
    assert query_param(b"/x", b"a") is None


def test_host_matching_follows_envoy() -> None:
    m: HostMatcher[str] = HostMatcher(
        [
            (["example.com"], "exact"),
            (["*.example.com"], "suffix"),
            (["*.com"], "short"),
            (["api.*"], "prefix"),
            (["*"], "any"),
        ]
    )
    assert m.match(b"example.com:8000") == "exact"
    assert m.match(b"a.example.com") == "suffix"  # longest suffix wins
    assert m.match(b"x.com") == "short"
    assert m.match(b"api.test") == "prefix"
    assert m.match(b".example.com") == "short"  # a wildcard never matches the empty string
    assert m.match(b"other") == "any"
    assert strip_port(b"[::1]:80") == b"[::1]"
    assert strip_port(b"EXAMPLE.com") == b"example.com"


def test_every_decision_says_what_decided_it() -> None:
    t, c = table(), Counters()
    assert t.decide(req(x_junction_version="go"), None, c).kind is DecisionKind.PIN
    assert t.decide(req("/asset/x.png"), None, c).kind is DecisionKind.NONE
    assert t.decide(req(x_user_id="u1"), None, c).kind is DecisionKind.CANARY
    feed = [t.decide(req("/api/feed", x_user_id=f"u{i}"), None, c) for i in range(40)]
    # The treatment arm routes to a version: the experiment decided; control only tags,
    # then the canary decides.
    assert {d.kind for d in feed} == {DecisionKind.EXPERIMENT, DecisionKind.CANARY}
    assert all((d.kind is DecisionKind.EXPERIMENT) == d.tag.startswith("exp=feed:treatment")
               for d in feed)  # fmt: skip
    banner = [t.decide(req("/other", x_client="ios", cookie=f"uid=u{i}"), None, c) for i in range(40)]
    assert {d.kind for d in banner if d.tag} == {DecisionKind.EXPERIMENT}
    no_canary = table(CONFIG.replace("    canary: {version: go, weight: 10, key: {header: x-user-id, cookie: uid}}\n", ""))
    assert no_canary.decide(req(), None, c).kind is DecisionKind.ROUTE
    down = table(unavailable=frozenset({"web-api-go"}))
    assert down.decide(req(x_junction_version="go"), None, c).kind is DecisionKind.PIN_FALLBACK
    rejecting = table(
        CONFIG.replace("trust: any}", "trust: any, when-unavailable: reject}"),
        unavailable=frozenset({"web-api-go"}),
    )
    assert rejecting.decide(req(x_junction_version="go"), None, c).kind is DecisionKind.PIN_REJECTED
