"""The Consul sources when Consul, its network or the code behind them misbehave: ACL
denials, tokens, hung requests, malformed answers, a crashing loop, and the addresses
(https, IPv6) a deployment uses. Through ConsulDouble and py-consul, as in
test_consul_source.py; every wait is a bound, never a goal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from conftest import eventually
from consul_double import ConsulDouble
from fakes import RecordingSink
from test_consul_source import FAST, KEY, ORIGIN, count, running, texts

from junction.catalog.consul import Backoff, ConsulCatalog, ConsulConfig, WatchTiming
from junction.catalog.model import Instance

pytestmark = pytest.mark.filterwarnings("ignore:ssl_context is deprecated:DeprecationWarning")

#: A bound on every wait here; the waits end as soon as their condition holds.
BOUND = 30.0
TOKEN = "3f1c0b9e-acl-token"


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble(node="node-a") as d:
        yield d


def register_api(double: ConsulDouble, address: str = "10.0.0.1", node: str = "n1") -> None:
    double.catalog_register(
        {"Node": node, "Address": address, "Service": {"Service": "api", "Port": 80}}
    )


# ------------------------------------------------------------------- ACL and tokens


async def test_acl_denial_is_a_named_error_and_nothing_is_reported(double: ConsulDouble) -> None:
    double.put_kv(KEY, "a: 1\n")
    register_api(double)
    double.require_token(TOKEN)
    sink = RecordingSink()
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"api"}))
    async with (
        running(ConsulConfig(double.address, KEY, timing=FAST), sink),
        running(catalog, sink),
    ):
        await eventually(lambda: {o for o, _ in sink.errors} == {ORIGIN, catalog.origin}, BOUND)
        for _, message in sink.errors:
            assert message.startswith(f"consul at {double.address} denied access")
            assert "ACL token" in message and "Permission denied" in message
        # Denied reads are retried, and never stand in for "no config" or "no instances".
        seen = double.request_count("/v1/health/service/api")
        await eventually(lambda: double.request_count("/v1/health/service/api") > seen, BOUND)
        assert sink.texts == [] and sink.services == {}
        # The operator fixes the token's policy: both recover without a restart.
        double.require_token(None)
        await eventually(lambda: texts(sink) == ["a: 1\n"] and "api" in sink.services, BOUND)
        await eventually(lambda: count(sink, "ok") == 2, BOUND)


@pytest.mark.parametrize(
    ("env", "flag", "allowed"),
    [
        pytest.param(TOKEN, None, True, id="CONSUL_HTTP_TOKEN alone is used"),
        pytest.param("wrong-env-token", TOKEN, True, id="the token argument wins over the env"),
        pytest.param(TOKEN, "wrong-flag-token", False, id="even a wrong token argument wins"),
    ],
)
async def test_the_token_argument_overrides_consul_http_token(
    double: ConsulDouble,
    monkeypatch: pytest.MonkeyPatch,
    env: str,
    flag: str | None,
    allowed: bool,
) -> None:
    # py-consul lets CONSUL_HTTP_TOKEN override an explicit token (consul/base.py); ours wins.
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", env)
    double.put_kv(KEY, "a: 1\n")
    double.require_token(TOKEN)
    sink = RecordingSink()
    async with running(ConsulConfig(double.address, KEY, token=flag, timing=FAST), sink):
        await eventually(lambda: bool(sink.texts or sink.errors), BOUND)
    if allowed:
        assert (texts(sink), sink.errors) == (["a: 1\n"], [])
    else:
        assert sink.texts == [] and "denied access" in sink.errors[0][1]


# ---------------------------------------------------------------------- time-outs


async def test_a_hung_consul_times_out_and_recovers(double: ConsulDouble) -> None:
    double.put_kv(KEY, "a: 1\n")
    register_api(double)
    # Every request is bounded by wait + wait/16 + slack = 0.5 + 0.03125 + 0.5 s.
    timing = WatchTiming(wait=0.5, rate_interval=0.01, backoff=Backoff(0.02, 0.2), slack=0.5)
    sink = RecordingSink()
    catalog = ConsulCatalog(double.address, timing=timing)
    catalog.watch(frozenset({"api"}))
    async with (
        running(ConsulConfig(double.address, KEY, timing=timing), sink),
        running(catalog, sink),
    ):
        await eventually(lambda: texts(sink) == ["a: 1\n"] and "api" in sink.services, BOUND)
        double.stall_requests()
        await eventually(lambda: {o for o, _ in sink.errors} == {ORIGIN, catalog.origin}, BOUND)
        for _, message in sink.errors:
            assert message == f"consul at {double.address} did not answer within 1.03125s"
        assert len(sink.services["api"]) == 1  # the last instances stay
        double.serve_normally()
        await eventually(lambda: count(sink, "ok") == 2, BOUND)
        double.put_kv(KEY, "a: 2\n")
        await eventually(lambda: texts(sink) == ["a: 1\n", "a: 2\n"], BOUND)


# ----------------------------------------------------------------- malformed answers


def with_header(value: str) -> object:
    def rewrite(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["X-Consul-Index"] = value
        return response

    return rewrite


@pytest.mark.parametrize("index", ["not-a-number", "-7", ""])
async def test_a_malformed_consul_index_is_an_error_not_data(
    double: ConsulDouble, index: str
) -> None:
    double.put_kv(KEY, "a: 1\n")
    sink = RecordingSink()
    async with running(ConsulConfig(double.address, KEY, timing=FAST), sink):
        await eventually(lambda: texts(sink) == ["a: 1\n"], BOUND)
        double.rewrite_responses(with_header(index))  # type: ignore[arg-type]
        double.put_kv(KEY, "a: 2\n")  # the answer carrying it is not taken
        await eventually(lambda: len(sink.errors) == 1, BOUND)
        assert sink.errors[0][1] == (
            f"consul at {double.address} answered something unusable: "
            f"X-Consul-Index {index!r} is not a non-negative integer"
        )
        assert texts(sink) == ["a: 1\n"]
        double.serve_normally()
        await eventually(lambda: texts(sink) == ["a: 1\n", "a: 2\n"], BOUND)
        assert sink.events[-2:] == [("ok", ORIGIN), ("config", ORIGIN)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'[{"Node": {"Node": "n1"}, "Checks": []}]',
            "answered something unusable: health entry without the expected fields: "
            "KeyError('Service')",
            id="no Service",
        ),
        pytest.param(
            b'[{"Node": {}, "Service": {"Address": "10.0.0.1", "Port": "eighty"}}]',
            "answered something unusable: health entry without the expected fields: ValueError(",
            id="port not a number",
        ),
        pytest.param(b'{"not": "a list"}', "answered something unusable", id="not a list"),
        pytest.param(b"<html>proxy error</html>", "answered an error", id="not JSON"),
    ],
)
async def test_a_malformed_health_entry_keeps_the_last_instances(
    double: ConsulDouble, body: bytes, expected: str
) -> None:
    register_api(double)
    sink = RecordingSink()
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"api"}))

    def garbage(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        if not request.path.startswith("/v1/health/service/"):
            return response
        bad = web.Response(body=body, content_type="application/json")
        bad.headers["X-Consul-Index"] = response.headers["X-Consul-Index"]
        return bad

    async with running(catalog, sink):
        await eventually(lambda: len(sink.services.get("api", ())) == 1, BOUND)
        double.rewrite_responses(garbage)
        register_api(double, "10.0.0.2", node="n2")  # a change, answered with garbage
        await eventually(lambda: len(sink.errors) == 1, BOUND)
        message = sink.errors[0][1]
        assert message.startswith(f"consul at {double.address} {expected}"), message
        assert [i.address for i in sink.services["api"]] == ["10.0.0.1"]
        double.serve_normally()
        await eventually(lambda: ("ok", catalog.origin) in sink.events, BOUND)
        await eventually(lambda: len(sink.services["api"]) == 2, BOUND)


# ---------------------------------------------------------------------- a crash


class CrashingSink(RecordingSink):
    """A consumer with a bug: raises on what it is given."""

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        raise RuntimeError(f"bug while taking {service}")

    def config_text(self, origin: str, text: str) -> None:
        raise RuntimeError("bug while taking the config")


async def test_a_crashed_catalog_loop_is_reported_as_an_internal_error(
    double: ConsulDouble, caplog: pytest.LogCaptureFixture
) -> None:
    register_api(double)
    sink = CrashingSink()
    catalog = ConsulCatalog(double.address, timing=FAST)
    catalog.watch(frozenset({"api"}))
    with caplog.at_level(logging.ERROR, "junction.catalog.consul"):
        async with running(catalog, sink):
            await eventually(lambda: bool(sink.errors), BOUND)
    assert sink.errors == [(catalog.origin, "internal error: RuntimeError('bug while taking api')")]
    assert "consul catalog loop died" in caplog.text
    assert "Traceback" in caplog.text  # the log keeps the stack for the bug report


async def test_a_crashed_config_loop_is_reported_as_an_internal_error(
    double: ConsulDouble, caplog: pytest.LogCaptureFixture
) -> None:
    double.put_kv(KEY, "a: 1\n")
    sink = CrashingSink()
    source = ConsulConfig(double.address, KEY, timing=FAST)
    with caplog.at_level(logging.ERROR, "junction.catalog.consul"):
        task = asyncio.create_task(source.run(sink))
        with pytest.raises(RuntimeError, match="bug while taking the config"):
            await asyncio.wait_for(task, BOUND)
    assert sink.errors == [(ORIGIN, "internal error: RuntimeError('bug while taking the config')")]
    assert "consul config loop died" in caplog.text and "Traceback" in caplog.text


# ----------------------------------------------------------------- https and IPv6


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and ::1 signed by a test CA, and that CA's PEM."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "::1").configure_cert(context)
    pem = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return context, pem


@contextlib.asynccontextmanager
async def consul_at(host: str, context: ssl.SSLContext | None) -> AsyncIterator[ConsulDouble]:
    async with ConsulDouble(node="node-a", host=host, ssl_context=context) as d:
        d.put_kv(KEY, "a: 1\n")
        register_api(d)
        yield d


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_https_and_ipv6_addresses(
    host: str, scheme: str, tls: tuple[ssl.SSLContext, Path]
) -> None:
    context, ca = tls
    async with consul_at(host, context if scheme == "https" else None) as double:
        address = double.address
        assert address.startswith("https://" if scheme == "https" else "[" if ":" in host else "1")
        sink = RecordingSink()
        catalog = ConsulCatalog(address, verify=str(ca), timing=FAST)
        catalog.watch(frozenset({"api"}))
        async with (
            running(ConsulConfig(address, KEY, verify=str(ca), timing=FAST), sink),
            running(catalog, sink),
        ):
            await eventually(lambda: texts(sink) == ["a: 1\n"] and "api" in sink.services, BOUND)
        assert sink.errors == []
        assert double.request_count("/v1/kv/") >= 1


async def test_an_untrusted_certificate_is_a_named_error(tls: tuple[ssl.SSLContext, Path]) -> None:
    context, _ = tls
    async with consul_at("127.0.0.1", context) as double:
        sink = RecordingSink()
        # verify=True: the system's CAs, which do not include the test CA.
        async with running(ConsulConfig(double.address, KEY, timing=FAST), sink):
            await eventually(lambda: bool(sink.errors), BOUND)
        message = sink.errors[0][1]
        assert message.startswith(
            f"consul at {double.address} presented a certificate that is not trusted: "
        ), message
        assert "CERTIFICATE_VERIFY_FAILED" in message
        assert sink.texts == []
        assert double.request_count() == 0  # the handshake failed before any request


async def test_https_to_a_plain_http_consul_is_a_named_error(double: ConsulDouble) -> None:
    sink = RecordingSink()
    address = f"https://{double.address}"
    async with running(ConsulConfig(address, KEY, timing=FAST), sink):
        await eventually(lambda: bool(sink.errors), BOUND)
    message = sink.errors[0][1]
    assert message.startswith(f"consul at {address}: the TLS handshake failed: "), message
    assert sink.texts == []
