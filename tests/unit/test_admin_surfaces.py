"""The control surfaces from the attacker's side: the health-only listener, the admin API's
token, and the refusal to expose either beyond loopback unprotected."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import eventually

from junction.admin import ADMIN_TOKEN_ENV, exposure_problems, is_loopback
from junction.app import ControlPlane, Settings
from junction.canary import cli as canary_cli
from junction.cli import main

TOKEN = "s3cret-token-of-some-length"
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
    canary: {version: go, weight: 10, ramp: {steps: [10, 50, 100]}}
"""


def files(tmp: Path) -> tuple[str, str]:
    config, instances = tmp / "c.yaml", tmp / "i.yaml"
    config.write_text(CONFIG)
    instances.write_text("services: {web-api-perl: [], web-api-go: []}\n")
    return str(config), str(instances)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, aiohttp.ClientSession]]:
    config, instances = files(tmp_path)
    plane = ControlPlane(
        Settings(
            config_path=config,
            instances_path=instances,
            http_port=0,
            xds_port=0,
            health_addr=("127.0.0.1", 0),
            admin_token=TOKEN,
            state_dir=str(tmp_path / "state"),
        )
    )
    await plane.start()
    try:
        await eventually(lambda: plane.publisher.config is not None, timeout=10)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield plane, session
    finally:
        await plane.stop()


async def test_the_health_listener_answers_get_and_head_healthz_and_nothing_else(
    plane: tuple[ControlPlane, aiohttp.ClientSession],
) -> None:
    cp, session = plane
    base = f"http://127.0.0.1:{cp.status.health_port}"
    async with session.get(f"{base}/healthz") as resp:
        status, body = resp.status, await resp.text()
    assert status in (200, 503) and body  # no Envoy: 503 with the reasons
    async with session.head(f"{base}/healthz") as resp:
        assert resp.status == status and await resp.read() == b""
    for method, path in (
        ("GET", "/status"),
        ("GET", "/canary"),
        ("POST", "/canary/web-api/promote"),
        ("POST", "/healthz"),
        ("DELETE", "/healthz"),
        ("GET", "/healthz/"),
        ("GET", "/healthz/../status"),
        ("GET", "/%2e%2e/status"),
        ("GET", "/"),
    ):
        async with session.request(method, f"{base}{path}") as resp:
            assert resp.status == 404, (method, path, resp.status)
            assert "canary" not in await resp.text()


async def test_mutating_admin_calls_need_the_token(
    plane: tuple[ControlPlane, aiohttp.ClientSession],
) -> None:
    cp, session = plane
    url = f"http://127.0.0.1:{cp.status.port}/canary/web-api/abort"
    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong"},  # a different length
        {"Authorization": "Bearer " + "x" * len(TOKEN)},  # the same length, wrong
        {"Authorization": TOKEN},  # no scheme
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"X-Token": TOKEN},
    ):
        async with session.post(url, headers=headers) as resp:
            assert resp.status == 401, headers
            assert ADMIN_TOKEN_ENV in (await resp.json())["error"]
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # Reads stay open to whoever reaches the (loopback) admin listener.
    async with session.get(f"http://127.0.0.1:{cp.status.port}/status") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["xds_refused"] == {}  # what hostile xDS clients tried, by reason
    async with session.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()  # past the check: the ramp aborted


def test_exposure_names_every_problem_at_once() -> None:
    both = exposure_problems(
        admin_host="0.0.0.0", token=None, envoy_host="0.0.0.0", tls=False, insecure=False
    )
    assert len(both) == 2
    assert ADMIN_TOKEN_ENV in both[0] and "--tls-cert" in both[1] and "--insecure" in both[1]
    assert (
        exposure_problems(
            admin_host="0.0.0.0", token="t", envoy_host="0.0.0.0", tls=True, insecure=False
        )
        == []
    )
    assert (
        exposure_problems(
            admin_host="::1", token=None, envoy_host="127.0.0.2", tls=False, insecure=False
        )
        == []
    )
    insecure = exposure_problems(
        admin_host="10.0.0.1", token=None, envoy_host="0.0.0.0", tls=False, insecure=True
    )
    assert len(insecure) == 1 and ADMIN_TOKEN_ENV in insecure[0]
    assert [is_loopback(h) for h in ("localhost", "127.0.0.1", "[::1]", "", "::", "a.b")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip


def test_junction_refuses_to_start_exposed_naming_every_problem_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    config, instances = files(tmp_path)
    argv = ["serve", "-c", config, "--instances", instances, "--http-port", "0"]
    code = main([*argv, "--host", "0.0.0.0", "--admin-host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2
    assert ADMIN_TOKEN_ENV in err and "without TLS" in err and "--insecure" in err
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    code = main([*argv, "--host", "0.0.0.0", "--admin-host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2 and ADMIN_TOKEN_ENV not in err and "without TLS" in err


async def test_the_canary_cli_sends_the_token_from_the_same_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str | None] = []

    async def promote(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"service": "web-api"})

    app = web.Application()
    app.router.add_post("/canary/{service}/{action}", promote)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    args = argparse.Namespace(
        http=f"127.0.0.1:{port}", service="web-api", action="promote", json=True
    )
    try:
        code = await asyncio.to_thread(canary_cli.run, args, io.StringIO())
    finally:
        await runner.cleanup()
    assert code == 0 and seen == [f"Bearer {TOKEN}"]


def test_node_identity_needs_tls_and_tls_beyond_loopback_is_enough(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    config, instances = files(tmp_path)
    argv = ["serve", "-c", config, "--instances", instances]
    assert main([*argv, "--require-node-identity"]) == 1
    assert "--require-node-identity needs --tls-cert" in capsys.readouterr().err
    settings = Settings(config_path=config, instances_path=instances, host="0.0.0.0", insecure=True)
    settings.check()  # --insecure: said so, allowed


def test_als_serve_refuses_to_expose_its_ports_unprotected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    config, _ = files(tmp_path)
    argv = ["als", "serve", "-c", config, "--state-dir", str(tmp_path / "s"), "--host", "::"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ADMIN_TOKEN_ENV in err and "without TLS" in err
